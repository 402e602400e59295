"""The deformation map of given magnitudes: exp(a V + b C) by scaling and squaring.

The velocity fields are stationary; the map's displacement ``u`` is integrated by scaling and
squaring (u <- u + u(x + u) after dividing the velocity by 2^k, with 2^k large enough that one
sub-step moves no voxel by more than a quarter voxel), so the map is a diffeomorphism: smooth,
invertible, its Jacobian determinant positive. Only voxels in the support of the fields move;
everything here works on those voxels alone (the rest of the grid is untouched).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from brainsynth_plugins.deform.fields import Fields

MAX_STEP = 0.25  # voxels per scaling-and-squaring sub-step: well below where the fields fold


class Flow:
    """The displacement of ``exp(sum m_s F_s)`` for the fields of ``names``, on their support."""

    def __init__(self, fields: Fields, names: Sequence[str]) -> None:
        import numpy as np

        self.shape = fields.shape
        self.names = tuple(names)
        support = fields.support(self.names)
        self.index = np.flatnonzero(support)
        self.points = np.stack(np.unravel_index(self.index, self.shape)).astype(np.float32)
        self.velocity = {n: fields.velocity[n].reshape(len(self.shape), -1)[:, self.index] for n in self.names}
        self._full = np.zeros((len(self.shape),) + self.shape, dtype=np.float32)
        self._cache: dict[tuple[float, ...], np.ndarray] = {}

    def _key(self, magnitudes: Mapping[str, float]) -> tuple[float, ...]:
        return tuple(float(magnitudes.get(n, 0.0)) for n in self.names)

    def displacement(self, magnitudes: Mapping[str, float]) -> np.ndarray:
        """u (ndim, N) at the support voxels, in voxels."""
        import numpy as np

        from brainsynth_plugins.deform._linear_numba import linear

        key = self._key(magnitudes)
        if key in self._cache:
            return self._cache[key]
        v = np.zeros_like(self.points)
        for n, m in zip(self.names, key):
            if m:
                v += np.float32(m) * self.velocity[n]
        top = float(np.sqrt((v * v).sum(axis=0)).max()) if v.size else 0.0
        steps = math.ceil(math.log2(top / MAX_STEP)) if top > MAX_STEP else 0
        u = v * np.float32(1.0 / 2**steps)
        if steps:
            flat = self._full.reshape(len(self.shape), -1)
            for _ in range(steps):
                flat[:, self.index] = u
                u = u + linear(self._full, self.points + u)
            flat[:, self.index] = 0.0
        if len(self._cache) >= 4:
            self._cache.clear()
        self._cache[key] = u
        return u

    def positions(self, magnitudes: Mapping[str, float]) -> np.ndarray:
        """Where each support voxel samples the input: x + u(x) (ndim, N), voxels."""
        return self.points + self.displacement(magnitudes)

    def min_jacobian(self, magnitudes: Mapping[str, float]) -> float:
        """The smallest Jacobian determinant of x -> x + u(x) over the support and its
        neighbours (central differences; 1 where nothing moves)."""
        import numpy as np

        if self.index.size == 0:
            return 1.0
        nd = len(self.shape)
        full = np.zeros((nd,) + self.shape, dtype=np.float64)
        full.reshape(nd, -1)[:, self.index] = self.displacement(magnitudes)
        lo = [max(int(c.min()) - 2, 0) for c in self.points]
        hi = [min(int(c.max()) + 3, n) for c, n in zip(self.points, self.shape)]
        box = (slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))
        u = full[box]
        jac = np.empty((nd, nd) + u.shape[1:], dtype=np.float64)
        for i in range(nd):
            grads = np.gradient(u[i]) if min(u.shape[1:]) > 1 else [np.zeros(u.shape[1:])] * nd
            for j in range(nd):
                jac[i, j] = grads[j] + (1.0 if i == j else 0.0)
        det = np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))
        return float(det.min())
