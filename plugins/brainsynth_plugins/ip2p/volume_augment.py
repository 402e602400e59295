"""Random monotone intensity curves: the 3D trainer's contrast augmentation.

A model trained on priors of one contrast learns what *that* contrast's ventricles look like; a
scan whose cerebrospinal fluid is darker (a real 1 mm T1w against priors simulated from an
average template) is then edited less (measured on Colin27: the change pasted into the region
grew its ventricles by 9.7 % as it is, by 17.4 % after its tissue levels were mapped onto the
cohort's). With ``intensity_curves K`` each prior and its targets are also seen through ``K``
random monotone piecewise-linear curves of the [0, 1] window: knots at 0, 0.2, ..., 1, the
inner ones moved by up to ``intensity_jitter`` and sorted, 0 and 1 fixed; one curve maps a prior
and every target made from it, so the change a prompt asks for is the same anatomy seen in
another contrast. Every curve is a pure function of (seed, prior, k): a resumed run sees the
same ones.
"""

from __future__ import annotations

from typing import Any

#: The curves' knots on the [0, 1] window.
KNOTS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def curve(seed: int, index: int, k: int, jitter: float) -> tuple[Any, Any]:
    """(x, y) knots of curve ``k`` (1, 2, ...) of prior ``index``; ``k`` 0 is the identity."""
    import numpy as np

    x = np.asarray(KNOTS, np.float64)
    if k == 0 or jitter <= 0:
        return x, x.copy()
    rng = np.random.default_rng([int(seed), 17, int(index), int(k)])
    inner = np.clip(x[1:-1] + rng.uniform(-jitter, jitter, size=len(x) - 2), 0.0, 1.0)
    return x, np.concatenate([[0.0], np.sort(inner), [1.0]])


def apply(volume: Any, knots: tuple[Any, Any]) -> Any:
    """``volume`` (values in [0, 1]) through the curve ``knots`` (float32)."""
    import numpy as np

    return np.interp(np.asarray(volume, np.float32), knots[0], knots[1]).astype(np.float32)


def step_choice(seed: int, step: int, count: int, curves: int, together: bool) -> list[int]:
    """Which curve (0 = none) each of ``count`` rows of ``step``'s batch is seen through: one for the
    whole batch when ``together`` (a prompt group shares its prior), else one per row."""
    import numpy as np

    rng = np.random.default_rng([int(seed), 29, int(step)])
    ks = rng.integers(0, curves + 1, size=count)
    return [int(ks[0])] * count if together else [int(k) for k in ks]
