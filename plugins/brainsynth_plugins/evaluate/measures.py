"""Measurements: labels for an edited image, from a reference (the prior) whose labels are known.

- ``registration`` (default): deformable demons registration of the reference onto the image
  (SimpleITK, multi-resolution, diffeomorphic), then the reference labels are carried along
  (one-hot masks warped with linear interpolation, arg-max). It measures what moved.
- ``tissue``: classifies the image's own intensities around each structure, with class means
  learned from the reference and its labels: ventricle = dark (CSF-like) voxels near the
  reference ventricles and connected to them; cortex = grey-matter-like voxels near the
  reference cortex. It measures what the image shows, with no registration.

Both work on 2D slices and 3D volumes. Evaluation measures the reference with the same method
(``measure(reference, labels, reference)``) so that systematic bias cancels in change rates.
"""

from __future__ import annotations

import numpy as np

from brainsynth_cli.structures import Rules, default_rules


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
    """Demons registration of the reference to the image; labels carried along."""

    def __init__(self, levels: tuple[int, ...] = (4, 2, 1), iterations: int = 60, smoothing: float = 1.5) -> None:
        self.levels = levels
        self.iterations = iterations
        self.smoothing = smoothing

    def displacement(self, reference: np.ndarray, image: np.ndarray, spacing=None):
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # deterministic sums
        fixed_full = _sitk_image(image, spacing)
        moving_full = _sitk_image(reference, spacing)
        field = None
        for level in self.levels:
            shrink = [max(1, min(level, s // 8)) for s in fixed_full.GetSize()]
            fixed = sitk.Shrink(sitk.SmoothingRecursiveGaussian(fixed_full, 0.5 * level * fixed_full.GetSpacing()[0]), shrink) if level > 1 else fixed_full
            moving = sitk.Shrink(sitk.SmoothingRecursiveGaussian(moving_full, 0.5 * level * moving_full.GetSpacing()[0]), shrink) if level > 1 else moving_full
            demons = sitk.DiffeomorphicDemonsRegistrationFilter()
            demons.SetNumberOfIterations(self.iterations)
            demons.SetSmoothDisplacementField(True)
            demons.SetStandardDeviations(self.smoothing)
            demons.SetMaximumUpdateStepLength(0.5)
            if field is None:
                field = demons.Execute(fixed, moving)
            else:
                init = sitk.Resample(field, fixed, sitk.Transform(), sitk.sitkLinear, 0.0, field.GetPixelID())
                field = demons.Execute(fixed, moving, init)
        if field.GetSize() != fixed_full.GetSize():
            field = sitk.Resample(field, fixed_full, sitk.Transform(), sitk.sitkLinear, 0.0, field.GetPixelID())
        return field, fixed_full

    def measure(self, reference, reference_labels, image, spacing=None):
        import SimpleITK as sitk

        ref = np.asarray(reference, dtype=np.float32)
        img = np.asarray(image, dtype=np.float32)
        labels = np.asarray(reference_labels)
        if ref.shape != img.shape or labels.shape != ref.shape:
            raise ValueError(f"shapes differ: reference {ref.shape}, labels {labels.shape}, image {img.shape}")
        if np.array_equal(ref, img):
            return labels.copy()
        field, fixed = self.displacement(ref, img, spacing)
        transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
        ids = [int(v) for v in np.unique(labels)]
        best = np.full(img.shape, -1.0, dtype=np.float32)
        out = np.zeros(img.shape, dtype=labels.dtype)
        for lab in ids:
            mask = _sitk_image((labels == lab).astype(np.float32), spacing)
            mask.CopyInformation(fixed)
            warped = _to_numpy(sitk.Resample(mask, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
            take = warped > best
            out[take] = lab
            best[take] = warped[take]
        return out


class TissueMeasure:
    """Intensity classification near each structure, with class means from the reference."""

    def __init__(self, margin_mm: float = 4.0, rules: Rules | None = None) -> None:
        self.margin_mm = margin_mm
        self.rules = rules or default_rules()

    def measure(self, reference, reference_labels, image, spacing=None):
        from scipy import ndimage

        ref = np.asarray(reference, dtype=np.float32)
        img = np.asarray(image, dtype=np.float32)
        labels = np.asarray(reference_labels)
        spacing = tuple(spacing) if spacing is not None else (1.0,) * ref.ndim
        radius = max(1, int(round(self.margin_mm / min(spacing))))
        vent_ids = [v for v in self.rules["ventricle"].labels]
        ctx_ids = [v for v in self.rules["cortex"].labels]
        wm_ids = [v for v in self.rules["white-matter"].labels]
        vent = np.isin(labels, vent_ids)
        ctx = np.isin(labels, ctx_ids)
        wm = np.isin(labels, wm_ids)
        csf = np.isin(labels, [*self.rules["csf"].labels]) | ndimage.binary_erosion(vent)

        def mean(mask, fallback):
            return float(np.median(ref[mask])) if mask.any() else fallback

        m_wm = mean(wm, 1.0)
        m_gm = mean(ctx, 0.6 * m_wm)
        m_csf = mean(csf, 0.2 * m_wm)
        out = labels.copy()
        structure = ndimage.generate_binary_structure(ref.ndim, 1)
        if vent.any():
            region = ndimage.binary_dilation(vent, structure, iterations=radius)
            dark = region & (img < 0.5 * (m_csf + m_wm))
            seeds = ndimage.binary_erosion(vent, structure) & dark
            comp, n = ndimage.label(dark, structure)
            keep = np.isin(comp, np.unique(comp[seeds if seeds.any() else (vent & dark)])) & (comp > 0)
            nearest = ndimage.distance_transform_edt(~vent, return_distances=False, return_indices=True)
            side = labels[tuple(nearest)]
            fill = keep & ~vent
            out[fill] = side[fill]
            out[vent & ~keep] = np.where(img[vent & ~keep] > 0.5 * (m_gm + m_wm), wm_ids[0], 0)
        if ctx.any():
            region = ndimage.binary_dilation(ctx, structure, iterations=radius) & ~np.isin(out, vent_ids)
            grey = region & (img > 0.5 * (m_csf + m_gm)) & (img < 0.5 * (m_gm + m_wm))
            nearest = ndimage.distance_transform_edt(~ctx, return_distances=False, return_indices=True)
            side = labels[tuple(nearest)]
            was = ctx & ~grey
            out[was] = 0
            out[grey] = side[grey]
        return out
