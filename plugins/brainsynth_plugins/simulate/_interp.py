"""Trilinear sampling of vector fields at scattered points (numba; the simulator's hot loop).

``scipy.ndimage.map_coordinates`` samples one component per call; these kernels sample all
components of a ``(C, X, Y, Z)`` field in one pass, which makes calibrating a session several
times faster. Outside the grid: 0 (``clamp=False``) or the nearest edge value (``clamp=True``).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _trilinear(field: np.ndarray, pts: np.ndarray, clamp: bool) -> np.ndarray:  # pragma: no cover - compiled
    nc, nx, ny, nz = field.shape
    n = pts.shape[1]
    out = np.zeros((nc, n), dtype=np.float32)
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
                wy = fy if dj else 1.0 - fy
                for dk in range(2):
                    k = k0 + dk
                    if k < 0 or k >= nz:
                        continue
                    w = wx * wy * (fz if dk else 1.0 - fz)
                    if w == 0.0:
                        continue
                    for c in range(nc):
                        out[c, p] += w * field[c, i, j, k]
    return out


def trilinear(field: np.ndarray, pts: np.ndarray, clamp: bool = False) -> np.ndarray:
    """Sample ``field`` (C, X, Y, Z) at voxel positions ``pts`` (3, N) -> (C, N) float32."""
    f = np.ascontiguousarray(field, dtype=np.float32)
    if f.ndim == 3:
        f = f[None]
    p = np.ascontiguousarray(pts, dtype=np.float32)
    return _trilinear(f, p, bool(clamp))
