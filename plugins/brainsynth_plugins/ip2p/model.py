"""A trained model folder: checking it, loading it, editing slices with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from brainsynth_cli.errors import InputError, UserError
from brainsynth_cli.interfaces import Progress
from brainsynth_cli.weights import SAFE_LOAD, refuse_pickled_weights
from brainsynth_plugins.training_core.runtime import deterministic_on_cpu

#: What a model folder must hold (diffusers pipeline layout + brainsynth.json).
REQUIRED = ("brainsynth.json", "model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json",
            "scheduler/scheduler_config.json", "tokenizer")
WEIGHTS = {"unet": "diffusion_pytorch_model.safetensors", "vae": "diffusion_pytorch_model.safetensors",
           "text_encoder": "model.safetensors"}

SCHEDULERS = ("ddim", "dpm++", "euler-a")


def read_model_folder(model_dir: Path, required: tuple[str, ...], command: str) -> tuple[Path, dict[str, Any]]:
    """The checks every model folder gets: a folder, its ``required`` parts, no pickled weights,
    a readable ``brainsynth.json`` (returned with the path). ``command`` is what writes such a folder."""
    d = Path(model_dir)
    if not d.is_dir():
        raise InputError(d, "is not a model folder", f"give the folder written by `{command} -o MODEL`")
    for part in required:
        if not (d / part).exists():
            raise InputError(d, f"is missing {part}", f"give a complete model folder written by `{command}` (re-run or --resume the training)")
    refuse_pickled_weights(d, strict=True)  # brainsynth never writes pickles: one here was put there
    try:
        return d, json.loads((d / "brainsynth.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(d / "brainsynth.json", f"is not valid JSON ({exc})", "re-run the training") from None


def check_model_dir(model_dir: Path) -> dict[str, Any]:
    """Refuse a folder that is not a complete brainsynth model; returns its brainsynth.json."""
    d, info = read_model_folder(model_dir, REQUIRED, "brainsynth train")
    for sub, name in WEIGHTS.items():
        if not any((d / sub).glob("*.safetensors")):
            raise InputError(d, f"is missing {sub}/{name}", "give a complete model folder written by `brainsynth train`")
    if info.get("format") != "brainsynth-model" or info.get("generator") != "instruct-pix2pix":
        raise InputError(d / "brainsynth.json", "is not an instruct-pix2pix brainsynth model", "give a model trained with --generator instruct-pix2pix")
    return info


def image_conditioning(vae: Any, x: Any) -> Any:
    """The prior latent the UNet is conditioned on, from images ``x`` in [-1, 1].

    The mode of the VAE's posterior, *not* multiplied by the scaling factor: what diffusers'
    ``StableDiffusionInstructPix2PixPipeline.prepare_image_latents`` feeds the UNet at inference
    and what diffusers' InstructPix2Pix training script trains with. Training and editing both
    call this (a model trained on scaled prior latents sees them 1/scaling_factor times larger
    at inference).
    """
    return vae.encode(x).latent_dist.mode()


def residual_edit(pipe: Any, x: Any, prompts: list[str], *, steps: int, guidance_scale: float, image_guidance_scale: float,
                  generator: Any, residual: bool = True, latent_target: str = "image",
                  guidance_reference: str = "empty-prompt") -> Any:
    """Edit a batch ``x`` ([0, 1], N x C x H x W) with an InstructPix2Pix model; returns N x H x W.

    The sampler (:func:`brainsynth_plugins.ip2p.sampling.denoise`, diffusers' InstructPix2Pix
    pipeline's loop) denoises the target latent (``latent_target="image"``, InstructPix2Pix) or the
    change of the latent, ``(z_target - z_prior) * scaling_factor`` (``"change"``: the UNet then
    models only what the prompt changes; the edited latent is ``z_prior + change / scaling_factor``).
    With ``residual`` the edit is decoded as a change and added to the input:
    ``x + (D(z_edit) - D(E(x))) / 2`` (the VAE works on [-1, 1]), so what the autoencoder cannot
    reconstruct is kept from the input instead of being re-drawn; the result is not clipped.
    Without it, the decoded image ``D(z_edit)`` is returned, clipped to [0, 1].
    ``guidance_reference="input"`` measures the text guidance from the input left unchanged (its
    own latent, or no change for a change target) instead of the empty prompt's branch
    (:func:`brainsynth_plugins.ip2p.sampling.guided_denoise`).
    """
    import torch

    from brainsynth_plugins.ip2p.sampling import denoise, reference_latent

    if latent_target not in ("image", "change"):
        raise UserError(f"latent_target {latent_target!r}: expected image or change")
    vae = pipe.vae
    with torch.no_grad():
        prior = image_conditioning(vae, (x * 2 - 1).to(vae.dtype))
        ref = reference_latent(guidance_reference, prior, vae.config.scaling_factor, change_target=latent_target == "change")
        out = denoise(pipe, prior, prompts, steps=steps, guidance_scale=guidance_scale,
                      image_guidance_scale=image_guidance_scale, generator=generator, reference=ref)
        z = out.to(vae.dtype) / vae.config.scaling_factor
        if latent_target == "change":
            z = prior + z
        edited = vae.decode(z).sample.float()
        if not residual:
            return ((edited + 1) / 2).clamp(0, 1).mean(1)
        base = vae.decode(prior).sample.float()
    return x.float().mean(1) + (edited - base).mean(1) / 2


def scheduler_for(name: str, config: Any) -> Any:
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    if name == "euler-a":
        if config.get("prediction_type") == "sample":
            raise UserError("--scheduler euler-a cannot run a model trained with prediction_type sample; use ddim or dpm++")
        return EulerAncestralDiscreteScheduler.from_config(config)
    raise UserError(f"unknown scheduler {name!r}; available: {', '.join(SCHEDULERS)}")


class IP2PModel:
    """A loaded InstructPix2Pix model. ``edit`` takes [0, 1] slices at the model's resolution."""

    def __init__(self, model_dir: Path, device: str = "auto") -> None:
        from brainsynth_cli.structures import rules_from_text
        from brainsynth_plugins.training_core.runtime import quiet, resolve_device

        self.path = Path(model_dir)
        self.info = check_model_dir(self.path)
        self.device = resolve_device(device)
        self.resolution = int(self.info["resolution"])
        self.channels = int(self.info["channels"])
        self.prompts = list(self.info.get("prompts", []))
        self.dims = ("2d",)  # edits axial slices at ``resolution``
        self.latent_target = str(self.info.get("latent_target", "image"))
        self.rules = rules_from_text(self.info["rules"], f"{self.path / 'brainsynth.json'} rules") if self.info.get("rules") else None
        quiet()
        from diffusers import StableDiffusionInstructPix2PixPipeline

        try:
            self.pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(  # safetensors only, no remote code
                self.path, safety_checker=None, feature_extractor=None, requires_safety_checker=False, local_files_only=True,
                **SAFE_LOAD)
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()
            raise InputError(self.path, f"cannot be loaded as a diffusers pipeline ({first[0][:160] if first else type(exc).__name__})",
                             "re-run the training") from None
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self._scheduler_config = self.pipe.scheduler.config

    def edit(self, images: list[Any], prompt: str, *, steps: int = 20, scheduler: str = "ddim", guidance_scale: float = 7.5,
             image_guidance_scale: float = 1.5, seed: int = 0, batch_size: int = 4, residual: bool = True,
             guidance_reference: str = "empty-prompt", progress: Progress | None = None, **_: Any) -> list[Any]:
        """Edit ``images`` (2D float arrays in [0, 1], ``resolution`` square) by ``prompt``.

        With ``residual`` (the default) each result is the input plus the decoded change (see
        :func:`residual_edit`; values may leave [0, 1] slightly); without it, the decoded image.
        One generator seeded with ``seed`` draws the noise of all batches in order: the same
        seed, settings and batch size give the same bytes.
        """
        import numpy as np
        import torch

        for a in images:
            if np.asarray(a).shape != (self.resolution, self.resolution):
                raise ValueError(f"edit needs {self.resolution}x{self.resolution} slices, got {np.asarray(a).shape}")
        self.pipe.scheduler = scheduler_for(scheduler, self._scheduler_config)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        out: list[Any] = []
        with deterministic_on_cpu(self.device):
            for i in range(0, len(images), max(1, batch_size)):
                chunk = images[i : i + max(1, batch_size)]
                x = torch.from_numpy(np.stack([np.asarray(a, dtype=np.float32) for a in chunk]))[:, None]
                if self.channels == 3:
                    x = x.repeat(1, 3, 1, 1)
                with torch.no_grad():
                    y = residual_edit(self.pipe, x.to(self.device), [prompt] * len(chunk), steps=steps, guidance_scale=guidance_scale,
                                      image_guidance_scale=image_guidance_scale, generator=gen, residual=residual,
                                      latent_target=self.latent_target, guidance_reference=guidance_reference)
                out.extend(y.cpu().numpy().astype(np.float32))
                if progress is not None:
                    progress(len(out), len(images), "slices")
        return out
