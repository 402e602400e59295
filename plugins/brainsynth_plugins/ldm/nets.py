"""The networks of the ``ldm`` generator, in 2D (diffusers) and 3D (MONAI), behind one small API.

- 2D: ``diffusers.AutoencoderKL`` and ``diffusers.UNet2DConditionModel`` (saved with
  ``save_pretrained``, safetensors).
- 3D: ``monai.networks.nets.AutoencoderKL`` and ``monai.networks.nets.DiffusionModelUNet``
  (MONAI >= 1.4, the generative networks of Pinaya et al.'s Brain LDM); saved as
  ``config.json`` (class and constructor arguments) plus ``model.safetensors``.

Conditioning (Brain LDM's hybrid scheme, DALL-E Brain's text cross-attention):

- ``text``: cross-attention on the text encoder's token embeddings ``(B, T, H)``;
- ``covariates``: the four min-max scaled covariates are concatenated to the noisy latent as
  constant channels *and* given to cross-attention as one token ``(B, 1, 4)``;
- ``both``: the covariate channels, and cross-attention on the text tokens followed by one
  covariate token (the four values zero-padded to ``H``; the attention's key/value projections
  learn its embedding).

The null condition of classifier-free guidance is the empty prompt's embedding and covariates
of ``NULL_COVARIATE`` (outside the scaled range [0, 1]).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brainsynth_cli.errors import InputError

NULL_COVARIATE = -1.0
N_COVARIATES = 4
CONDITIONS = ("text", "covariates", "both")


def uses_text(condition: str) -> bool:
    return condition in ("text", "both")


def uses_covariates(condition: str) -> bool:
    return condition in ("covariates", "both")


def context_dim(condition: str, text_hidden: int | None) -> int:
    return int(text_hidden) if uses_text(condition) else N_COVARIATES


def extra_channels(condition: str) -> int:
    return N_COVARIATES if uses_covariates(condition) else 0


def build_context(condition: str, text: Any | None, cov: Any | None) -> Any:
    """Cross-attention context ``(B, T, D)`` from text embeddings ``(B, T, H)`` and scaled covariates ``(B, 4)``."""
    import torch

    if condition == "text":
        return text
    token = cov[:, None, :].to(torch.float32)
    if condition == "covariates":
        return token
    pad = torch.zeros(text.shape[0], 1, text.shape[2], dtype=text.dtype, device=text.device)
    pad[:, :, :N_COVARIATES] = token.to(text.dtype)
    return torch.cat([text, pad], dim=1)


def with_covariate_maps(condition: str, latents: Any, cov: Any | None) -> Any:
    """Concatenate the covariates to the latents as constant channels (covariate models only)."""
    import torch

    if not uses_covariates(condition):
        return latents
    shape = (cov.shape[0], cov.shape[1]) + (1,) * (latents.ndim - 2)
    maps = cov.to(latents.dtype).reshape(shape).expand(-1, -1, *latents.shape[2:])
    return torch.cat([latents, maps], dim=1)


# ---------------------------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------------------------
def build_vae(dim: str, size: dict[str, Any]) -> Any:
    if dim == "2d":
        from diffusers import AutoencoderKL

        n = len(size["block_out_channels"])
        return AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * n,
                             up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(size["block_out_channels"]),
                             layers_per_block=int(size["layers_per_block"]), latent_channels=int(size["latent_channels"]),
                             norm_num_groups=int(size["norm_num_groups"]), sample_size=int(size.get("sample_size", 64)))
    return _monai().AutoencoderKL(**_monai_vae_kwargs(size))


def _monai() -> Any:
    """monai.networks.nets, or a one-line error saying how to install it (3D models need it)."""
    try:
        from monai.networks import nets as monai_nets
    except ImportError:
        from brainsynth_cli.errors import UserError

        raise UserError('3D models need MONAI >= 1.4 (its generative networks); pip install "brainsynth[diffusion]"') from None
    return monai_nets


def _monai_vae_kwargs(size: dict[str, Any]) -> dict[str, Any]:
    ch = [int(c) for c in size["channels"]]
    return {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "channels": ch,
            "num_res_blocks": int(size["num_res_blocks"]), "latent_channels": int(size["latent_channels"]),
            "norm_num_groups": int(size["norm_num_groups"]),
            "attention_levels": [bool(a) for a in size.get("attention_levels", [False] * len(ch))],
            # MONAI's default: a non-local attention block at the latent grid of the encoder and the
            # decoder; a size may turn it off (its cost grows with the square of the latent voxels)
            **({"with_encoder_nonlocal_attn": bool(size["nonlocal_attention"]),
                "with_decoder_nonlocal_attn": bool(size["nonlocal_attention"])} if "nonlocal_attention" in size else {})}


def build_unet(dim: str, size: dict[str, Any], *, in_channels: int, out_channels: int, cross_attention_dim: int,
               sample_size: int = 16) -> Any:
    if dim == "2d":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(
            sample_size=sample_size, in_channels=in_channels, out_channels=out_channels,
            down_block_types=tuple(size["down_block_types"]), up_block_types=tuple(size["up_block_types"]),
            block_out_channels=tuple(size["block_out_channels"]), layers_per_block=int(size["layers_per_block"]),
            attention_head_dim=int(size["attention_head_dim"]), norm_num_groups=int(size["norm_num_groups"]),
            cross_attention_dim=cross_attention_dim)
    return _monai().DiffusionModelUNet(**_monai_unet_kwargs(size, in_channels, out_channels, cross_attention_dim))


def _monai_unet_kwargs(size: dict[str, Any], in_channels: int, out_channels: int, cross_attention_dim: int) -> dict[str, Any]:
    return {"spatial_dims": 3, "in_channels": int(in_channels), "out_channels": int(out_channels),
            "channels": [int(c) for c in size["channels"]], "attention_levels": [bool(a) for a in size["attention_levels"]],
            "num_res_blocks": int(size["num_res_blocks"]), "num_head_channels": int(size["num_head_channels"]),
            "norm_num_groups": int(size["norm_num_groups"]), "with_conditioning": True,
            "cross_attention_dim": int(cross_attention_dim)}


def use_flash_attention(module: Any, on: bool) -> int:
    """Switch MONAI's attention blocks of ``module`` to torch's fused ``scaled_dot_product_attention``
    (their ``use_flash_attention``; less memory on GPUs) or back; returns how many blocks have the
    switch (0 for diffusers' networks and MONAI versions without it). Not stored with the model:
    trainers and loaders turn it on for CUDA devices."""
    n = 0
    for m in module.modules():
        if hasattr(m, "use_flash_attention") and getattr(m, "save_attn", False) is not True:
            m.use_flash_attention = bool(on)
            n += 1
    return n


def vae_factor(dim: str, size: dict[str, Any]) -> int:
    n = len(size["block_out_channels"] if dim == "2d" else size["channels"])
    return 2 ** (n - 1)


def unet_factor(dim: str, size: dict[str, Any]) -> int:
    n = len(size["block_out_channels"] if dim == "2d" else size["channels"])
    return 2 ** (n - 1)


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------
def encode(vae: Any, dim: str, x: Any) -> tuple[Any, Any]:
    """(mean, std) of the latent posterior."""
    if dim == "2d":
        d = vae.encode(x).latent_dist
        return d.mean, d.std
    mu, sigma = vae.encode(x)
    return mu, sigma


def decode(vae: Any, dim: str, z: Any) -> Any:
    if dim == "2d":
        return vae.decode(z).sample
    return vae.decode(z)


def denoise(unet: Any, dim: str, x: Any, t: Any, context: Any, class_labels: Any = None) -> Any:
    """The UNet's prediction; 3D ``class_labels`` go to MONAI's class-embedding path (added to the time embedding)."""
    import torch

    if dim == "2d":
        return unet(x, t, encoder_hidden_states=context).sample
    if not torch.is_tensor(t) or t.ndim == 0:
        t = torch.full((x.shape[0],), int(t), dtype=torch.long, device=x.device)
    return unet(x, timesteps=t, context=context, class_labels=class_labels)


# ---------------------------------------------------------------------------------------------
# saving and loading
# ---------------------------------------------------------------------------------------------
MONAI_CLASSES = {"vae": "monai.networks.nets.AutoencoderKL", "unet": "monai.networks.nets.DiffusionModelUNet"}


def save(module: Any, dim: str, kind: str, folder: Path, kwargs: dict[str, Any] | None = None,
         extra: dict[str, Any] | None = None) -> None:
    """``save_pretrained`` (2D) or config.json + model.safetensors (3D) into ``folder``; ``extra``:
    more keys of a 3D config.json (what a caller adds to the MONAI network, e.g. ``pooled_text``)."""
    folder = Path(folder)
    if dim == "2d":
        module.save_pretrained(folder, safe_serialization=True)
        return
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": MONAI_CLASSES[kind], "kwargs": kwargs, **(extra or {})}, indent=1), encoding="utf-8")
    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(folder / "model.safetensors"))


def load(dim: str, kind: str, folder: Path, prepare: Callable[[Any, dict[str, Any]], None] | None = None) -> Any:
    """The network saved in ``folder``; for 3D, ``prepare(module, config)`` runs before the weights
    are loaded (it adds what ``save``'s ``extra`` recorded)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise InputError(folder, "is missing (no config.json)", "give a model folder written by `brainsynth train --task generate`")
    if dim == "2d":  # safetensors only (brainsynth_cli.weights)
        if kind == "vae":
            from diffusers import AutoencoderKL

            return AutoencoderKL.from_pretrained(folder, use_safetensors=True)
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel.from_pretrained(folder, use_safetensors=True)
    from safetensors.torch import load_file

    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    m = _monai()
    cls = {"vae": m.AutoencoderKL, "unet": m.DiffusionModelUNet}[kind]
    module = cls(**cfg["kwargs"])
    if prepare is not None:
        prepare(module, cfg)
    module.load_state_dict(load_file(str(folder / "model.safetensors")))
    return module


def monai_kwargs(kind: str, size: dict[str, Any], **extra: Any) -> dict[str, Any]:
    if kind == "vae":
        return _monai_vae_kwargs(size)
    return _monai_unet_kwargs(size, extra["in_channels"], extra["out_channels"], extra["cross_attention_dim"])


def pad_box(shape: tuple[int, ...], multiple: int) -> list[tuple[int, int]]:
    """Centred zero padding of each axis of ``shape`` up to a multiple of ``multiple``."""
    out = []
    for n in shape:
        total = (-n) % multiple
        out.append((total // 2, total - total // 2))
    return out
