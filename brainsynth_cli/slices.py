"""The 2D slice convention shared by pair making, training and editing.

A volume becomes model-ready axial slices in invertible steps, and the parameters of each step
are recorded so an edited slice can be put back on the input grid:

1. **Orientation**: the volume is viewed in the closest canonical RAS orientation, so the
   last voxel axis runs inferior -> superior and an axial slice is ``data[:, :, k]``
   (:func:`to_canonical`, :func:`from_canonical`). The slice is then turned to the
   radiological view that every picture uses: anterior up, the patient's right on the left
   (:func:`to_view`, :func:`from_view`; convention "v2". Convention "v1", of older pairs
   folders and models, kept the canonical array as it is.)
2. **Intensity**: ``x -> clip((x - low) / (high - low), 0, 1)`` with ``low``/``high`` the
   0.5th/99.5th percentiles of the volume's non-zero voxels (:func:`normalisation`,
   :func:`normalise`, :func:`denormalise`). Stored as 16-bit PNG: ``round(x * 65535)``.
3. **Geometry**: the in-plane slice is zero-padded to a centred square and resized to
   ``size`` x ``size`` with linear interpolation (:func:`to_square`, :func:`from_square`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

PNG_MAX = 65535
#: The slice convention pairs folders and models record; "v1" slices are not turned to the view.
CONVENTION = "brainsynth_cli.slices v2"
CONVENTIONS = ("brainsynth_cli.slices v1", CONVENTION)


def to_view(slice2d: "np.ndarray", convention: str = CONVENTION) -> "np.ndarray":
    """A canonical axial slice (x: left->right, y: posterior->anterior) in the radiological view:
    rows run anterior -> posterior, columns the patient's right -> left. "v1": unchanged."""
    import numpy as np

    a = np.asarray(slice2d)
    if convention == CONVENTIONS[0]:
        return a
    return np.ascontiguousarray(a[::-1, ::-1].T)


def from_view(view: "np.ndarray", convention: str = CONVENTION) -> "np.ndarray":
    """Undo :func:`to_view`."""
    import numpy as np

    v = np.asarray(view)
    if convention == CONVENTIONS[0]:
        return v
    return np.ascontiguousarray(v.T[::-1, ::-1])


@dataclass(frozen=True)
class Normalisation:
    """Intensity window of a volume: ``low`` maps to 0 and ``high`` to 1."""

    low: float
    high: float
    method: str = "percentile-0.5-99.5-nonzero"

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Normalisation":
        return cls(low=float(d["low"]), high=float(d["high"]), method=str(d.get("method", cls.method)))


def normalisation(data: "np.ndarray") -> Normalisation:
    """The window of a volume (0.5th and 99.5th percentile of its non-zero voxels)."""
    import numpy as np

    a = np.asarray(data, dtype=np.float32)
    nz = a[a != 0]
    if nz.size == 0:
        return Normalisation(0.0, 1.0)
    low, high = (float(v) for v in np.percentile(nz, [0.5, 99.5]))
    if not high > low:
        high = low + 1.0
    return Normalisation(low, high)


def normalise(data: "np.ndarray", norm: Normalisation) -> "np.ndarray":
    import numpy as np

    out = (np.asarray(data, dtype=np.float32) - np.float32(norm.low)) / np.float32(norm.high - norm.low)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def denormalise(x: "np.ndarray", norm: Normalisation) -> "np.ndarray":
    import numpy as np

    return (np.asarray(x, dtype=np.float32) * np.float32(norm.high - norm.low) + np.float32(norm.low)).astype(np.float32)


def to_png16(x: "np.ndarray") -> "np.ndarray":
    """[0, 1] float -> uint16 PNG values."""
    import numpy as np

    return np.round(np.clip(np.asarray(x, dtype=np.float64), 0, 1) * PNG_MAX).astype(np.uint16)


def from_png16(a: "np.ndarray") -> "np.ndarray":
    import numpy as np

    return (np.asarray(a, dtype=np.float32) / np.float32(PNG_MAX)).astype(np.float32)


def read_slice(path: Any) -> "np.ndarray":
    """A stored slice (8- or 16-bit PNG) as float32 in [0, 1]."""
    import numpy as np

    from brainsynth_cli.images import read_png

    arr, bits = read_png(path)
    return (arr.astype(np.float32) / np.float32(PNG_MAX if bits == 16 else 255)).astype(np.float32)


def to_canonical(data: "np.ndarray", affine: "np.ndarray") -> tuple["np.ndarray", Any]:
    """View ``data`` in the closest RAS orientation; returns the array and the transform used."""
    import nibabel as nib
    import numpy as np

    ornt = nib.orientations.io_orientation(np.asarray(affine))
    return np.ascontiguousarray(nib.orientations.apply_orientation(data, ornt)), ornt


def from_canonical(data: "np.ndarray", ornt: Any) -> "np.ndarray":
    """Undo :func:`to_canonical`."""
    import nibabel as nib
    import numpy as np

    inverse = nib.orientations.ornt_transform(np.asarray([[0, 1], [1, 1], [2, 1]], dtype=float), ornt)
    return np.ascontiguousarray(nib.orientations.apply_orientation(data, inverse))


def _pad_box(shape: tuple[int, int]) -> tuple[int, int, int, int]:
    side = max(shape)
    px, py = side - shape[0], side - shape[1]
    return px // 2, px - px // 2, py // 2, py - py // 2


def _resize(a: "np.ndarray", out: tuple[int, int]) -> "np.ndarray":
    import numpy as np
    from scipy import ndimage

    a = np.asarray(a, dtype=np.float32)
    if a.shape == out:
        return a.copy()
    zoom = (out[0] / a.shape[0], out[1] / a.shape[1])
    return ndimage.zoom(a, zoom, order=1, mode="nearest", grid_mode=True).astype(np.float32)


def to_square(slice2d: "np.ndarray", size: int) -> "np.ndarray":
    """Pad an in-plane slice to a centred square and resize it to ``size`` x ``size``."""
    import numpy as np

    s = np.asarray(slice2d, dtype=np.float32)
    x0, x1, y0, y1 = _pad_box(s.shape)
    return _resize(np.pad(s, ((x0, x1), (y0, y1))), (size, size))


def from_square(square: "np.ndarray", shape: tuple[int, int]) -> "np.ndarray":
    """Undo :func:`to_square` for a slice of in-plane ``shape``."""
    x0, x1, y0, y1 = _pad_box(shape)
    side = max(shape)
    full = _resize(square, (side, side))
    return full[x0 : side - x1, y0 : side - y1]


def labels_to_square(labels2d: "np.ndarray", size: int) -> "np.ndarray":
    """A label slice on the geometry of :func:`to_square` (centred square, resized to ``size``),
    with nearest-neighbour sampling so ids stay ids."""
    import numpy as np
    from scipy import ndimage

    a = np.asarray(labels2d)
    x0, x1, y0, y1 = _pad_box(a.shape)
    a = np.pad(a, ((x0, x1), (y0, y1)))
    if a.shape != (size, size):
        a = ndimage.zoom(a, (size / a.shape[0], size / a.shape[1]), order=0, mode="nearest", grid_mode=True)
    return a
