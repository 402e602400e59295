"""The ``copy-paste`` and ``none`` blenders."""

from __future__ import annotations

import numpy as np

from brainsynth_plugins.blend.poisson import check_inputs


class CopyPasteBlender:
    """Blender ``copy-paste``: the target's voxels inside the mask, the prior's outside."""

    name = "copy-paste"

    def blend(self, prior, target, mask) -> np.ndarray:
        prior, target, mask = check_inputs(prior, target, mask)
        if not np.isfinite(target[mask]).all():
            raise ValueError("target must be finite (no NaN or Inf) inside the mask")
        out = prior.copy()
        out[mask] = target[mask]
        return out


class NoneBlender:
    """Blender ``none``: returns a float32 copy of the prior (the target is not used)."""

    name = "none"

    def blend(self, prior, target, mask) -> np.ndarray:
        prior, _, _ = check_inputs(prior, target, mask)
        return prior.copy()
