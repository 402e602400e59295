"""Between brainsynth Volumes (voxel array + RAS affine) and SimpleITK images (LPS geometry).

Voxel data of a :class:`~brainsynth_cli.images.Volume` is indexed ``[i, j, k]`` and its affine
maps voxel indices to RAS millimetres; SimpleITK indexes arrays ``[k, j, i]`` and uses LPS
physical coordinates. Every function here keeps the physical placement exact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

from brainsynth_cli.images import Volume

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def geometry(affine: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """``(spacing, origin, direction)`` in LPS for a RAS voxel-to-world affine (shear is dropped)."""
    lps = _RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    m = lps[:3, :3]
    spacing = np.sqrt((m**2).sum(axis=0))
    direction = m / spacing
    # Orthonormalise (headers often carry float32 round-off).
    u, _, vt = np.linalg.svd(direction)
    direction = u @ vt
    return tuple(spacing.tolist()), tuple(lps[:3, 3].tolist()), tuple(direction.ravel().tolist())


def to_sitk(data: np.ndarray, affine: np.ndarray, dtype: Any = np.float32) -> sitk.Image:
    """A SimpleITK image of ``data`` (indexed [i, j, k]) placed by ``affine``."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(data, dtype=dtype).transpose(2, 1, 0)))
    spacing, origin, direction = geometry(affine)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    return img


def volume_to_sitk(volume: Volume, dtype: Any = np.float32) -> sitk.Image:
    return to_sitk(volume.data, volume.affine, dtype)


def to_array(image: sitk.Image) -> np.ndarray:
    """The voxel array of ``image`` indexed [i, j, k]."""
    return np.ascontiguousarray(sitk.GetArrayFromImage(image).transpose(2, 1, 0))


def resample(moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None,
             *, labels: bool = False, default: float = 0.0) -> sitk.Image:
    """``moving`` on ``reference``'s grid; ``transform`` maps reference points to moving points.

    Label maps use nearest-neighbour interpolation (ids are never blended), images linear.
    """
    interp = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    pixel = moving.GetPixelID()
    return sitk.Resample(moving, reference, transform or sitk.Transform(3, sitk.sitkIdentity), interp, default, pixel)


def resample_to_grid(data: np.ndarray, affine: np.ndarray, target: Volume, *, labels: bool) -> np.ndarray:
    """``data`` (on ``affine``'s grid) resampled by world position onto ``target``'s grid."""
    dtype = np.int32 if labels else np.float32
    out = resample(to_sitk(data, affine, dtype), to_sitk(np.zeros(target.shape, np.uint8), target.affine, np.uint8),
                   labels=labels)
    return to_array(out)
