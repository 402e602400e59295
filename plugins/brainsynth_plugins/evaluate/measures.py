"""Measurements: the size of each structure in an edited image, from a labelled reference.

The reference is the prior of an edit: same head, known labels. Both measurements first put the
image on the reference's intensity scale (:func:`prepare`: differential bias correction, then a
piecewise-linear map through the CSF / grey / white-matter medians), since two scans differ in
bias field, contrast and per-volume windowing.

- ``registration`` (default): two-level demons registration (SimpleITK) of
  the reference onto the image; each label's one-hot mask is carried along with linear
  interpolation and summed, so sizes keep sub-voxel precision. It measures what moved.
- ``tissue``: partial-volume tissue fractions of the image itself near each structure, with class
  means learned from the reference and its labels: size = the reference's label count plus the
  change of CSF fraction (ventricles) or grey-matter fraction (cortex) within a margin around the
  reference structure. It measures what the image shows, with no registration.

Both work on 2D slices and 3D volumes and return the reference's label counts when the image is
the reference.
"""

from __future__ import annotations

import numpy as np

from brainsynth_cli.structures import Rules, default_rules
from brainsynth_plugins.intensity_match import bias_region, prepare, stable_region, tissue_anchors

__all__ = ["RegistrationMeasure", "TissueMeasure", "bias_region", "label_counts", "prepare", "stable_region", "tissue_anchors"]


def label_counts(labels: np.ndarray) -> dict[int, float]:
    ids, counts = np.unique(np.asarray(labels), return_counts=True)
    return {int(i): float(c) for i, c in zip(ids, counts)}


def _sitk_image(a: np.ndarray, spacing: tuple[float, ...] | None):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(a, dtype=np.float32).T))
    if spacing is not None:
        img.SetSpacing(tuple(float(s) for s in spacing))
    return img


def _to_numpy(img) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(img).T


class RegistrationMeasure:
    """Demons registration of the reference to the image; labels carried along.

    Thirion's demons (SimpleITK ``DemonsRegistrationFilter``) at half and full resolution, the
    displacement field smoothed by a Gaussian of ``smoothing`` voxels after every iteration.
    Measured on simulated scan pairs, diffeomorphic demons with a 1.5 mm field smoothing
    recovered only about half of a known ventricle enlargement (its update composition converges
    short of partial-volume boundaries); this recovers 85-95 % with the same inputs.

    2D slices smaller than ``min_size`` pixels are enlarged by an integer factor (cubic
    interpolation; each label pixel becomes a block) before registration and the sizes scaled
    back: on 64-pixel slices of 2 mm scans this cut the per-pair ventricle error from 2.4 to 1.6 pp.
    """

    def __init__(self, levels: tuple[int, ...] = (2, 1), iterations: int = 100, smoothing: float = 1.0, rules: Rules | None = None,
                 bias_correction: bool = True, min_size: int = 128) -> None:
        self.rules = rules or default_rules()
        self.min_size = min_size
        self.bias_correction = bias_correction
        self.levels = levels
        self.iterations = iterations
        self.smoothing = smoothing

    def displacement(self, reference: np.ndarray, image: np.ndarray, spacing=None):
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # deterministic sums
        fixed_full = _sitk_image(image, spacing)
        moving_full = _sitk_image(reference, spacing)
        step = min(fixed_full.GetSpacing())
        field = None
        for level in self.levels:
            if level > 1:
                shrink = [max(1, min(level, s // 8)) for s in fixed_full.GetSize()]
                fixed = sitk.Shrink(sitk.SmoothingRecursiveGaussian(fixed_full, 0.5 * level * step), shrink)
                moving = sitk.Shrink(sitk.SmoothingRecursiveGaussian(moving_full, 0.5 * level * step), shrink)
            else:
                fixed, moving = fixed_full, moving_full
            demons = sitk.DemonsRegistrationFilter()
            demons.SetNumberOfIterations(self.iterations)
            demons.SetSmoothDisplacementField(True)
            demons.SetStandardDeviations(self.smoothing * step)  # physical units (the filter uses the image spacing)
            if field is None:
                field = demons.Execute(fixed, moving)
            else:
                init = sitk.Resample(field, fixed, sitk.Transform(), sitk.sitkLinear, 0.0, field.GetPixelID())
                field = demons.Execute(fixed, moving, init)
        if field.GetSize() != fixed_full.GetSize():
            field = sitk.Resample(field, fixed_full, sitk.Transform(), sitk.sitkLinear, 0.0, field.GetPixelID())
        return field, fixed_full

    def measure(self, reference, reference_labels, image, spacing=None):
        return {lab: float(m.sum(dtype=np.float64)) for lab, m in self.maps(reference, reference_labels, image, spacing).items()}

    def maps(self, reference, reference_labels, image, spacing=None) -> dict[int, np.ndarray]:
        """Each label's one-hot mask of the reference carried onto ``image``: partial-volume maps on
        the image's grid (their sums are :meth:`measure`'s sizes). The reference's own one-hot
        masks when the image is the reference."""
        import SimpleITK as sitk

        ref = np.asarray(reference, dtype=np.float32)
        img = np.asarray(image, dtype=np.float32)
        labels = np.asarray(reference_labels)
        if ref.shape != img.shape or labels.shape != ref.shape:
            raise ValueError(f"shapes differ: reference {ref.shape}, labels {labels.shape}, image {img.shape}")
        if np.array_equal(ref, img):
            return {int(lab): (labels == lab).astype(np.float32) for lab in np.unique(labels)}
        img = prepare(img, ref, labels, self.rules, spacing, self.bias_correction)
        shape = ref.shape
        factor = self.upsampling(ref.shape)
        if factor > 1:
            from scipy import ndimage

            ref, img = (ndimage.zoom(a, factor, order=3, mode="nearest") for a in (ref, img))
            labels = np.kron(labels, np.ones((factor,) * labels.ndim, dtype=labels.dtype))  # each pixel -> factor^n pixels
            spacing = tuple(float(s) / factor for s in spacing) if spacing is not None else None
        field, fixed = self.displacement(ref, img, spacing)
        transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
        out: dict[int, np.ndarray] = {}
        for lab in (int(v) for v in np.unique(labels)):
            mask = _sitk_image((labels == lab).astype(np.float32), spacing)
            mask.CopyInformation(fixed)
            warped = _to_numpy(sitk.Resample(mask, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
            if factor > 1:  # back to the image grid: the mean over each block (sums are kept / factor^n)
                warped = warped.reshape(sum(((n, factor) for n in shape), ())).mean(axis=tuple(range(1, 2 * len(shape), 2)))
            out[lab] = warped.astype(np.float32)
        return out

    def upsampling(self, shape: tuple[int, ...]) -> int:
        """Integer factor by which a small 2D slice is enlarged before registration (1 for 3D)."""
        if len(shape) != 2 or min(shape) >= self.min_size:
            return 1
        return int(np.ceil(self.min_size / min(shape)))


class TissueMeasure:
    """Partial-volume tissue fractions near each structure, class means from the reference."""

    def __init__(self, margin_mm: float = 6.0, rules: Rules | None = None, bias_correction: bool = True) -> None:
        self.bias_correction = bias_correction
        self.margin_mm = margin_mm
        self.rules = rules or default_rules()

    def measure(self, reference, reference_labels, image, spacing=None):
        from scipy import ndimage

        ref = np.asarray(reference, dtype=np.float32)
        labels = np.asarray(reference_labels)
        sizes = label_counts(labels)
        if np.array_equal(ref, np.asarray(image)):
            return sizes
        img = prepare(np.asarray(image, dtype=np.float32), ref, labels, self.rules, spacing, self.bias_correction)
        spacing = tuple(spacing) if spacing is not None else (1.0,) * ref.ndim
        radius = max(1, int(round(self.margin_mm / min(spacing))))
        structure = ndimage.generate_binary_structure(ref.ndim, 1)
        vent = np.isin(labels, self.rules["ventricle"].labels)
        ctx = np.isin(labels, self.rules["cortex"].labels)
        wm = np.isin(labels, self.rules["white-matter"].labels)
        core = ndimage.binary_erosion(vent, structure)
        csf = np.isin(labels, self.rules["csf"].labels) | core

        def typical(mask: np.ndarray, fallback: float) -> float:
            return float(np.median(ref[mask])) if mask.any() else fallback

        wm_core = ndimage.binary_erosion(wm, structure)
        m_wm = typical(wm_core if wm_core.any() else wm, 1.0)
        m_gm = typical(ctx, 0.6 * m_wm)
        m_csf = min(typical(csf, 0.2 * m_wm), m_gm - 1e-3)

        def csf_fraction(a: np.ndarray) -> np.ndarray:
            return np.clip((m_wm - a) / max(m_wm - m_csf, 1e-6), 0.0, 1.0)

        def gm_fraction(a: np.ndarray) -> np.ndarray:
            up = (a - m_csf) / max(m_gm - m_csf, 1e-6)
            down = (m_wm - a) / max(m_wm - m_gm, 1e-6)
            return np.clip(np.minimum(up, down), 0.0, 1.0)

        def add_change(mask: np.ndarray, region: np.ndarray, fraction) -> None:
            change = fraction(img) - fraction(ref)
            nearest = ndimage.distance_transform_edt(~mask, return_distances=False, return_indices=True)
            side = labels[tuple(nearest)]
            for lab in np.unique(labels[mask]):
                sizes[int(lab)] = sizes.get(int(lab), 0.0) + float(change[region & (side == lab)].sum(dtype=np.float64))

        vent_region = ndimage.binary_dilation(vent, structure, iterations=radius) if vent.any() else vent
        if vent.any():
            add_change(vent, vent_region, csf_fraction)
        if ctx.any():
            ctx_region = ndimage.binary_dilation(ctx, structure, iterations=radius) & ~vent_region
            add_change(ctx, ctx_region, gm_fraction)
        return sizes
