"""Unit velocity fields of the deformation, from a label map (2D or 3D, spacing-aware).

The same two fields as the simulator's (:mod:`brainsynth_plugins.simulate.cohort`), computed in
millimetres on any grid:

- **ventricle**: the gradient of the ventricle mask smoothed with a 3 mm Gaussian. It points
  into the ventricles, so sampling the input at ``x + a v(x)`` (a > 0) moves the walls outward
  into the surrounding tissue; the effect fades within about 1 cm. Damped to 0 next to the
  cortex, so the ventricles never push the cortex.
- **cortex**: the inward normal of the tissue mask (every non-zero label except the rules'
  ``csf`` group) smoothed with a 2 mm Gaussian, weighted 0 at the grey/white boundary and 1
  from 3 mm outward, kept within 4 mm of the cortex and damped to 0 next to the ventricles.
  Sampling at ``x + b n(x)`` with b < 0 (outward) thins the cortex from the pial side.

Each field is normalised so that its largest vector is 1 mm long, then expressed in voxels per
millimetre of magnitude (component ``d`` divided by the spacing along axis ``d``), so a
magnitude is a displacement in millimetres: positive magnitudes grow the structure (its wall
moves outward), negative ones shrink it. The structures come from the rules by group name
(``ventricle``, ``cortex``, ``csf``), so any label convention the rules describe works.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from brainsynth_cli.structures import Rules

#: Names of the groups the deformation can change, in the order magnitudes are kept.
DEFORMABLE = ("ventricle", "cortex")

VENTRICLE_SIGMA_MM = 3.0  # smoothing of the ventricle mask: the push fades within ~1 cm
TISSUE_SIGMA_MM = 2.0  # smoothing of the tissue mask whose outward normal moves the cortex
CORTEX_DEPTH_MM = 3.0  # the cortex field rises from 0 at the white matter to 1 at this depth
REACH_MM = 4.0  # the cortex field acts within this distance of the cortex, and is damped within it of the ventricles
NEAR_MM = 2.0  # the ventricle field is damped within this distance of the cortex
SUPPORT_THRESHOLD = 1e-4  # a voxel moves when its field is longer than this (mm per mm of magnitude)


@dataclass
class Fields:
    """Unit velocity fields (voxels per mm of magnitude), each ``(ndim,) + shape`` float32."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    velocity: dict[str, np.ndarray]  # name -> field, for the groups present in the labels
    masks: dict[str, np.ndarray]  # name -> boolean mask of the group in the labels

    def support(self, names: Sequence[str]) -> np.ndarray:
        """Voxels that move when the fields of ``names`` act (boolean array)."""
        import numpy as np

        out = np.zeros(self.shape, dtype=bool)
        for name in names:
            v = self.velocity[name] * np.asarray(self.spacing, np.float32).reshape((-1,) + (1,) * len(self.shape))
            out |= np.sqrt((v * v).sum(axis=0)) > SUPPORT_THRESHOLD
        return out


def group_mask(labels: np.ndarray, rules: Rules, name: str) -> np.ndarray:
    """Voxels of group ``name`` (all False when the rules have no such group)."""
    import numpy as np

    try:
        ids = rules[name].labels
    except KeyError:
        return np.zeros(labels.shape, dtype=bool)
    return np.isin(labels, np.asarray(ids, dtype=np.int64))


def _sigma(mm: float, spacing: Sequence[float], at_least: float = 0.0) -> tuple[float, ...]:
    return tuple(max(mm / s, at_least) for s in spacing)


def _near(mask: np.ndarray, mm: float, spacing: Sequence[float]) -> np.ndarray:
    """``mask`` dilated by ``mm`` millimetres (at least one voxel along each axis)."""
    import numpy as np
    import scipy.ndimage as ndi

    if not mask.any():
        return mask.copy()
    radius = max(mm, max(spacing))
    return np.asarray(ndi.distance_transform_edt(~mask, sampling=spacing) <= radius)


def _normalise(field: np.ndarray) -> np.ndarray:
    import numpy as np

    mag = np.sqrt((field * field).sum(axis=0))
    top = float(mag.max()) if mag.size else 0.0
    return field / top if top > 0 else field


def velocity_fields(labels: np.ndarray, rules: Rules, spacing: Sequence[float]) -> Fields:
    """The unit ventricle and cortex fields of ``labels`` (see the module docstring)."""
    import numpy as np
    import scipy.ndimage as ndi

    spacing = tuple(float(s) for s in spacing)
    vent = group_mask(labels, rules, "ventricle")
    cortex = group_mask(labels, rules, "cortex")
    tissue = (labels != 0) & ~group_mask(labels, rules, "csf")
    per_mm = np.asarray(spacing, np.float32).reshape((-1,) + (1,) * labels.ndim)  # mm -> voxels
    velocity: dict[str, np.ndarray] = {}
    smooth_1vox = _sigma(NEAR_MM, spacing, at_least=1.0)

    if vent.any():
        s = ndi.gaussian_filter(vent.astype(np.float32), _sigma(VENTRICLE_SIGMA_MM, spacing))
        g = _normalise(np.stack(np.gradient(s, *spacing)).astype(np.float32))
        if cortex.any():
            near_cortex = ndi.gaussian_filter(_near(cortex, NEAR_MM, spacing).astype(np.float32), smooth_1vox)
            g *= np.clip(1.0 - 2.0 * near_cortex, 0.0, 1.0)
        velocity["ventricle"] = (g / per_mm).astype(np.float32)

    if cortex.any():
        sp = ndi.gaussian_filter(tissue.astype(np.float32), _sigma(TISSUE_SIGMA_MM, spacing))
        n = np.stack(np.gradient(sp, *spacing)).astype(np.float32)  # inward
        nmag = np.sqrt((n * n).sum(axis=0))
        n /= np.maximum(nmag, 0.25 * max(float(nmag.max()), 1e-12))
        inner = tissue & ~cortex
        depth = ndi.distance_transform_edt(~inner, sampling=spacing) if inner.any() else np.full(labels.shape, np.inf)
        w = np.clip(depth / CORTEX_DEPTH_MM, 0.0, 1.0).astype(np.float32)
        w = w * w * (3.0 - 2.0 * w)
        w *= np.clip(ndi.gaussian_filter(_near(cortex, REACH_MM, spacing).astype(np.float32), smooth_1vox) * 1.5, 0.0, 1.0)
        if vent.any():
            away = ndi.gaussian_filter(_near(vent, REACH_MM, spacing).astype(np.float32), smooth_1vox)
            w *= np.clip(1.0 - 2.0 * away, 0.0, 1.0)
        velocity["cortex"] = (_normalise(n * w) / per_mm).astype(np.float32)

    return Fields(shape=tuple(labels.shape), spacing=spacing, velocity=velocity, masks={"ventricle": vent, "cortex": cortex})
