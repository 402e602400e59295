"""The deformed label map: nearest neighbour, then each deformed structure rounded to its
partial volume.

A label map counts a voxel wholly or not at all. Nearest-neighbour sampling through a map that
moves a wall by less than half a voxel flips no voxel, so it would show no change where the
image (linear interpolation) shows one: on a 2 mm scan a +15 % ventricle enlargement moves the
walls by about half a millimetre and leaves the nearest-neighbour count unchanged. So after the
nearest-neighbour warp, each structure group the deformation acts on is rounded to its partial
volume (its indicator warped linearly and summed, the volume the image shows): the moved
voxels that the structure covers most join it (when it grows), or those it covers least leave
it (when it shrinks), until its voxel count is the nearest integer to the partial volume. A
voxel that joins takes the label id of the structure's nearest voxel in the input (left or
right ventricle, ...); one that leaves takes that of the nearest voxel outside every deformed group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


def _nearest_label(labels: np.ndarray, mask: np.ndarray, at: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """The label (in ``labels``) of the voxel of ``mask`` nearest to each voxel ``at`` (ndim, M),
    computed on the bounding box of ``at`` and ``mask`` around it."""
    import scipy.ndimage as ndi

    pad = 8
    lo = [max(int(c.min()) - pad, 0) for c in at]
    hi = [min(int(c.max()) + pad + 1, n) for c, n in zip(at, labels.shape)]
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub = mask[box]
    if not sub.any():  # nothing of the kind near: search the whole grid
        box, lo, sub = tuple(slice(None) for _ in labels.shape), [0] * labels.ndim, mask
    idx = ndi.distance_transform_edt(~sub, sampling=spacing, return_distances=False, return_indices=True)
    local = tuple(a - o for a, o in zip(at, lo))
    nearest = tuple(idx[d][local] + lo[d] for d in range(labels.ndim))
    return labels[nearest]


def warp_labels(labels: np.ndarray, index: np.ndarray, positions: np.ndarray, coverage: Mapping[str, np.ndarray],
                groups: Mapping[str, Sequence[int]], counts: Mapping[str, int], spacing: Sequence[float]) -> np.ndarray:
    """New labels of the moved voxels (flat ``index`` into ``labels``, sampling the input at
    ``positions`` (ndim, N)): nearest neighbour, then every group of ``coverage`` (its
    indicator sampled linearly at ``positions``, shape (N,)) rounded to ``counts`` voxels."""
    import numpy as np

    shape = labels.shape
    idx = np.rint(positions).astype(np.int64)
    for d, n in enumerate(shape):
        np.clip(idx[d], 0, n - 1, out=idx[d])
    out = labels[tuple(idx)]
    deformable_ids = np.asarray(sorted({i for ids in groups.values() for i in ids}), dtype=np.int64)
    flat = labels.reshape(-1)
    for name, cover in coverage.items():
        ids = np.asarray(groups[name], dtype=np.int64)
        inside = np.isin(out, ids)
        total = int(np.isin(flat, ids).sum()) - int(np.isin(flat[index], ids).sum()) + int(inside.sum())
        change = int(counts[name]) - total
        if change > 0:  # grow: the most covered moved voxels outside every deformable group join
            cand = np.flatnonzero(~np.isin(out, deformable_ids) & (cover > 0))
            pick = cand[np.argsort(-cover[cand], kind="stable")[:change]]
            if pick.size:
                mask = np.isin(labels, ids)
                out[pick] = _nearest_label(labels, mask, idx[:, pick], spacing)
        elif change < 0:  # shrink: the least covered of its moved voxels leave
            cand = np.flatnonzero(inside)
            pick = cand[np.argsort(cover[cand], kind="stable")[:-change]]
            if pick.size:
                mask = ~np.isin(labels, deformable_ids)  # never into another deformed group
                if not mask.any():
                    mask = ~np.isin(labels, ids)
                out[pick] = _nearest_label(labels, mask, idx[:, pick], spacing)
    return out
