"""Learning-rate schedules beyond diffusers' own (``diffusers.optimization.get_scheduler``)."""

from __future__ import annotations

from typing import Any

#: Schedules this module builds, by the name ``lr_scheduler`` takes.
OWN = ("warmup_stable_decay",)
#: Every name ``lr_scheduler`` accepts: diffusers' schedules and :data:`OWN`.
NAMES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "piecewise_constant", *OWN)


def warmup_stable_decay(step: int, *, warmup: int, total: int, decay: int) -> float:
    """The learning-rate factor at ``step`` of a warmup-stable-decay schedule: linear warmup over
    ``warmup`` steps, constant, then linear decay to 0 over the last ``decay`` of ``total`` steps.

    A constant rate keeps learning; the final decay settles the weights, so the model written at
    the end is not the luck of where the last constant-rate step happened to land.
    """
    if warmup > 0 and step < warmup:
        return step / warmup
    start = total - decay
    if decay <= 0 or step < start:
        return 1.0
    return max(0.0, (total - step) / decay)


def build(name: str, opt: Any, *, warmup: int, total: int, decay_fraction: float) -> Any:
    """A torch LambdaLR for one of :data:`OWN` (steps counted as the optimizer is stepped)."""
    from torch.optim.lr_scheduler import LambdaLR

    if name != "warmup_stable_decay":
        raise ValueError(f"unknown schedule {name!r}")
    decay = round(float(decay_fraction) * total)
    return LambdaLR(opt, lambda s: warmup_stable_decay(s, warmup=warmup, total=total, decay=decay))
