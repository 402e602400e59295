"""SimpleITK registration used by the ``atlas`` segmenter: a linear stage (rigid or affine, Mattes
mutual information, multi-resolution) and a deformable stage (symmetric-forces demons on
intensity-normalised, masked images, coarse to fine).

Everything runs with a fixed number of threads and fixed sampling seeds, so the same inputs
give the same transform (and the same label bytes) on the same machine.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import numpy as np
import SimpleITK as sitk


@contextlib.contextmanager
def itk_threads(n: int) -> Iterator[None]:
    """Run SimpleITK filters with exactly ``n`` threads (restored afterwards)."""
    old = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(n))
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(old)


def robust_scale(image: sitk.Image, mask: sitk.Image | None = None, percentile: float = 99.0) -> sitk.Image:
    """``image`` divided by its ``percentile`` inside ``mask`` (or inside the non-zero voxels)."""
    a = sitk.GetArrayViewFromImage(image)
    sel = sitk.GetArrayViewFromImage(mask) > 0 if mask is not None else a > 0
    vals = a[sel] if np.any(sel) else a.ravel()
    top = float(np.percentile(vals, percentile)) if vals.size else 1.0
    out = sitk.Cast(image, sitk.sitkFloat32) / (top if top > 0 else 1.0)
    return out


def smooth_shrink(image: sitk.Image, factor: int) -> sitk.Image:
    """Gaussian-smoothed (sigma = factor/2 voxels) and subsampled by ``factor``."""
    if factor <= 1:
        return image
    sigma = [0.5 * factor * s for s in image.GetSpacing()]
    smoothed = sitk.SmoothingRecursiveGaussian(image, sigma)
    return sitk.Shrink(smoothed, [factor] * image.GetDimension())


def centre_initialise(fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image | None = None,
                      moving_mask: sitk.Image | None = None) -> sitk.AffineTransform:
    """An affine that maps the centre of mass of ``fixed`` (head) onto that of ``moving``."""
    def com(img: sitk.Image, mask: sitk.Image | None) -> np.ndarray:
        a = sitk.GetArrayFromImage(img).astype(np.float64)
        if mask is not None:
            a = a * (sitk.GetArrayViewFromImage(mask) > 0)
        a = np.clip(a, 0, None)
        idx = np.array(np.nonzero(a > 0))
        w = a[a > 0]
        c = (idx * w).sum(axis=1) / max(w.sum(), 1e-12)  # z, y, x
        return np.array(img.TransformContinuousIndexToPhysicalPoint([float(c[2]), float(c[1]), float(c[0])]))

    tx = sitk.AffineTransform(3)
    cf = com(fixed, fixed_mask)
    cm = com(moving, moving_mask)
    tx.SetCenter(cf.tolist())
    tx.SetTranslation((cm - cf).tolist())
    return tx


def linear(fixed: sitk.Image, moving: sitk.Image, initial: sitk.Transform, *, kind: str = "affine",
           fixed_mask: sitk.Image | None = None, moving_mask: sitk.Image | None = None, shrink: Sequence[int] = (4, 2), iterations: int = 100,
           sampling: float = 0.25, seed: int = 0) -> sitk.Transform:
    """Rigid or affine registration (Mattes MI); returns a transform fixed point -> moving point."""
    if kind == "rigid":
        tx: sitk.Transform = sitk.Euler3DTransform()
    elif kind == "similarity":
        tx = sitk.Similarity3DTransform()
    else:
        tx = sitk.AffineTransform(3)
    # Start from ``initial`` (an affine or a lower-order transform).
    init = sitk.AffineTransform(3)
    init.SetCenter(_centre(initial))
    init.SetMatrix(_matrix(initial))
    init.SetTranslation(_translation(initial))
    if kind == "affine":
        tx = init
    else:
        tx.SetCenter(init.GetCenter())
        tx.SetTranslation(init.GetTranslation())
        with contextlib.suppress(RuntimeError):
            tx.SetMatrix(_closest_rotation(np.array(init.GetMatrix()).reshape(3, 3)).ravel().tolist())
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.REGULAR)
    # ITK takes seed 0 as "seed from the wall clock": shift so every seed is a fixed one.
    reg.SetMetricSamplingPercentage(sampling, int(seed) + 1)
    if fixed_mask is not None:
        reg.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        reg.SetMetricMovingMask(moving_mask)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel([0.5 * s for s in shrink])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(tx, inPlace=True)
    reg.Execute(fixed, moving)
    out = sitk.AffineTransform(3)
    out.SetCenter(_centre(tx))
    out.SetMatrix(_matrix(tx))
    out.SetTranslation(_translation(tx))
    return out


def _centre(tx: sitk.Transform) -> tuple[float, ...]:
    t = _as_affine(tx)
    return t.GetCenter()


def _matrix(tx: sitk.Transform) -> tuple[float, ...]:
    return _as_affine(tx).GetMatrix()


def _translation(tx: sitk.Transform) -> tuple[float, ...]:
    return _as_affine(tx).GetTranslation()


def _as_affine(tx: sitk.Transform) -> sitk.AffineTransform:
    name = tx.GetName()
    if name == "AffineTransform":
        return sitk.AffineTransform(tx)
    if name == "Euler3DTransform":
        e = sitk.Euler3DTransform(tx)
    elif name == "Similarity3DTransform":
        e = sitk.Similarity3DTransform(tx)
    elif name == "TranslationTransform":
        a = sitk.AffineTransform(3)
        a.SetTranslation(sitk.TranslationTransform(tx).GetOffset())
        return a
    else:
        raise TypeError(f"not a linear transform: {name}")
    a = sitk.AffineTransform(3)
    a.SetCenter(e.GetCenter())
    a.SetMatrix(e.GetMatrix())
    a.SetTranslation(e.GetTranslation())
    return a


def _closest_rotation(m: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(m)
    r = u @ vt
    if np.linalg.det(r) < 0:
        u[:, -1] *= -1
        r = u @ vt
    return r


def demons(fixed: sitk.Image, moving: sitk.Image, *, shrink: Sequence[int] = (2, 1),
           iterations: Sequence[int] = (60, 30), sigma: float = 1.5, max_step: float = 1.0,
           initial: sitk.Image | None = None) -> sitk.Image:
    """Symmetric-forces demons, coarse to fine, of two images on the same grid with comparable
    intensities. Returns the displacement field (on ``fixed``'s grid, physical mm) that maps a
    fixed point x to the moving point x + u(x)."""
    field = initial
    for factor, n in zip(shrink, iterations):
        f = smooth_shrink(fixed, factor)
        m = smooth_shrink(moving, factor)
        init = None
        if field is not None:
            init = sitk.Resample(field, f, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0,
                                 sitk.sitkVectorFloat64)
        else:
            init = sitk.Image(f.GetSize(), sitk.sitkVectorFloat64, 3)
            init.CopyInformation(f)
        flt = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        flt.SetNumberOfIterations(int(n))
        flt.SetStandardDeviations(float(sigma))
        flt.SetSmoothDisplacementField(True)
        flt.SetSmoothUpdateField(False)
        flt.SetMaximumUpdateStepLength(float(max_step))
        flt.SetUseImageSpacing(True)
        field = flt.Execute(f, m, init)
    if field.GetSize() != fixed.GetSize():
        field = sitk.Resample(field, fixed, sitk.Transform(3, sitk.sitkIdentity), sitk.sitkLinear, 0.0,
                              sitk.sitkVectorFloat64)
    return field


def compose(linear_tx: sitk.Transform, field: sitk.Image | None) -> sitk.Transform:
    """The transform x -> linear(x + u(x)) (the field applied first)."""
    comp = sitk.CompositeTransform(3)
    comp.AddTransform(linear_tx)
    if field is not None:
        comp.AddTransform(sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64)))
    return comp
