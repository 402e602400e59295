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
"""

from __future__ import annotations

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


def denoise(pipe: Any, image_latents: Any, prompts: list[str], *, steps: int, guidance_scale: float,
            image_guidance_scale: float, generator: Any) -> Any:
    """Denoise a target latent for each prior latent in ``image_latents`` (the unscaled posterior
    mode, :func:`brainsynth_plugins.ip2p.model.image_conditioning`) and prompt; returns the final
    latents in the scaled space the UNet works in (the pipeline's ``output_type="latent"``)."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    device = image_latents.device
    n = len(prompts)
    text = encode_prompts(pipe, prompts, device)
    k = guidance_branches(guidance_scale, image_guidance_scale)
    if k == 1:
        embeds, cond = text, image_latents
    else:
        empty = encode_prompts(pipe, [""] * n, device)
        if k == 2:
            embeds, cond = torch.cat([text, empty]), torch.cat([image_latents, image_latents])
        else:
            embeds = torch.cat([text, empty, empty])
            cond = torch.cat([image_latents, image_latents, torch.zeros_like(image_latents)])
    cond = cond.to(embeds.dtype)
    sched = pipe.scheduler
    sched.set_timesteps(int(steps), device=device)
    shape = (n, int(pipe.vae.config.latent_channels), *image_latents.shape[-2:])
    latents = randn_tensor(shape, generator=generator, device=device, dtype=embeds.dtype) * sched.init_noise_sigma
    extra = pipe.prepare_extra_step_kwargs(generator, 0.0)
    g, s = float(guidance_scale), float(image_guidance_scale)
    for t in sched.timesteps:
        x = sched.scale_model_input(torch.cat([latents] * k), t)
        e = pipe.unet(torch.cat([x, cond], dim=1), t, encoder_hidden_states=embeds, return_dict=False)[0]
        if k == 3:
            e_text, e_image, e_uncond = e.chunk(3)
            e = e_uncond + g * (e_text - e_image) + s * (e_image - e_uncond)
        elif k == 2:
            e_text, e_image = e.chunk(2)
            e = e_image + g * (e_text - e_image)
        latents = sched.step(e, t, latents, **extra, return_dict=False)[0]
    return latents
