"""A trained 3D InstructPix2Pix model folder: checking it, loading it, editing whole volumes.

Folder layout (written by :mod:`.volume_training`)::

    MODEL/brainsynth.json     dims ["3d"], the grid, latent, prompts and intervals, rules, sampling defaults
    MODEL/vae/                MONAI AutoencoderKL: config.json (constructor arguments) + model.safetensors
    MODEL/unet/               MONAI DiffusionModelUNet: config.json + model.safetensors
    MODEL/scheduler/          the training noise schedule (diffusers DDPMScheduler config)
    MODEL/text_encoder/       the text encoder training used (transformers: config.json + model.safetensors)
    MODEL/tokenizer/          its tokenizer

A folder written before the text encoder was copied into it has no ``text_encoder/`` and
``tokenizer/``: its encoder is the named plugin's (``text_encoder`` in ``brainsynth.json``), loaded offline.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from brainsynth_cli.errors import InputError
from brainsynth_cli.interfaces import Progress
from brainsynth_plugins.ip2p import volume_nets as vn
from brainsynth_plugins.training_core.runtime import deterministic_on_cpu

REQUIRED = ("brainsynth.json", "vae/config.json", "vae/model.safetensors", "unet/config.json", "unet/model.safetensors",
            "scheduler/scheduler_config.json")


def is_volume_model(model_dir: Path) -> bool:
    """Whether ``brainsynth.json`` in ``model_dir`` says the model edits 3D volumes (unreadable: no)."""
    try:
        info = json.loads((Path(model_dir) / "brainsynth.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and "3d" in (info.get("dims") or [])


def check_volume_model_dir(model_dir: Path) -> dict[str, Any]:
    """Refuse a folder that is not a complete 3D instruct-pix2pix model; returns its brainsynth.json."""
    from brainsynth_plugins.ip2p.model import read_model_folder

    d, info = read_model_folder(model_dir, REQUIRED, "brainsynth train --dim 3d")
    if info.get("format") != "brainsynth-model" or info.get("generator") != "instruct-pix2pix" or "3d" not in (info.get("dims") or []):
        raise InputError(d / "brainsynth.json", "is not a 3D instruct-pix2pix brainsynth model", "give a model trained with --dim 3d")
    return info


def denoise_volume(unet: Any, sched: Any, prior: Any, text: Any, empty: Any, *, steps: int, guidance_scale: float,
                   image_guidance_scale: float, generator: Any, latent_channels: int, reference: Any = None) -> Any:
    """The InstructPix2Pix denoising loop (:func:`brainsynth_plugins.ip2p.sampling.guided_denoise`, the
    2D models' loop: the same noise draw, branches and guidance formula) for 3D prior latents
    ``prior`` (B, C, D, H, W, unscaled posterior modes) and text tokens ``text`` (B, T, H); returns
    the scaled latents. ``reference``: the clean latent the text guidance is measured from instead
    of the empty prompt's branch (the input's own, scaled), or None."""
    from brainsynth_plugins.ip2p.sampling import guided_denoise

    def predict(x: Any, cond: Any, t: Any, embeds: Any) -> Any:
        return vn.unet_forward(unet, x, cond, t, embeds)

    return guided_denoise(sched, predict, prior, text, empty, steps=steps, guidance_scale=guidance_scale,
                          image_guidance_scale=image_guidance_scale, generator=generator, latent_channels=latent_channels,
                          step_kwargs={"generator": generator}, reference=reference)


class VolumeIP2PModel:
    """A loaded 3D InstructPix2Pix model. ``edit`` takes whole canonical volumes in [0, 1]."""

    dims = ("3d",)
    resolution = None

    def __init__(self, model_dir: Path, device: str = "auto", text: tuple[Any, Any] | None = None) -> None:
        from brainsynth_plugins.ip2p.volume_text import load_text_encoder
        from brainsynth_plugins.training_core.runtime import quiet, resolve_device

        self.path = Path(model_dir)
        self.info = check_volume_model_dir(self.path)
        self.device = resolve_device(device)
        self.prompts = list(self.info.get("prompts", []))
        grid = self.info["grid"]
        self.grid = tuple(int(g) for g in grid["shape"])
        self.voxel_mm = float(grid["voxel_mm"])
        self.latent_channels = int(self.info["latent"]["channels"])
        self.scaling_factor = float(self.info["latent"]["scaling_factor"])
        quiet()
        try:
            self.vae = vn.nets.load(vn.DIM, "vae", self.path / "vae").eval().to(self.device)
            self.unet = vn.load_unet(self.path / "unet").eval().to(self.device)
            for net in (self.vae, self.unet):  # MONAI's fused attention on GPUs
                vn.nets.use_flash_attention(net, str(self.device).startswith("cuda"))
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(self.path, f"cannot be loaded as a 3D model ({first[:160]})", "re-run the training") from None
        self.tokenizer, self.text_model = text or load_text_encoder(self.path, self.info["text_encoder"])  # text: the trainer's, already loaded
        self._scheduler_config = json.loads((self.path / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))

    def conditioning(self, x: Any) -> Any:
        """The prior latent of model-grid volumes ``x`` in [-1, 1], as training builds it."""
        return vn.volume_conditioning(self.vae, x)

    def check_sampling(self, *, guidance_scale: float, image_guidance_scale: float, guidance_reference: str) -> None:
        """Refuse guidance this model never learned (one line naming its ``brainsynth.json``; see
        :func:`brainsynth_plugins.ip2p.sampling.check_trained_branches`): callers that write files
        call it before they start."""
        from brainsynth_plugins.ip2p.sampling import check_trained_branches

        check_trained_branches(guidance_scale, image_guidance_scale, guidance_reference,
                               (self.info.get("training") or {}).get("conditioning_dropout"), self.path / "brainsynth.json")

    def edit(self, volumes: list[Any], prompt: str, *, labels: list[Any] | None = None, spacing: Any = None, steps: int = 20,
             scheduler: str = "ddim", guidance_scale: float = 7.5, image_guidance_scale: float = 1.5, seed: int = 0,
             residual: bool = True, guidance_reference: str = "empty-prompt", progress: Progress | None = None,
             **_: Any) -> list[Any]:
        """Edit whole canonical volumes (float arrays in [0, 1], voxel size ``spacing``) by ``prompt``.

        Each volume is resampled onto the model's grid (its box centred on its labels), edited,
        and the change brought back onto the volume's grid: with ``residual`` (the default)
        ``x + (D(z_edit) - D(E(x))) / 2`` (the VAE works on [-1, 1]), without it the decoded
        volume's difference from the model's view of the input. The result is on the input's grid
        (unclipped); voxels outside the model's box are unchanged. One CPU generator seeded with
        ``seed`` draws all noise in order: the same seed gives the same bytes. ``guidance_reference``
        as for 2D models (:func:`brainsynth_plugins.ip2p.model.residual_edit`).
        """
        import numpy as np
        import torch

        from brainsynth_plugins.ip2p.model import scheduler_for
        from brainsynth_plugins.ip2p.sampling import check_reference, reference_latent

        check_reference(guidance_reference)  # before any work
        self.check_sampling(guidance_scale=guidance_scale, image_guidance_scale=image_guidance_scale,
                            guidance_reference=guidance_reference)
        sched = scheduler_for(scheduler, self._scheduler_config)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        out: list[Any] = []
        with deterministic_on_cpu(self.device), torch.no_grad():
            emb = vn.embed_prompts(self.tokenizer, self.text_model, [prompt, ""], self.device)
            for i, vol in enumerate(volumes):
                vol = np.asarray(vol, np.float32)
                if vol.ndim != 3:
                    raise ValueError(f"a 3D model edits volumes, got an array of shape {vol.shape}")
                lab = labels[i] if labels is not None else None
                box, seen = vn.model_view(vol, lab, spacing if spacing is not None else (1.0, 1.0, 1.0), self.grid, self.voxel_mm)
                x = torch.from_numpy(seen)[None, None].to(self.device) * 2 - 1
                prior = self.conditioning(x)
                z = denoise_volume(self.unet, sched, prior, emb[:1], emb[1:], steps=steps, guidance_scale=guidance_scale,
                                   image_guidance_scale=image_guidance_scale, generator=gen,
                                   latent_channels=self.latent_channels,
                                   reference=reference_latent(guidance_reference, prior, self.scaling_factor)) / self.scaling_factor
                edited = vn.decode(self.vae, z).float()
                if residual:
                    change = ((edited - vn.decode(self.vae, prior).float()) / 2)[0, 0].cpu().numpy()
                else:
                    change = ((edited + 1) / 2).clamp(0, 1)[0, 0].cpu().numpy() - seen
                out.append(vol + box.to_volume(change))
                if progress is not None:
                    progress(i + 1, len(volumes), "volumes")
        return out
