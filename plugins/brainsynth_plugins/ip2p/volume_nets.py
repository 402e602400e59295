"""The 3D InstructPix2Pix networks and the model's grid.

Networks: MONAI's 3D ``AutoencoderKL`` and ``DiffusionModelUNet``, built, saved and loaded by the
``ldm`` generator's builders (:mod:`brainsynth_plugins.ldm.nets`: ``config.json`` holding the
constructor arguments, ``model.safetensors``). The UNet's input is the noisy target latent
concatenated with the prior latent (``2 x latent_channels`` channels); the prompt enters by
cross-attention on the text encoder's token embeddings and, with ``unet.pooled_text`` (the
``tiny`` preset), also as a pooled embedding added to the time embedding, so every resnet block
sees it: diffusers' ``TextTimeEmbedding`` (LayerNorm, attention pooling over the tokens, a linear
projection to the time embedding's width, LayerNorm), the 2D tiny model's
``addition_embed_type="text"``, put in MONAI's class-embedding slot (``class_embedding``, added to
the time embedding in ``DiffusionModelUNet.forward``). The UNet's ``config.json`` then records
``pooled_text`` (the text width and the pooling's heads); a folder without it loads without it.

Grid: a volume is seen in its canonical RAS voxel frame (``brainsynth_cli.slices.to_canonical``,
as ``edit`` reads it) and resampled onto a box of ``grid`` voxels of ``voxel_mm``, axis-aligned
with that frame and centred on the centroid of the brain's labels (a label map comes with every
pair and every restricted edit; without one, the centroid of the image's foreground), moved by
less than half an input voxel so that its first voxel lies on an input voxel. The prior
and the target of a pair share the prior's box, so their difference is anatomy, not placement.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from brainsynth_plugins.ldm import nets

DIM = "3d"


# ---------------------------------------------------------------------------------------------
# networks
# ---------------------------------------------------------------------------------------------
def vae_kwargs(size: dict[str, Any]) -> dict[str, Any]:
    return nets.monai_kwargs("vae", size)


def pooled_text(size: dict[str, Any], text_width: int) -> dict[str, int] | None:
    """``{"width", "heads"}`` of the pooled prompt embedding (``unet.pooled_text``), else ``None``.
    Heads: gcd(width, 64), the 2D path's default (diffusers' 64 where it divides the width)."""
    if not size.get("pooled_text"):
        return None
    return {"width": int(text_width), "heads": math.gcd(int(text_width), 64)}


def add_pooled_text(unet: Any, spec: dict[str, int]) -> Any:
    """Give a MONAI ``DiffusionModelUNet`` the pooled prompt embedding: a ``TextTimeEmbedding`` from
    the token embeddings (B, T, width) to the time embedding's width, in the class-embedding slot
    (MONAI adds ``class_embedding(class_labels)`` to the time embedding when ``num_class_embeds``
    is set; :func:`unet_forward` passes the token embeddings as ``class_labels``)."""
    from diffusers.models.embeddings import TextTimeEmbedding

    time_dim = int(unet.time_embed[-1].out_features)
    unet.class_embedding = TextTimeEmbedding(int(spec["width"]), time_dim, num_heads=int(spec["heads"]))
    unet.num_class_embeds = int(spec["width"])  # MONAI only tests it against None
    unet.pooled_text = dict(spec)
    return unet


def centre_text(unet: Any, tokens: Any) -> Any:
    """Give the UNet its prompt centring (``unet.centre_text``): buffers ``text_centre`` (T, H), the
    mean of the pairs folder's prompts' token embeddings ``tokens`` (P, T, H), and ``text_scale``, one
    over the standard deviation of the centred embeddings. :func:`unet_forward` feeds the UNet
    ``(text - text_centre) * text_scale``: what the prompts share (MiniLM's states for "mild" and
    "severe ventricle enlargement" are 95 % alike) is taken out, what tells them apart is what the
    network sees. Saved with the weights, so an edit centres any prompt as training did."""
    import torch

    tokens = torch.as_tensor(tokens, dtype=torch.float32).detach().cpu()
    centre = tokens.mean(0)
    spread = float((tokens - centre).std()) if tokens.shape[0] > 1 else 0.0
    unet.register_buffer("text_centre", centre.clone())
    unet.register_buffer("text_scale", torch.tensor(1.0 / spread if spread > 1e-6 else 1.0))
    return unet


def add_prior_skip(unet: Any, scale: float) -> Any:
    """Give the UNet the prior's skip (``unet.prior_skip``, ``sample`` prediction only): its output
    becomes ``prior * scale + network(...)``, the prior's latent on the target's (scaled) footing
    plus what the network adds, so leaving the input unchanged is the network's zero output (MONAI
    zero-initialises the last convolution: an untrained UNet is the identity edit) and the network
    models only the change. The diffusion still runs on the target latent (not the 2D path's
    ``latent_target=change``): the noisy input is the target's. ``scale`` (the latent's scaling
    factor) is a buffer saved with the weights. Where the image conditioning is dropped (training's
    dropout, the unconditional guidance branch) the prior is zeros and nothing is added."""
    import torch

    unet.register_buffer("prior_scale", torch.tensor(float(scale)))
    return unet


def _centring_buffers(unet: Any, spec: dict[str, int]) -> None:
    """Empty centring buffers of the recorded shape, filled when the weights load."""
    import torch

    unet.register_buffer("text_centre", torch.zeros(int(spec["tokens"]), int(spec["width"])))
    unet.register_buffer("text_scale", torch.tensor(1.0))


def unet_kwargs(size: dict[str, Any], latent_channels: int, text_width: int) -> dict[str, Any]:
    """The 3D UNet: noisy target latent + prior latent in, the target's prediction out, text by cross-attention."""
    return nets.monai_kwargs("unet", size, in_channels=2 * int(latent_channels), out_channels=int(latent_channels),
                             cross_attention_dim=int(text_width))


def build_vae(size: dict[str, Any]) -> Any:
    return nets.build_vae(DIM, size)


def build_unet(size: dict[str, Any], latent_channels: int, text_width: int) -> Any:
    unet = nets.build_unet(DIM, size, in_channels=2 * int(latent_channels), out_channels=int(latent_channels),
                           cross_attention_dim=int(text_width))
    spec = pooled_text(size, text_width)
    return add_pooled_text(unet, spec) if spec else unet


def save_unet(unet: Any, folder: Any, size: dict[str, Any], latent_channels: int, text_width: int) -> None:
    """config.json (MONAI's constructor arguments, and ``pooled_text`` / ``text_centre`` when the UNet
    has them) + model.safetensors (the centring buffers with the weights)."""
    extra: dict[str, Any] = {}
    if getattr(unet, "pooled_text", None):
        extra["pooled_text"] = unet.pooled_text
    centre = getattr(unet, "text_centre", None)
    if centre is not None:
        extra["text_centre"] = {"tokens": int(centre.shape[0]), "width": int(centre.shape[1])}
    if getattr(unet, "prior_scale", None) is not None:
        extra["prior_skip"] = True
    nets.save(unet, DIM, "unet", folder, unet_kwargs(size, latent_channels, text_width), extra=extra or None)


def load_unet(folder: Any) -> Any:
    """The UNet saved by :func:`save_unet` (or by an older brainsynth, without the pooled prompt, the centring or the prior's skip)."""

    def prepare(module: Any, cfg: dict[str, Any]) -> None:
        if cfg.get("pooled_text"):
            add_pooled_text(module, cfg["pooled_text"])
        if cfg.get("text_centre"):
            _centring_buffers(module, cfg["text_centre"])
        if cfg.get("prior_skip"):
            add_prior_skip(module, 1.0)  # the saved value loads with the weights

    return nets.load(DIM, "unet", folder, prepare)


def factor(size: dict[str, Any]) -> int:
    """How many times a network halves the grid (MONAI: once per level after the first)."""
    return 2 ** (len(size["channels"]) - 1)


def volume_conditioning(vae: Any, x: Any) -> Any:
    """The prior latent the UNet is conditioned on, from volumes ``x`` in [-1, 1] (B, 1, D, H, W):
    the posterior's mode (MONAI's ``z_mu``), *not* scaled, as the 2D model's
    :func:`brainsynth_plugins.ip2p.model.image_conditioning`. Training and editing both call this."""
    return nets.encode(vae, DIM, x)[0]


def decode(vae: Any, z: Any) -> Any:
    return nets.decode(vae, DIM, z)


def unet_forward(unet: Any, noisy: Any, prior: Any, t: Any, text: Any) -> Any:
    """The UNet's prediction for noisy target latents ``noisy`` conditioned on ``prior`` latents and
    text tokens (by cross-attention and, when the UNet has it, pooled into the time embedding;
    centred first when it has :func:`centre_text`'s buffers); with :func:`add_prior_skip`'s buffer
    the prior latent times the scale is added to the network's output, in float32 (a bf16 copy of
    the prior would differ from it by rounding, a change the network would have to undo)."""
    import torch

    inner = _inner(unet)
    centre = getattr(inner, "text_centre", None)
    if centre is not None:
        text = (text - centre.to(text.device, text.dtype)) * inner.text_scale.to(text.device, text.dtype)
    pooled = text if getattr(inner, "pooled_text", None) else None
    out = nets.denoise(unet, DIM, _cat(noisy, prior), t, text, class_labels=pooled)
    skip = getattr(inner, "prior_scale", None)
    if skip is not None:
        out = out.float() + prior.float() * skip.to(prior.device, torch.float32)
    return out


def _inner(unet: Any) -> Any:
    """The network under a wrapper (accelerate's, torch.compile's), where the attribute lives."""
    while hasattr(unet, "module") or hasattr(unet, "_orig_mod"):
        unet = getattr(unet, "module", None) or unet._orig_mod
    return unet


def _cat(a: Any, b: Any) -> Any:
    import torch

    return torch.cat([a, b.to(a.dtype)], dim=1)


def embed_prompts(tokenizer: Any, model: Any, prompts: Sequence[str], device: Any) -> Any:
    """Token embeddings (B, T, H) of prompts: the same call in training and editing."""
    from brainsynth_plugins.ldm.model import embed_text

    return embed_text(tokenizer, model, list(prompts), device)


# ---------------------------------------------------------------------------------------------
# the grid
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Box:
    """Where the model's grid lies in a canonical volume: its centre (canonical voxel coordinates),
    the volume's voxel size and shape, and the model grid's shape and voxel size."""

    centre: tuple[float, float, float]
    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    grid: tuple[int, int, int]
    voxel_mm: float

    def _map(self) -> tuple[Any, Any]:
        """(scale, offset): model voxel i -> volume voxel ``scale * i + offset``."""
        import numpy as np

        scale = np.asarray([self.voxel_mm / s for s in self.spacing], dtype=np.float64)
        offset = np.asarray(self.centre, np.float64) - scale * (np.asarray(self.grid, np.float64) - 1) / 2
        return scale, offset

    def to_model(self, volume: Any, order: int = 1) -> Any:
        """``volume`` (canonical, on this box's volume grid) resampled onto the model grid; linear
        with Gaussian anti-aliasing for images (``order=1``), nearest neighbour for labels (0)."""
        import numpy as np
        from scipy import ndimage

        scale, offset = self._map()
        src = np.asarray(volume, dtype=np.float32 if order else None)
        if order:
            sigma = [0.5 * max(float(r) - 1.0, 0.0) for r in scale]
            if any(s > 0 for s in sigma):
                src = ndimage.gaussian_filter(src, sigma, mode="constant")
        out = ndimage.affine_transform(src, scale, offset, output_shape=self.grid, order=order, mode="constant", cval=0)
        return out.astype(np.float32) if order else out

    def to_volume(self, grid_data: Any) -> Any:
        """Data on the model grid (a change) brought back onto the volume's grid, linearly; 0 outside the box."""
        import numpy as np
        from scipy import ndimage

        scale, offset = self._map()
        out = ndimage.affine_transform(np.asarray(grid_data, np.float32), 1 / scale, -offset / scale,
                                       output_shape=self.shape, order=1, mode="constant", cval=0.0)
        return out.astype(np.float32)


def place(image: Any, labels: Any | None, spacing: Sequence[float], grid: Sequence[int], voxel_mm: float) -> Box:
    """The model's box for a canonical volume: centred on its labelled voxels' centroid (else its
    foreground's), moved by less than half an input voxel so that the box's first voxel lies on
    an input voxel. A volume whose voxels are the model's size then goes onto the model grid and
    back without interpolation: on the simulated 4 mm cohort, a deformed pair's ventricle change
    (+15.0 % by the atlas segmenter's longitudinal mode) came back through the unsnapped box as
    +8.3 %, through the snapped one whole."""
    import numpy as np
    from scipy import ndimage

    mask = np.asarray(labels) > 0 if labels is not None else None
    if mask is None or not mask.any():
        a = np.asarray(image, np.float32)
        mask = a > 0.1 * float(a.max()) if a.size and float(a.max()) > 0 else np.ones(a.shape, bool)
    scale = np.asarray([float(voxel_mm) / float(s) for s in spacing])
    half = scale * (np.asarray(grid, np.float64) - 1) / 2
    centre = np.round(np.asarray(ndimage.center_of_mass(mask), np.float64) - half) + half
    return Box(tuple(float(c) for c in centre), tuple(float(s) for s in spacing), tuple(int(n) for n in np.asarray(image).shape),
               tuple(int(g) for g in grid), float(voxel_mm))


def model_view(volume: Any, labels: Any | None, spacing: Sequence[float], grid: Sequence[int], voxel_mm: float) -> tuple[Box, Any]:
    """(box, the volume on the model grid in [0, 1]): how training sees a pair's prior and how
    ``edit`` sees its input, the same call."""
    import numpy as np

    box = place(volume, labels, spacing, grid, voxel_mm)
    return box, np.clip(box.to_model(volume), 0, 1)
