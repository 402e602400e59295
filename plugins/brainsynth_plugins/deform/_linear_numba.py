"""Numba kernels: linear interpolation of a multi-channel 2D or 3D array at scattered points.

``scipy.ndimage.map_coordinates`` samples one channel per call and is about four times slower
per channel; the deformation samples three displacement components at every scaling-and-
squaring step and two partial-volume indicators at every solver evaluation, so these kernels
sample all channels of a ``(C, X, Y[, Z])`` array in one pass. Outside the grid: 0
(``clamp=False``) or the nearest edge value (``clamp=True``). The result has the array's dtype.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def _bilinear(field, pts, clamp):  # pragma: no cover - compiled
    nc, nx, ny = field.shape
    n = pts.shape[1]
    out = np.zeros((nc, n), dtype=field.dtype)
    for p in range(n):
        x = pts[0, p]
        y = pts[1, p]
        if clamp:
            x = min(max(x, 0.0), nx - 1.0)
            y = min(max(y, 0.0), ny - 1.0)
        elif x <= -1.0 or y <= -1.0 or x >= nx or y >= ny:
            continue
        i0 = int(np.floor(x))
        j0 = int(np.floor(y))
        fx = x - i0
        fy = y - j0
        for di in range(2):
            i = i0 + di
            if i < 0 or i >= nx:
                continue
            wx = fx if di else 1.0 - fx
            for dj in range(2):
                j = j0 + dj
                if j < 0 or j >= ny:
                    continue
                w = wx * (fy if dj else 1.0 - fy)
                if w == 0.0:
                    continue
                for c in range(nc):
                    out[c, p] += w * field[c, i, j]
    return out


@njit(cache=True, nogil=True)
def _trilinear(field, pts, clamp):  # pragma: no cover - compiled
    nc, nx, ny, nz = field.shape
    n = pts.shape[1]
    out = np.zeros((nc, n), dtype=field.dtype)
    for p in range(n):
        x = pts[0, p]
        y = pts[1, p]
        z = pts[2, p]
        if clamp:
            x = min(max(x, 0.0), nx - 1.0)
            y = min(max(y, 0.0), ny - 1.0)
            z = min(max(z, 0.0), nz - 1.0)
        elif x <= -1.0 or y <= -1.0 or z <= -1.0 or x >= nx or y >= ny or z >= nz:
            continue
        i0 = int(np.floor(x))
        j0 = int(np.floor(y))
        k0 = int(np.floor(z))
        fx = x - i0
        fy = y - j0
        fz = z - k0
        for di in range(2):
            i = i0 + di
            if i < 0 or i >= nx:
                continue
            wx = fx if di else 1.0 - fx
            for dj in range(2):
                j = j0 + dj
                if j < 0 or j >= ny:
                    continue
                wy = wx * (fy if dj else 1.0 - fy)
                for dk in range(2):
                    k = k0 + dk
                    if k < 0 or k >= nz:
                        continue
                    w = wy * (fz if dk else 1.0 - fz)
                    if w == 0.0:
                        continue
                    for c in range(nc):
                        out[c, p] += w * field[c, i, j, k]
    return out


def linear(field: np.ndarray, pts: np.ndarray, clamp: bool = False) -> np.ndarray:
    """Sample ``field`` (C, X, Y) or (C, X, Y, Z) at voxel positions ``pts`` (ndim, N) -> (C, N)."""
    f = np.ascontiguousarray(field)
    p = np.ascontiguousarray(pts, dtype=np.float32)
    if f.ndim == 3:
        return _bilinear(f, p, bool(clamp))
    if f.ndim == 4:
        return _trilinear(f, p, bool(clamp))
    raise ValueError(f"linear sampling needs a (C, X, Y) or (C, X, Y, Z) array, got shape {f.shape}")
