"""Put one scan of a head on another scan's intensity scale (shared, not a plugin).

Two scans of one head differ in tissue contrast, windowing and a slowly varying differential
bias field. :func:`prepare` divides out the differential bias (a polynomial fitted where tissue
should not have changed, :mod:`brainsynth_plugins.bias_field`) and maps intensities
piecewise-linearly so that the CSF, grey- and white-matter medians land on the reference's. The
``evaluate`` measurements use it before comparing an edit with its prior; ``make-pairs`` uses it
so that a pair's target differs from its prior by anatomy, not by scanner drift.
"""

from __future__ import annotations

import numpy as np

from brainsynth_cli.structures import Rules
from brainsynth_plugins import bias_field


def stable_region(labels: np.ndarray, rules: Rules, spacing: tuple[float, ...]) -> np.ndarray:
    """White matter eroded by 2 mm and at least 6 mm from the ventricles: tissue whose intensity an
    edit of the ventricles or the cortex should not change."""
    from scipy import ndimage

    step = min(spacing)
    structure = ndimage.generate_binary_structure(labels.ndim, 1)
    wm = ndimage.binary_erosion(np.isin(labels, rules["white-matter"].labels), structure, iterations=max(1, round(2 / step)))
    near = ndimage.binary_dilation(np.isin(labels, rules["ventricle"].labels), structure, iterations=max(1, round(6 / step)))
    return wm & ~near


def bias_region(labels: np.ndarray, rules: Rules, spacing: tuple[float, ...]) -> np.ndarray:
    """White matter eroded by one voxel and at least 4 mm from the ventricles: where the ratio of
    two scans of one head shows their differential bias field and not an edit (voxels an edit did
    change there are dropped as outliers by the fit)."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(labels.ndim, 1)
    wm = ndimage.binary_erosion(np.isin(labels, rules["white-matter"].labels), structure)
    near = ndimage.binary_dilation(np.isin(labels, rules["ventricle"].labels), structure, iterations=max(1, round(4 / min(spacing))))
    return wm & ~near


def tissue_anchors(image: np.ndarray, labels: np.ndarray, rules: Rules, spacing: tuple[float, ...],
                   stable: np.ndarray | None = None) -> list[float] | None:
    """Median intensity of CSF (ventricle cores), grey matter (cortex) and stable white matter in
    ``image``, using the reference's labels; None when a class is missing or out of T1 order.
    ``stable``: :func:`stable_region` of these labels, when the caller has it already."""
    from scipy import ndimage

    structure = ndimage.generate_binary_structure(labels.ndim, 1)
    vent = np.isin(labels, rules["ventricle"].labels)
    core = ndimage.binary_erosion(vent, structure)
    if core.sum() < 4:  # a thin cut through the ventricles: all of it (partial volume included)
        core = vent
    stable = stable_region(labels, rules, spacing) if stable is None else stable
    masks = [core, np.isin(labels, rules["cortex"].labels), stable]
    if any(m.sum() < 4 for m in masks):
        return None
    values = [float(np.median(image[m])) for m in masks]
    return values if values[0] < values[1] < values[2] else None


def prepare(image: np.ndarray, reference: np.ndarray, labels: np.ndarray, rules: Rules, spacing: tuple[float, ...] | None,
            bias: bool = True) -> np.ndarray:
    """``image`` on ``reference``'s intensity scale.

    Two scans of one head differ in tissue contrast and windowing. The image's intensities are
    mapped piecewise-linearly so that its CSF, grey- and white-matter medians (measured in
    regions an edit leaves mostly alone: ventricle cores, the cortex ribbon, white matter away
    from the ventricles) land on the reference's. Histogram matching is avoided: an edit changes
    the histogram itself. With ``bias=True`` a differential bias field (a polynomial fitted on
    :func:`bias_region`, see :mod:`brainsynth_plugins.bias_field`) is divided out first.
    """
    spacing = tuple(spacing) if spacing is not None else (1.0,) * np.ndim(image)
    img = np.asarray(image, dtype=np.float32)
    ref = np.asarray(reference, dtype=np.float32)
    labels = np.asarray(labels)
    region = stable_region(labels, rules, spacing)
    if bias:
        img = bias_field.correct(img, ref, bias_region(labels, rules, spacing))
    src, dst = tissue_anchors(img, labels, rules, spacing, region), tissue_anchors(ref, labels, rules, spacing, region)
    if src is not None and dst is not None:
        top_s, top_d = max(src[2] * 2.0, float(img.max()), 1.0), max(dst[2] * 2.0, 1.0)
        return np.interp(img, [0.0, *src, top_s], [0.0, *dst, top_d]).astype(np.float32)
    if region.sum() >= 16:
        img = img * np.float32(float(np.median(ref[region])) / max(float(np.median(img[region])), 1e-6))
    return img
