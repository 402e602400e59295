"""InstructPix2Pix latent diffusion for brain MRI (generator ``instruct-pix2pix``).

Stage 1 trains (or fine-tunes) an AutoencoderKL on the pair images; stage 2 trains an 8-channel
UNet2DConditionModel (noisy target latent + prior latent, cross-attention on the prompt). Built
on diffusers and accelerate; the model folder is a diffusers pipeline folder plus
``brainsynth.json``. Only specs here: torch and diffusers are imported when the generator is used.
"""

from __future__ import annotations

from brainsynth_cli.hookspecs import hookimpl
from brainsynth_cli.specs import Spec, module


@hookimpl
def register_generators(register) -> None:
    register(Spec(
        "instruct-pix2pix", "brainsynth_plugins.ip2p.generator:InstructPix2Pix",
        help="InstructPix2Pix latent diffusion (AutoencoderKL + 8-channel UNet, diffusers/accelerate): prior + prompt -> target",
        requires=(module("torch", extra="diffusion"), module("diffusers", extra="diffusion"),
                  module("transformers", extra="diffusion"), module("accelerate", extra="diffusion"),
                  module("safetensors", extra="diffusion")),
    ))
