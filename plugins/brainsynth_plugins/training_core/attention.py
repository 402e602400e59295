"""Which attention kernel a diffusers network trains with on the CPU.

torch's fused ``scaled_dot_product_attention`` (diffusers' default processor) has a slow CPU
*backward* for short sequences and narrow heads: in the ``tiny`` preset's UNet (8 heads of 8
channels over 16x16 positions, cross-attention to 64 text tokens) it took 44 % of a training step
on 2 cores (benchmarks/RESULTS.md, "Faster CPU training, ..."). Diffusers' classic processor
(scores by one batched matmul, softmax, matmul) computes the same attention and trains that UNet
1.3-1.45x faster (`benchmarks/attention.py`); for long sequences, and without gradients, the fused kernel is the faster one. The choice
is made per call and is not stored with the model.
"""

from __future__ import annotations

from typing import Any

#: Largest query x key positions computed by the classic processor while training (16x16 latents
#: attending to themselves); above it the fused kernel was faster on the CPU, backward included.
SHORT = 256 * 256


class ShortSequenceAttention:
    """A diffusers attention processor: the classic one for short sequences while gradients are
    recorded on the CPU, the fused one otherwise."""

    def __init__(self, limit: int = SHORT) -> None:
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        self.limit = int(limit)
        self.classic, self.fused = AttnProcessor(), AttnProcessor2_0()

    def pick(self, hidden_states: Any, encoder_hidden_states: Any = None) -> Any:
        """The processor for one call (``hidden_states``: batch x positions x channels, or an image)."""
        import torch

        queries = hidden_states.shape[1] if hidden_states.ndim == 3 else int(hidden_states[0, 0].numel())
        keys = encoder_hidden_states.shape[1] if encoder_hidden_states is not None else queries
        short = queries * keys <= self.limit
        return self.classic if short and hidden_states.device.type == "cpu" and torch.is_grad_enabled() else self.fused

    def __call__(self, attn: Any, hidden_states: Any, encoder_hidden_states: Any = None, attention_mask: Any = None,
                 temb: Any = None, *args: Any, **kwargs: Any) -> Any:
        return self.pick(hidden_states, encoder_hidden_states)(attn, hidden_states, encoder_hidden_states, attention_mask,
                                                               temb, *args, **kwargs)


def train_attention(model: Any, device: str) -> bool:
    """Give a diffusers network about to be trained on the CPU :class:`ShortSequenceAttention`;
    returns whether it was set (not on other devices, nor for networks without diffusers'
    attention processors, e.g. MONAI's)."""
    if str(device) != "cpu" or not hasattr(model, "set_attn_processor") or not getattr(model, "attn_processors", None):
        return False
    model.set_attn_processor(ShortSequenceAttention())
    return True
