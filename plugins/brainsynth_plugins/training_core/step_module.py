"""A training step's forward as a module's ``forward``, for models trained through other methods.

Distributed data parallelism (``DistributedDataParallel``, which accelerate wraps a model in when
several processes train) synchronises gradients only for what runs through the wrapped module's
``forward``; an autoencoder trained as ``decode(encode(x))`` has no such forward. Preparing
``step_module(vae, fn)`` instead of the VAE makes ``fn(vae, ...)`` that forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def step_module(inner: Any, fn: Callable[..., Any], *, autocast: bool = True) -> Any:
    """A ``torch.nn.Module`` holding ``inner`` whose ``forward(*args)`` is ``fn(inner, *args)``.

    ``autocast=False`` runs ``fn`` in float32 even when accelerate's mixed precision wraps the
    forward in autocast (the parameters are ``inner``'s: optimise ``inner.parameters()``)."""
    import torch

    class StepModule(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            if autocast:
                return fn(self.inner, *args, **kwargs)
            device = next(self.inner.parameters()).device.type
            with torch.autocast(device_type=device, enabled=False):
                return fn(self.inner, *args, **kwargs)

    return StepModule()
