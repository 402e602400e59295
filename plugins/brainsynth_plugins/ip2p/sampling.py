"""InstructPix2Pix sampling: the denoising loop of an edit, with the guidance branches it needs.

The loop is diffusers' ``StableDiffusionInstructPix2PixPipeline`` (same prompt encoding, noise
draw, prior-latent conditioning, scheduler calls and guidance formula), with one difference: the
pipeline always runs the UNet three times per step when guidance is on (prompt + image, image
alone, neither) and combines them as::

    e = e_uncond + g * (e_text - e_image) + s * (e_image - e_uncond)

With image guidance ``s = 1`` the unconditional term cancels (``e = e_image + g * (e_text - e_image)``),
so this loop then runs two branches instead of three: a third less UNet work for the same edit
(equal to the pipeline's up to float rounding). Without guidance (``g <= 1`` or ``s < 1``, the
pipeline's rule) one branch runs.

**Guidance from the input** (``reference``, ``--guidance-reference input``). InstructPix2Pix
measures the text guidance from the empty prompt's branch, which a model learns as the *average*
edit of its training pairs (the empty prompt stands for every prompt at once). Where the prompts
ask for changes of different sizes, ``g > 1`` then pushes a small requested change away from that
average, through zero: a "mild enlargement" comes out as a shrinkage. With a reference, the image
branch is replaced by what a model that leaves the input unchanged predicts, in closed form from
the input's own latent (``e_image = x0`` for ``sample`` prediction; the matching noise or velocity
for ``epsilon`` and ``v_prediction``), so ``g`` scales the prompt's own change instead::

    e = e_ref + g * (e_text - e_ref)

(with ``s != 1`` the unconditional branch still runs: ``e_uncond + g (e_text - e_ref) + s (e_ref -
e_uncond)``). One UNet evaluation per step instead of two. ``g = 1`` is the prompt's branch alone
with either reference.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def encode_prompts(pipe: Any, prompts: list[str], device: Any) -> Any:
    """Text embeddings as the pipeline builds them (padded to the tokenizer's length, truncated)."""
    tok = pipe.tokenizer
    inputs = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    mask = inputs.attention_mask.to(device) if getattr(pipe.text_encoder.config, "use_attention_mask", False) else None
    return pipe.text_encoder(inputs.input_ids.to(device), attention_mask=mask)[0].to(pipe.text_encoder.dtype)


def guidance_branches(guidance_scale: float, image_guidance_scale: float) -> int:
    """How many UNet evaluations a step needs: 1 (no guidance), 2 (image guidance 1) or 3."""
    if not (guidance_scale > 1.0 and image_guidance_scale >= 1.0):  # the pipeline's rule for guidance
        return 1
    return 2 if image_guidance_scale == 1.0 else 3


def guided_denoise(sched: Any, predict: Callable[[Any, Any, Any, Any], Any], prior: Any, text: Any, empty: Any, *,
                   steps: int, guidance_scale: float, image_guidance_scale: float, generator: Any, latent_channels: int,
                   step_kwargs: dict[str, Any], reference: Any = None) -> Any:
    """The loop shared by 2D and 3D models: noise drawn by ``generator`` (diffusers' ``randn_tensor``),
    the branches :func:`guidance_branches` says, the InstructPix2Pix guidance formula, ``sched``'s
    steps. ``predict(x, prior_latents, t, embeddings)`` is the UNet on the branches' batch;
    ``prior`` the unscaled prior latents, ``text``/``empty`` the prompts' and the empty prompt's
    embeddings (one row per prior); ``reference`` (optional) the clean latent, scaled, of leaving the
    input unchanged, from which the text guidance is then measured (see the module's docstring).
    Returns the final latents (scaled, as the UNet works)."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    k = guidance_branches(guidance_scale, image_guidance_scale)
    closed = reference is not None and k > 1  # the image branch in closed form, not run
    if k == 1:
        embeds, cond = text, prior
    elif k == 2:
        embeds, cond = (text, prior) if closed else (torch.cat([text, empty]), torch.cat([prior, prior]))
    elif closed:
        embeds, cond = torch.cat([text, empty]), torch.cat([prior, torch.zeros_like(prior)])
    else:
        embeds, cond = torch.cat([text, empty, empty]), torch.cat([prior, prior, torch.zeros_like(prior)])
    runs = k - 1 if closed else k
    cond = cond.to(embeds.dtype)
    sched.set_timesteps(int(steps), device=prior.device)
    shape = (len(prior), int(latent_channels), *prior.shape[2:])
    latents = randn_tensor(shape, generator=generator, device=prior.device, dtype=embeds.dtype) * sched.init_noise_sigma
    g, s = float(guidance_scale), float(image_guidance_scale)
    for t in sched.timesteps:
        x_in = sched.scale_model_input(latents, t)
        e = predict(torch.cat([x_in] * runs), cond, t, embeds)
        if closed:
            e_image = identity_prediction(sched, reference, x_in, t).to(e.dtype)
            e_text, e_uncond = (e, None) if k == 2 else e.chunk(2)
            e = e_image + g * (e_text - e_image) if k == 2 else e_uncond + g * (e_text - e_image) + s * (e_image - e_uncond)
        elif k == 3:
            e_text, e_image, e_uncond = e.chunk(3)
            e = e_uncond + g * (e_text - e_image) + s * (e_image - e_uncond)
        elif k == 2:
            e_text, e_image = e.chunk(2)
            e = e_image + g * (e_text - e_image)
        latents = sched.step(e, t, latents, **step_kwargs, return_dict=False)[0]
    return latents


def check_reference(guidance_reference: str) -> None:
    """Refuse an unknown ``--guidance-reference`` in one line."""
    from brainsynth_cli.errors import UserError
    from brainsynth_cli.sampling import GUIDANCE_REFERENCES

    if guidance_reference not in GUIDANCE_REFERENCES:
        raise UserError(f"guidance reference {guidance_reference!r}: expected {' or '.join(GUIDANCE_REFERENCES)}")


def check_trained_branches(guidance_scale: float, image_guidance_scale: float, guidance_reference: str,
                           conditioning_dropout: float | None, record: Any) -> None:
    """Refuse, in one line naming ``record`` (the model's ``brainsynth.json``), guidance whose
    branches a model trained from scratch without conditioning dropout never learned: the empty
    prompt's branch (``--guidance-reference empty-prompt`` with text guidance) and the branch without
    the input (image guidance other than 1). Such a model only knows the prompt and the input
    together; ``input`` reference with image guidance 1 runs that branch alone."""
    from brainsynth_cli.errors import InputError

    if conditioning_dropout is None or float(conditioning_dropout) > 0:
        return
    k = guidance_branches(guidance_scale, image_guidance_scale)
    if k == 3 or (k == 2 and guidance_reference != "input"):
        asked = (f"--image-guidance-scale {image_guidance_scale:g}" if k == 3
                 else f"--guidance-reference {guidance_reference}")
        raise InputError(record, f"records a model trained without conditioning dropout (training.conditioning_dropout 0): it never "
                         f"learned the empty prompt or a missing input, which {asked} asks for",
                         "edit with --guidance-reference input --image-guidance-scale 1 (the model's recorded settings)")


def reference_latent(guidance_reference: str, prior: Any, scaling_factor: float, *, change_target: bool = False) -> Any:
    """The ``reference`` of :func:`guided_denoise` for ``--guidance-reference``: None for
    ``empty-prompt``; for ``input`` the clean latent of leaving the input unchanged in the space the
    UNet denoises (the prior latent times the scaling factor, or zeros for a change target)."""
    import torch

    check_reference(guidance_reference)
    if guidance_reference == "empty-prompt":
        return None
    return torch.zeros_like(prior) if change_target else prior * scaling_factor


def identity_prediction(sched: Any, clean: Any, x: Any, t: Any) -> Any:
    """What a model that leaves the input unchanged predicts at timestep ``t`` for the noisy model
    input ``x``, in ``sched``'s prediction type: ``clean`` itself (``sample``), the noise that
    ``x`` carries over ``clean`` (``epsilon``), or the velocity (``v_prediction``)."""
    kind = sched.config.prediction_type
    if kind == "sample":
        return clean
    a = sched.alphas_cumprod.to(x.device)[round(float(t))].to(x.dtype)
    eps = (x - a.sqrt() * clean) / (1 - a).sqrt()
    if kind == "epsilon":
        return eps
    return a.sqrt() * eps - (1 - a).sqrt() * clean


def denoise(pipe: Any, image_latents: Any, prompts: list[str], *, steps: int, guidance_scale: float,
            image_guidance_scale: float, generator: Any, reference: Any = None) -> Any:
    """Denoise a target latent for each prior latent in ``image_latents`` (the unscaled posterior
    mode, :func:`brainsynth_plugins.ip2p.model.image_conditioning`) and prompt with a 2D model's
    diffusers pipeline parts; returns the final latents in the scaled space the UNet works in (the
    pipeline's ``output_type="latent"``)."""
    import torch

    device = image_latents.device
    text = encode_prompts(pipe, prompts, device)
    empty = encode_prompts(pipe, [""] * len(prompts), device) if guidance_branches(guidance_scale, image_guidance_scale) > 1 else None

    def predict(x: Any, cond: Any, t: Any, embeds: Any) -> Any:
        return pipe.unet(torch.cat([x, cond], dim=1), t, encoder_hidden_states=embeds, return_dict=False)[0]

    return guided_denoise(pipe.scheduler, predict, image_latents, text, empty, steps=steps, guidance_scale=guidance_scale,
                          image_guidance_scale=image_guidance_scale, generator=generator,
                          latent_channels=int(pipe.vae.config.latent_channels),
                          step_kwargs=pipe.prepare_extra_step_kwargs(generator, 0.0), reference=reference)
