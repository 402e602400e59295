"""Running out of memory while training: the one-line error that says what to change."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from brainsynth_cli.errors import UserError

#: What torch's CPU and CUDA allocators say when an allocation fails (besides ``torch.OutOfMemoryError``).
_MESSAGES = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocator's out-of-memory failure (CUDA, MPS or CPU)."""
    if isinstance(exc, MemoryError):
        return True
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _MESSAGES)


@contextlib.contextmanager
def out_of_memory_advice(cfg: dict[str, Any], stage: str, batch: int, device: str) -> Iterator[None]:
    """Turn an out-of-memory failure inside a stage into a one-line error naming the preset, the
    batch that did not fit and what to change (settings are fixed for ``--resume``: the user trains
    again, into a new folder)."""
    try:
        yield
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        where = "GPU memory" if device.startswith("cuda") else f"{device.upper()} memory" if device == "mps" else "memory"
        smaller = max(1, int(batch) // 2)
        hints = [f"--batch-size {smaller}" if batch > 1 else "a smaller --resolution or model (--set ...)"]
        if not cfg.get("gradient_checkpointing"):
            hints.append("--gradient-checkpointing")
        if cfg.get("mixed_precision") in ("no", None) and device.startswith("cuda"):
            hints.append("--mixed-precision bf16")
        raise UserError(f"out of {where} in stage {stage} ({cfg.get('preset', '?')} preset, batch {batch} per process); "
                        f"train again into a new folder with {' or '.join(hints)}") from None
