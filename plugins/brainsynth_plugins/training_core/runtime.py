"""What training and inference both need before torch runs: the device, and quiet libraries."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

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


#: Mixed-precision choices of ``--mixed-precision`` (``auto``: :func:`resolve_mixed_precision`).
MIXED_PRECISION = ("no", "fp16", "bf16", "auto")


def native_bf16(device: str) -> bool:
    """Whether ``device`` computes bfloat16 natively (CUDA with bf16 support; a CPU with
    AVX512-BF16 or AMX). Elsewhere bf16 is emulated and slower than float32."""
    import torch

    if device == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(bool(check()) for check in checks if callable(check))
    return False


def resolve_mixed_precision(value: str, device: str) -> str:
    """``auto`` -> ``bf16`` where the device computes it natively (:func:`native_bf16`), else
    ``no``; any other value as given (checked: fp16 needs a GPU)."""
    if value not in MIXED_PRECISION:
        raise UserError(f"--mixed-precision must be {', '.join(MIXED_PRECISION[:-1])} or auto, got {value!r}")
    if value == "auto":
        return "bf16" if native_bf16(device) else "no"
    if value == "fp16" and device == "cpu":
        raise UserError("--mixed-precision fp16 needs a GPU; use bf16, auto or no on the CPU")
    return value


def process_group(device: str) -> Any:
    """The launch's process group (accelerate's ``PartialState``: gloo on CPUs, NCCL on GPUs), made
    before the first stage so the processes can wait for the main one to prepare the folder."""
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu")


@contextlib.contextmanager
def deterministic_on_cpu(device: str) -> Iterator[None]:
    """torch's deterministic algorithms while the block runs on the CPU (same seed, same bytes);
    the previous setting afterwards. Other devices are left as they are."""
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    if str(device) == "cpu":
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
