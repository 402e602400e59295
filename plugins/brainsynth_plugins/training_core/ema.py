"""Exponential moving average of a model's weights: diffusers' ``EMAModel``, kept in checkpoints
by parameter name.

``EMAModel`` holds its averages as a list in the order of ``module.parameters()``; a checkpoint
stores them as ``ema.safetensors`` keyed by parameter name, and ``EMAModel``'s settings and step
(its ``state_dict`` without the tensors) as ``state.json``'s ``"ema"``. Checkpoints written before
``EMAModel`` was used hold the same name-keyed tensors (every floating-point entry of the module's
state dict) and only the step, as ``"ema_step"``; :func:`load_ema` reads both.

The decay warms up as diffusers does, ``min(decay, (1 + t) / (10 + t))`` with ``t`` the number of
updates before this one (the first update copies the weights).
"""

from __future__ import annotations

from typing import Any

from brainsynth_cli.errors import UserError


def new_ema(module: Any, decay: float) -> Any:
    """An ``EMAModel`` of ``module``'s parameters (on their device and dtype)."""
    from diffusers.training_utils import EMAModel

    return EMAModel(module.parameters(), decay=float(decay))


def ema_tensors(ema: Any, module: Any) -> dict[str, Any]:
    """The averages by parameter name of ``module`` (the module the EMA was made from)."""
    names = [name for name, _ in module.named_parameters()]
    return dict(zip(names, ema.shadow_params, strict=True))


def ema_settings(ema: Any) -> dict[str, Any]:
    """``EMAModel.state_dict()`` without the tensors: decay, step, warm-up (JSON-able)."""
    return {k: v for k, v in ema.state_dict().items() if k != "shadow_params"}


def load_ema(ema: Any, module: Any, tensors: dict[str, Any], state: dict[str, Any]) -> None:
    """Restore ``ema`` from a checkpoint's name-keyed ``tensors`` and its ``state.json`` ``state``
    (``"ema"`` settings, or only ``"ema_step"`` in checkpoints of the hand-written EMA)."""
    params = list(module.named_parameters())
    missing = [name for name, _ in params if name not in tensors]
    if missing:
        raise UserError(f"the checkpoint's EMA weights lack {len(missing)} of the model's parameters "
                        f"(e.g. {missing[0]}); resume with the settings the run was started with")
    settings = state.get("ema")
    if not isinstance(settings, dict):
        settings = {"optimization_step": int(state.get("ema_step", 0))}
    shadow = [tensors[name].to(device=p.device, dtype=p.dtype) for name, p in params]
    ema.load_state_dict({**settings, "shadow_params": shadow})
