"""Text- and covariate-conditioned latent diffusion for brain MRI (generator ``ldm``; command ``generate``).

Brain LDM (Pinaya et al.): an AutoencoderKL, then a UNet on its latents conditioned on age, sex,
ventricle volume and brain volume (min-max scaled; concatenation plus cross-attention), sampled
with DDIM in 50 steps. DALL-E Brain: the same UNet with cross-attention on a text encoder's
embeddings of template captions. 2D with diffusers, 3D with MONAI's generative networks.
Only specs and command registration here; torch, diffusers and monai load when used (monai only
for 3D models, so it is not a requirement of the spec).
"""

from __future__ import annotations

from brainsynth_cli.hookspecs import hookimpl
from brainsynth_cli.specs import Spec, module


@hookimpl
def register_generators(register) -> None:
    register(Spec(
        "ldm", "brainsynth_plugins.ldm.generator:LatentDiffusion",
        help="latent diffusion generating brain MRI from covariates (age, sex, volumes) and/or text, 2D (diffusers) or 3D (MONAI)",
        requires=(module("torch", extra="diffusion"), module("diffusers", extra="diffusion"),
                  module("transformers", extra="diffusion"), module("accelerate", extra="diffusion"),
                  module("safetensors", extra="diffusion")),
    ))


@hookimpl
def register_commands(app) -> None:
    from brainsynth_plugins.ldm.command import register

    register(app)
