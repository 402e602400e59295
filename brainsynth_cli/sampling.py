"""Sampling settings of an edit (steps, scheduler, text and image guidance, the change floor, the
feather and the blender of the edit path, :mod:`brainsynth_cli.edit_path`): what the user gave,
else what the model folder recommends (``brainsynth.json`` ``sampling``, chosen for its preset by
a sweep on validation pairs), else InstructPix2Pix's defaults."""

from __future__ import annotations

from typing import Any

#: InstructPix2Pix's defaults (diffusers' pipeline and BrainEditor), for models that recommend none.
#: The change floor: 0 (every change kept), text guidance from the empty prompt, no feather and the
#: ``poisson`` blender for models that recommend none.
FALLBACK: dict[str, Any] = {"steps": 20, "scheduler": "ddim", "guidance_scale": 7.5, "image_guidance_scale": 1.5, "change_floor": 0.0,
                           "guidance_reference": "empty-prompt", "feather": False,
                           "blender": "poisson"}

#: What the text guidance is measured from: InstructPix2Pix's empty-prompt branch, or the input
#: left unchanged (see :func:`brainsynth_plugins.ip2p.sampling.guided_denoise`).
GUIDANCE_REFERENCES = ("empty-prompt", "input")


def resolve(info: dict[str, Any] | None, **given: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """(settings, source of each): ``given`` values that are not None win, then the model's
    ``sampling``, then :data:`FALLBACK`."""
    recommended = dict((info or {}).get("sampling") or {})
    settings: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, default in FALLBACK.items():
        if given.get(key) is not None:
            settings[key], sources[key] = given[key], "option"
        elif recommended.get(key) is not None:
            settings[key], sources[key] = type(default)(recommended[key]), "model"
        else:
            settings[key], sources[key] = default, "default"
    return settings, sources
