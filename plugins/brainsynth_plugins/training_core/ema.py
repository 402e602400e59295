"""Exponential moving average of a model's weights, kept in float32 beside the training weights."""

from __future__ import annotations

from typing import Any


class EMA:
    """Exponential moving average of a module's floating-point parameters (warm-up as in diffusers)."""

    def __init__(self, module: Any, decay: float = 0.999) -> None:
        self.decay = decay
        self.step = 0
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items() if v.is_floating_point()}

    def update(self, module: Any) -> None:
        import torch

        self.step += 1
        d = min(self.decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for k, v in module.state_dict().items():
                if k in self.shadow:
                    self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)

    def state_dict(self) -> dict[str, Any]:
        return self.shadow

    def load(self, tensors: dict[str, Any], step: int) -> None:
        self.shadow = {k: v.float().clone() for k, v in tensors.items()}
        self.step = step

    def apply_to(self, module: Any) -> dict[str, Any]:
        """Copy the averages into ``module``; returns the weights it had (for :meth:`restore`)."""
        backup = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict({**backup, **{k: v.to(backup[k].dtype) for k, v in self.shadow.items()}})
        return backup

    @staticmethod
    def restore(module: Any, backup: dict[str, Any]) -> None:
        module.load_state_dict(backup)
