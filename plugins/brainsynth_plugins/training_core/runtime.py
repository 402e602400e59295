"""What training and inference both need before torch runs: the device, and quiet libraries."""

from __future__ import annotations

from brainsynth_cli.errors import UserError


def quiet() -> None:
    """Silence transformers/diffusers download bars and load reports."""
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def resolve_device(device: str) -> str:
    """``auto`` -> cuda, mps or cpu (what is available); a named device that is not: one-line error."""
    import torch

    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available; use --device cpu or auto")
    if device == "mps" and not (getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()):
        raise UserError("--device mps: MPS is not available; use --device cpu or auto")
    if device not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown --device {device!r}; use auto, cpu, cuda or mps")
    return device
