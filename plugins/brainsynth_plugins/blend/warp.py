"""The ``warp`` blender: the prior deformed until it looks like the target inside the region.

Where Poisson editing copies the target's intensity gradients into the prior, ``warp`` keeps the
prior's own voxels and moves them: the prior is registered onto the target inside the region
(Thirion's demons, SimpleITK ``DemonsRegistrationFilter``, one thread, so the same inputs give
the same bytes), the displacement field is halved in the region's outermost voxel layer and zero
outside it, and the prior is resampled through it (cubic B-spline). An edit put in this way is a smooth
deformation of the input: walls move, the scan's own texture, noise and contrast stay. What
the target changes that no deformation explains (a darker ventricle, a brighter band beside a
wall) is not carried over. Outside the region the result is the prior, bit for bit.

2D images smaller than ``min_size`` pixels are enlarged by an integer factor (cubic
interpolation) for the registration, so that sub-pixel wall movements are found; the field is
averaged back onto the image's grid. Volumes are registered on their own grid, cropped to the
region's bounding box.

Measured on the demo model's edits of an independently simulated cohort (180 pairs of 64-pixel
slices; the project's benchmark results, "Edits put in as a deformation"): with the same edits,
PSNR against the targets 0.67 dB higher than ``poisson``, the structures' measured changes within
about 1 percentage point of ``poisson``'s.
"""

from __future__ import annotations

import math

import numpy as np

from brainsynth_plugins.blend.poisson import check_inputs

__all__ = ["WarpBlender", "warp_blend"]

#: The share of the displacement kept in the region's outermost voxel layer (the join to the kept prior).
EDGE_WEIGHT = 0.5


def _fade(mask: np.ndarray) -> np.ndarray:
    """Weight of the displacement: 1 inside ``mask``, :data:`EDGE_WEIGHT` in its outermost voxel
    layer (voxels next to one outside it, face neighbours), 0 outside."""
    from scipy import ndimage

    inner = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=1)
    return np.where(inner, np.float32(1), np.where(mask, np.float32(EDGE_WEIGHT), np.float32(0))).astype(np.float32)


def _displacement(moving: np.ndarray, fixed: np.ndarray, iterations: int, smoothing: float) -> np.ndarray:
    """Demons displacement (voxels, one component per axis, last axis) taking ``moving`` onto ``fixed``:
    ``moving(x + u(x))`` resembles ``fixed(x)``."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # deterministic sums
    f = sitk.GetImageFromArray(np.ascontiguousarray(fixed.T))
    m = sitk.GetImageFromArray(np.ascontiguousarray(moving.T))
    demons = sitk.DemonsRegistrationFilter()
    demons.SetNumberOfIterations(int(iterations))
    demons.SetSmoothDisplacementField(True)
    demons.SetStandardDeviations(float(smoothing))
    field = sitk.GetArrayFromImage(demons.Execute(f, m))  # axes reversed, components in index order
    return np.ascontiguousarray(np.transpose(field, tuple(range(fixed.ndim - 1, -1, -1)) + (fixed.ndim,)), dtype=np.float32)


def warp_blend(prior, target, mask, *, iterations: int = 50, smoothing: float = 1.0, min_size: int = 128) -> np.ndarray:
    """The prior deformed to resemble ``target`` inside ``mask`` (2D or 3D); the prior elsewhere, bit for bit.

    ``iterations`` and ``smoothing`` (the Gaussian applied to the field after every iteration, in
    voxels of the image) set the demons registration; ``min_size``: 2D images smaller than this
    are registered enlarged by an integer factor."""
    from scipy import ndimage

    prior, target, mask = check_inputs(prior, target, mask)
    out = prior.copy()
    if not mask.any():
        return out
    if not np.isfinite(target[mask]).all():
        raise ValueError("target must be finite (no NaN or Inf) inside the mask")
    pad = 4
    box = tuple(slice(max(0, int(i.min()) - pad), int(i.max()) + pad + 1) for i in np.nonzero(mask))
    p, m = prior[box], mask[box]
    if not np.isfinite(p).all():
        raise ValueError("prior must be finite (no NaN or Inf) next to the mask")
    t = np.where(m, target[box], p)
    factor = 1
    if p.ndim == 2 and min(prior.shape) < min_size:
        factor = math.ceil(min_size / min(prior.shape))
    if factor > 1:
        # grid_mode: each voxel becomes a block of factor^2 pixels, so block means bring the field back
        big_p, big_t = (ndimage.zoom(a, factor, order=3, mode="nearest", grid_mode=True) for a in (p, t))
        u = _displacement(big_p, big_t, iterations, smoothing * factor)
        u = u.reshape(sum(((n, factor) for n in p.shape), ()) + (p.ndim,)).mean(axis=tuple(range(1, 2 * p.ndim, 2))) / factor
    else:
        u = _displacement(p, t, iterations, smoothing)
    u *= _fade(m)[..., None]
    if not np.any(u):
        return out
    coords = np.indices(p.shape, dtype=np.float32) + np.moveaxis(u, -1, 0)
    moved = ndimage.map_coordinates(p, coords, order=3, mode="nearest").astype(np.float32)
    region = out[box]
    region[m] = moved[m]
    return out


class WarpBlender:
    """Blender ``warp``: the prior deformed (demons registration onto the target) inside the mask."""

    name = "warp"

    def __init__(self, iterations: int = 50, smoothing: float = 1.0, min_size: int = 128) -> None:
        self.iterations = iterations
        self.smoothing = smoothing
        self.min_size = min_size

    def blend(self, prior, target, mask) -> np.ndarray:
        return warp_blend(prior, target, mask, iterations=self.iterations, smoothing=self.smoothing, min_size=self.min_size)
