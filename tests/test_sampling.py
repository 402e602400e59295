"""Sampling settings: the option, else the model folder's recommendation, else InstructPix2Pix's defaults."""

from __future__ import annotations

from brainsynth_cli.sampling import FALLBACK, resolve


def test_options_win_then_the_model_then_the_defaults() -> None:
    info = {"sampling": {"steps": 10, "guidance_scale": 3.0, "image_guidance_scale": 1.0, "change_floor": 0.005}}
    settings, sources = resolve(info, steps=None, scheduler=None, guidance_scale=12.0, image_guidance_scale=None, change_floor=None)
    assert settings == {"steps": 10, "scheduler": "ddim", "guidance_scale": 12.0, "image_guidance_scale": 1.0, "change_floor": 0.005,
                        "guidance_reference": "empty-prompt", "feather": False, "blender": "poisson"}
    assert sources == {"steps": "model", "scheduler": "default", "guidance_scale": "option", "image_guidance_scale": "model",
                       "change_floor": "model", "guidance_reference": "default", "feather": "default", "blender": "default"}
    settings, sources = resolve({"sampling": {"blender": "warp"}}, blender=None)
    assert settings["blender"] == "warp" and sources["blender"] == "model"
    settings, sources = resolve({"sampling": {"blender": "warp"}}, blender="poisson")
    assert settings["blender"] == "poisson" and sources["blender"] == "option"
    settings, sources = resolve({"sampling": {"feather": True}}, feather=None)
    assert settings["feather"] is True and sources["feather"] == "model"
    settings, sources = resolve({"sampling": {"feather": True}}, feather=False)  # --no-feather
    assert settings["feather"] is False and sources["feather"] == "option"
    settings, sources = resolve(info, change_floor=0.0)  # 0 given is an option, not "missing"
    assert settings["change_floor"] == 0.0 and sources["change_floor"] == "option"


def test_models_without_a_recommendation_get_the_defaults() -> None:
    settings, sources = resolve({}, steps=None)
    assert settings == FALLBACK and set(sources.values()) == {"default"}
    settings, _ = resolve(None, steps=7)
    assert settings["steps"] == 7 and isinstance(settings["steps"], int)
