"""The reference anatomy of the simulator: nilearn's MNI152 2009a template with aseg labels.

nilearn ships the ICBM152 2009a (symmetric, non-linear) T1 template, skull-stripped, with grey-
and white-matter probability maps, all at 1 mm on the same 197 x 233 x 189 grid. From those
three files alone, deterministically, this module derives a label map in FreeSurfer aseg ids:

- tissue class per voxel: argmax of (CSF = 1 - GM - WM, GM, WM) inside the brain mask (T1 > 0);
- cerebrum, cerebellum and brain stem: a marker-based watershed of the brain mask on a "CSF-ness"
  relief, so the borders follow the dark CSF of the tentorium; markers are fixed MNI points;
- lateral ventricles 4/43: the CSF components inside a central box of the cerebrum that do not
  reach the brain's outer surface (the CSF-like region inside the central brain);
- deep grey matter (GM far from any outer CSF, in the central box): thalamus 10/49 behind
  y = -8 mm, caudate 11/50 medially in front of it, putamen 12/51 laterally;
- cerebral cortex 3/42 and white matter 2/41: the remaining GM and WM of the cerebrum;
- cerebellum cortex 8/47 and white matter 7/46, brain stem 16, other CSF 24, background 0.

Left/right ids split at the mid-sagittal plane (world x < 0 is left). The result is resampled to
the requested voxel size (box-filter partial volumes, then argmax for labels; box filter and
linear interpolation for the T1) and cached as two NIfTI files under ``$BRAINSYNTH_CACHE``
(default ``~/.cache/brainsynth``), keyed by :data:`VERSION` and the resolution.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

from brainsynth_cli.images import Volume

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: Bump when the derivation changes: the cache key includes it.
VERSION = "mni152-2009a-v2"

# aseg ids
BACKGROUND, CSF = 0, 24
LEFT = {"wm": 2, "cortex": 3, "ventricle": 4, "cb_wm": 7, "cb_cortex": 8, "thalamus": 10, "caudate": 11, "putamen": 12}
RIGHT = {"wm": 41, "cortex": 42, "ventricle": 43, "cb_wm": 46, "cb_cortex": 47, "thalamus": 49, "caudate": 50, "putamen": 51}
BRAINSTEM = 16
VENTRICLE_IDS = (4, 43)
CORTEX_IDS = (3, 42)
WM_IDS = (2, 41)


def cache_dir() -> Path:
    """``$BRAINSYNTH_CACHE`` or ``~/.cache/brainsynth``."""
    env = os.environ.get("BRAINSYNTH_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "brainsynth"


def _res_tag(resolution: float) -> str:
    return f"{float(resolution):g}".replace(".", "p") + "mm"


def cache_paths(resolution: float) -> tuple[Path, Path]:
    base = cache_dir() / "template" / VERSION
    tag = _res_tag(resolution)
    return base / f"tpl-MNI152NLin2009aSym_res-{tag}_T1w.nii.gz", base / f"tpl-MNI152NLin2009aSym_res-{tag}_dseg.nii.gz"


_memory: dict[float, tuple[Volume, Volume]] = {}


def reference(resolution: float = 2.0) -> tuple[Volume, Volume]:
    """The template T1 (float32, 0..1) and its aseg label map (int32) at ``resolution`` mm.

    Derived from nilearn's files on first use and cached on disk (and in memory for the
    process). Callers get copies of the arrays, so they may modify them.
    """
    from brainsynth_cli.errors import UserError

    res = float(resolution)
    if not (0.5 <= res <= 8.0):
        raise UserError(f"template resolution must lie in [0.5, 8] mm, got {resolution}")
    if res not in _memory:
        _memory[res] = _load_or_build(res)
    t1, lab = _memory[res]
    return t1.with_data(t1.data.copy()), lab.with_data(lab.data.copy())


def _load_or_build(res: float) -> tuple[Volume, Volume]:
    import numpy as np

    from brainsynth_cli.errors import InputError
    from brainsynth_cli.images import read_labels, read_volume, write_labels, write_volume

    t1_path, lab_path = cache_paths(res)
    if t1_path.is_file() and lab_path.is_file():
        try:
            t1, lab = read_volume(t1_path), read_labels(lab_path)
            if t1.shape == lab.shape:
                return Volume(t1.data, t1.affine, None, t1.path), Volume(lab.data, lab.affine, None, lab.path)
        except InputError:
            pass  # a damaged cache entry is rebuilt below
    t1_data, lab_data, affine = build(res)
    try:
        write_volume(t1_path, t1_data, affine)
        write_labels(lab_path, lab_data, affine)
    except (InputError, OSError):
        pass  # an unwritable cache only costs time
    return (Volume(t1_data.astype(np.float32), affine, None, None), Volume(lab_data.astype(np.int32), affine, None, None))


# --------------------------------------------------------------------------------------------
# derivation at 1 mm


def _load_nilearn() -> tuple["np.ndarray", "np.ndarray", "np.ndarray", "np.ndarray"]:
    import nibabel as nib
    import numpy as np
    from nilearn import datasets

    t1 = nib.load(str(datasets.MNI152_FILE_PATH))
    gm = nib.load(str(datasets.GM_MNI152_FILE_PATH))
    wm = nib.load(str(datasets.WM_MNI152_FILE_PATH))
    data = [np.asarray(img.dataobj, dtype=np.float32) / 255.0 for img in (t1, gm, wm)]
    return data[0], data[1], data[2], np.asarray(t1.affine, dtype=np.float64)


def labels_1mm() -> tuple["np.ndarray", "np.ndarray", "np.ndarray"]:
    """(T1 0..1, aseg labels, affine) on nilearn's 1 mm template grid (derived once per process)."""
    t1, lab, affine = _labels_1mm()
    return t1.copy(), lab.copy(), affine.copy()


@functools.lru_cache(maxsize=1)
def _labels_1mm() -> tuple["np.ndarray", "np.ndarray", "np.ndarray"]:
    import numpy as np
    import scipy.ndimage as ndi

    t1, gm, wm, affine = _load_nilearn()
    shape = t1.shape
    brain = t1 > 0
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    tissue = np.argmax(np.stack([csf, gm, wm]), axis=0).astype(np.int8)  # 0 csf, 1 gm, 2 wm
    tissue[~brain] = -1

    inv = np.linalg.inv(affine)

    def vox(x: float, y: float, z: float) -> tuple[int, int, int]:
        v = inv @ np.array([x, y, z, 1.0])
        return int(round(v[0])), int(round(v[1])), int(round(v[2]))

    i, j, k = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij", sparse=True)
    X = affine[0, 0] * i + affine[0, 3]
    Y = affine[1, 1] * j + affine[1, 3]
    Z = affine[2, 2] * k + affine[2, 3]

    # cerebrum / cerebellum / brain stem by a marker watershed on a CSF-ness relief
    relief = np.where(brain, np.clip(csf + 0.3 * gm, 0, 1) * 1000, 1000).astype(np.uint16)
    markers = np.zeros(shape, dtype=np.int32)

    def put(label: int, x: float, y: float, z: float, r: int = 3) -> None:
        a, b, c = vox(x, y, z)
        markers[a - r:a + r + 1, b - r:b + r + 1, c - r:c + r + 1] = label

    for x in (-40.0, 40.0):
        for y, z in ((20, 30), (-30, 50), (-80, 10), (-20, -20), (40, -10), (-60, 30)):
            put(2, x, y, z)
    for x in (-30.0, -15.0, 15.0, 30.0):
        for y, z in ((-65, -35), (-75, -25), (-55, -45)):
            put(3, x, y, z)
    for z in (-45.0, -35.0, -25.0, -15.0):
        put(4, 0.0, -28.0, z, 2)
    markers[~brain] = 1
    region = ndi.watershed_ift(relief, markers)
    cerebrum, cerebellum, stem = region == 2, region == 3, region == 4
    cerebrum &= brain
    cerebellum &= brain
    stem &= brain

    # lateral ventricles: CSF components in a central box of the cerebrum that do not touch
    # the outside of the brain
    box = (np.abs(X) <= 30) & (Y >= -50) & (Y <= 35) & (Z >= -2) & (Z <= 38)
    inner_csf = (tissue == 0) & cerebrum & box
    comp, n = ndi.label(inner_csf)
    outside = ndi.binary_dilation(~brain, iterations=2)
    touching = np.unique(comp[outside & (comp > 0)])
    sizes = ndi.sum_labels(np.ones(shape), comp, index=np.arange(1, n + 1))
    keep = np.zeros(n + 1, dtype=bool)
    keep[1:] = sizes >= 300
    keep[touching] = False
    keep[0] = False
    ventricle = keep[comp]

    # deep grey matter: cerebral GM far from the brain's outer CSF, in the central box
    outer = (~brain) | ((tissue == 0) & ~ventricle)
    dist_outer = ndi.distance_transform_edt(~outer, sampling=np.abs(np.diag(affine)[:3]))
    central = (np.abs(X) <= 34) & (Y >= -40) & (Y <= 30) & (Z >= -12) & (Z <= 28)
    deep = cerebrum & central & (gm >= 0.3) & (tissue != 0) & ~ventricle & (dist_outer > 6.0)
    deep = ndi.binary_opening(deep, iterations=1)
    comp, n = ndi.label(deep)
    sizes = ndi.sum_labels(np.ones(shape), comp, index=np.arange(1, n + 1))
    deep = np.isin(comp, 1 + np.flatnonzero(sizes >= 200))

    left = X < 0
    lab = np.zeros(shape, dtype=np.int32)

    def assign(mask: "np.ndarray", key: str) -> None:
        lab[mask & left] = LEFT[key]
        lab[mask & ~left] = RIGHT[key]

    assign(cerebrum & (tissue == 2), "wm")
    assign(cerebrum & (tissue == 1), "cortex")
    thal = deep & (Y < -6) & (np.abs(X) < 22) & (Z <= 18)
    caud = deep & ~thal & (np.abs(X) < 20)
    assign(thal, "thalamus")
    assign(caud, "caudate")
    assign(deep & ~thal & ~caud, "putamen")
    assign(cerebellum & (tissue == 2), "cb_wm")
    assign(cerebellum & (tissue == 1), "cb_cortex")
    lab[stem & (tissue >= 1)] = BRAINSTEM
    lab[brain & (tissue == 0)] = CSF
    assign(ventricle, "ventricle")
    lab[~brain] = BACKGROUND
    return t1, lab, affine


def build(resolution: float) -> tuple["np.ndarray", "np.ndarray", "np.ndarray"]:
    """(T1 float32, labels int32, affine) at ``resolution`` mm, not cached."""
    import numpy as np

    t1, lab, affine = labels_1mm()
    if abs(resolution - 1.0) < 1e-9:
        return t1.astype(np.float32), lab, affine
    return resample_pair(t1, lab, affine, resolution)


def resample_pair(t1: "np.ndarray", lab: "np.ndarray", affine: "np.ndarray", resolution: float) -> tuple["np.ndarray", "np.ndarray", "np.ndarray"]:
    """Resample a 1 mm image and label map to ``resolution`` mm over the same field of view.

    New voxel centres sit at ``old_origin + (r - 1) / 2`` (block centres for integer factors).
    Integer factors (the simulator's 2, 3, 4 mm): block means and block majority labels (see
    :func:`_block_resample`). Otherwise intensities are box-filtered then linearly
    interpolated; each label's box-filtered fraction is interpolated the same way and the
    label with the largest fraction wins.
    """
    import numpy as np
    import scipy.ndimage as ndi

    step = resolution / np.abs(np.diag(affine)[:3])
    shape = tuple(int(np.ceil(n / s - 1e-6)) for n, s in zip(t1.shape, step))
    new_aff = affine.copy()
    new_aff[:3, :3] = affine[:3, :3] * step[None, :]
    new_aff[:3, 3] = affine[:3, 3] + affine[:3, :3] @ ((step - 1.0) / 2.0)
    if np.allclose(step, np.round(step)):
        return _block_resample(t1, lab, [int(round(s)) for s in step], shape) + (new_aff,)
    grid = np.meshgrid(*(np.arange(n) * s + (s - 1.0) / 2.0 for n, s in zip(shape, step)), indexing="ij")
    coords = np.stack(grid)
    size = [max(1, int(round(s))) for s in step]

    def smooth(a: "np.ndarray") -> "np.ndarray":
        return ndi.uniform_filter(a.astype(np.float32), size=size, mode="constant", origin=[0 if z % 2 else -1 for z in size]) if any(z > 1 for z in size) else a.astype(np.float32)

    def sample(a: "np.ndarray") -> "np.ndarray":
        return ndi.map_coordinates(smooth(a), coords, order=1, mode="nearest")

    t1_new = sample(t1).astype(np.float32)
    ids = np.unique(lab)
    best = np.full(shape, -1.0, dtype=np.float32)
    out = np.zeros(shape, dtype=np.int32)
    for value in ids:
        frac = sample(lab == value)
        better = frac > best
        out[better] = value
        best[better] = frac[better]
    return t1_new, out, new_aff


def _block_resample(t1: "np.ndarray", lab: "np.ndarray", k: list[int], shape: tuple[int, ...]) -> tuple["np.ndarray", "np.ndarray"]:
    """Integer factors: block means for the T1, the most frequent label of each block; ties go
    to the label more frequent in the 3x3x3 neighbouring blocks, then to the smaller id. The
    grid is padded with background at the far end."""
    import numpy as np
    import scipy.ndimage as ndi

    pad = [(0, n * f - m) for n, f, m in zip(shape, k, t1.shape)]
    t = np.pad(t1.astype(np.float32), pad)
    lb = np.pad(lab, pad)
    blocks = (shape[0], k[0], shape[1], k[1], shape[2], k[2])
    t_new = t.reshape(blocks).mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)
    best = np.full(shape, -1.0, dtype=np.float32)
    out = np.zeros(shape, dtype=np.int32)
    for value in np.unique(lb):
        count = (lb == value).reshape(blocks).sum(axis=(1, 3, 5), dtype=np.int32).astype(np.float32)
        # neighbourhood share in [0, 1): breaks ties without overriding a real majority
        count += 0.99 * ndi.uniform_filter(count, size=3, mode="constant") / float(np.prod(k))
        better = count > best
        out[better] = value
        best[better] = count[better]
    return t_new, out


# --------------------------------------------------------------------------------------------
# a synthetic head around the skull-stripped template

#: Layers outside the brain's smooth hull: (outer distance in mm, T1 intensity on the
#: template's 0..1 scale where white matter is ~0.84). CSF and dura, inner table, diploe
#: (marrow), outer table, galea and muscle, scalp fat (bright on T1), skin.
HEAD_LAYERS = ((1.5, 0.28), (3.0, 0.06), (5.5, 0.5), (7.0, 0.06), (9.0, 0.42), (13.0, 0.95), (14.5, 0.55))
NECK_Z_MM = -40.0  # below this the shells are soft tissue (no skull around the brain stem)

_heads: dict[float, tuple[Volume, Volume]] = {}


def head(resolution: float = 2.0) -> tuple[Volume, Volume]:
    """The template with a synthetic head: (T1 with CSF rim, skull, marrow and scalp; labels
    with the extra-cerebral CSF rim as 24). Same grid as :func:`reference`.

    The head is drawn as shells at fixed distances from a smooth hull of the brain (a Gaussian-
    smoothed brain mask), with partial-volume blurring; below z = -40 mm (the neck) the shells
    are soft tissue. The skull carries no label (0), as in FreeSurfer's aseg.
    """
    import numpy as np
    import scipy.ndimage as ndi

    res = float(resolution)
    if res not in _heads:
        t1, lab = reference(res)
        vox = np.sqrt((np.asarray(t1.affine)[:3, :3] ** 2).sum(axis=0))
        brain = lab.data != 0
        hull = (ndi.gaussian_filter(brain.astype(np.float32), 3.0 / vox) > 0.25) | brain
        hull = ndi.binary_fill_holes(hull)
        rim = hull & ~brain
        dist = ndi.distance_transform_edt(~hull, sampling=vox)
        shells = np.zeros(lab.shape, dtype=np.float32)
        inner = 0.0
        for outer, value in HEAD_LAYERS:
            shells[(dist > inner) & (dist <= outer)] = value
            inner = outer
        k = np.arange(lab.shape[2], dtype=np.float64)
        z = np.asarray(t1.affine)[2, 2] * k + np.asarray(t1.affine)[2, 3]
        neck = (z < NECK_Z_MM)[None, None, :] & (dist > 1.5) & (dist <= HEAD_LAYERS[-1][0])
        shells[neck] = 0.42
        shells = ndi.gaussian_filter(shells, 0.6 / vox)
        shells[brain] = 0.0
        shells[rim] = np.maximum(shells[rim], 0.28)
        data = np.where(brain, t1.data, 0.0).astype(np.float32) + shells
        labels = lab.data.copy()
        labels[rim] = CSF
        _heads[res] = (t1.with_data(data.astype(np.float32)), lab.with_data(labels))
    t1, lab = _heads[res]
    return t1.with_data(t1.data.copy()), lab.with_data(lab.data.copy())
