"""InstructPix2Pix's conditioning dropout, the same for 2D slices and 3D volumes.

Each example of a batch draws one ``u ~ U(0, 1)``: with probability ``drop`` only the text is
replaced by the empty prompt's embedding (``u < drop``), with ``drop`` both the text and the
prior latent are dropped (``drop <= u < 2 drop``), with ``drop`` only the prior latent is zeroed
(``2 drop <= u < 3 drop``). That is what lets an edit use two guidance scales (text and image).
"""

from __future__ import annotations

from typing import Any


def drop_conditioning(text: Any, prior: Any, null: Any, drop: float, gen: Any) -> tuple[Any, Any]:
    """(text, prior) with the three-way dropout applied; ``text`` is (B, T, H), ``null`` (T, H),
    ``prior`` (B, C, ...) of any spatial rank. One draw of ``gen`` per example."""
    import torch

    u = torch.rand(len(prior), generator=gen, device=gen.device).to(prior.device)
    text = torch.where((u < 2 * drop)[:, None, None], null[None], text)
    keep = 1 - ((u >= drop) & (u < 3 * drop)).float()
    prior = prior * keep.reshape((len(prior),) + (1,) * (prior.ndim - 1))
    return text, prior
