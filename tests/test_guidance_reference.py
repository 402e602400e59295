"""Text guidance measured from the input left unchanged (``--guidance-reference input``) instead of
the empty prompt's branch: the closed-form prediction of "no edit" in each parameterisation, the
guidance scaling the prompt's own change where InstructPix2Pix's formula turns a small requested
change around, one UNet branch per step, and the setting carried from the model folder to edit."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")


def _ddim(prediction_type: str):
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type=prediction_type, clip_sample=False, timestep_spacing="trailing")


@pytest.mark.parametrize("kind", ["sample", "epsilon", "v_prediction"])
def test_identity_prediction_is_what_no_edit_predicts(kind):
    import torch
    from brainsynth_plugins.ip2p.sampling import identity_prediction

    sched = _ddim(kind)
    gen = torch.Generator().manual_seed(0)
    clean, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    for t in (999, 500, 20):
        tt = torch.tensor([t])
        x = sched.add_noise(clean, noise, tt)
        got = identity_prediction(sched, clean, x, tt[0])
        want = {"sample": clean, "epsilon": noise, "v_prediction": sched.get_velocity(clean, noise, tt)}[kind]
        assert torch.allclose(got, want, atol=1e-4), (kind, t, float((got - want).abs().max()))


def test_guidance_from_the_input_scales_the_prompts_change():
    """A model that predicts the clean latent ``ref + 0.5`` for the prompt and ``ref + 1.0`` for the
    empty prompt (the average of its training edits): InstructPix2Pix's formula at g = 3 gives
    ``ref + 1 + 3 (0.5 - 1) = ref - 0.5`` (the requested change turned around); measured from the
    input it gives ``ref + 3 x 0.5``, with one UNet branch per step instead of two."""
    import torch
    from brainsynth_plugins.ip2p.sampling import guided_denoise

    ref = torch.linspace(-1, 1, 2 * 4 * 6 * 6).reshape(2, 4, 6, 6)
    prior = ref / 0.7  # unscaled, as the UNet is conditioned
    text, empty = torch.ones(2, 3, 5), torch.zeros(2, 3, 5)
    calls = []

    def predict(x, cond, t, embeds):
        calls.append(len(x))
        change = torch.where(embeds[:, :1, :1] > 0, torch.tensor(0.5), torch.tensor(1.0))[..., None]
        return cond.repeat(len(x) // len(cond), 1, 1, 1) * 0.7 + change

    results = {}
    for name, reference in (("empty-prompt", None), ("input", ref)):
        calls.clear()
        results[name] = guided_denoise(_ddim("sample"), predict, prior, text, empty, steps=5, guidance_scale=3.0,
                                       image_guidance_scale=1.0, generator=torch.Generator().manual_seed(1), latent_channels=4,
                                       step_kwargs={}, reference=reference)
        assert calls == ([4] * 5 if reference is None else [2] * 5)
    assert torch.allclose(results["empty-prompt"] - ref, torch.full_like(ref, -0.5), atol=1e-4)
    assert torch.allclose(results["input"] - ref, torch.full_like(ref, 1.5), atol=1e-4)
    # at g = 1 both are the prompt's branch alone
    one = [guided_denoise(_ddim("sample"), predict, prior, text, empty, steps=5, guidance_scale=1.0, image_guidance_scale=1.0,
                          generator=torch.Generator().manual_seed(1), latent_channels=4, step_kwargs={}, reference=r)
           for r in (None, ref)]
    assert torch.equal(one[0], one[1]) and torch.allclose(one[0] - ref, torch.full_like(ref, 0.5), atol=1e-4)


def test_the_model_recommends_it_and_edit_uses_it(tmp_path_factory, tmp_path):
    """A tiny model records the preset's reference; `edit` takes it from the model unless
    --guidance-reference is given; the two references give different edits; the sidecar says which."""
    from brainsynth_plugins.ip2p.presets import PRESETS
    from test_edit import edit_cli
    from test_train_pairs import tiny_model

    pairs, model = tiny_model(tmp_path_factory)
    info = json.loads((model / "brainsynth.json").read_text())
    assert info["sampling"]["guidance_reference"] == PRESETS["tiny"]["guidance_reference"] == "input"
    src = next((pairs / "images").glob("*_prior.png"))
    from brainsynth_cli.images import read_png

    outs = {}
    for name, extra in (("model", []), ("empty", ["--guidance-reference", "empty-prompt"])):
        code, _, err = edit_cli(model, src, "--prompt", "moderate ventricle enlargement", "-o", tmp_path / f"{name}.png",
                                "--steps", "3", "--guidance-scale", "3", "--seed", "2", *extra)
        assert code == 0, err
        side = json.loads((tmp_path / f"{name}.json").read_text())
        outs[name] = read_png(tmp_path / f"{name}.png")[0]
        want = ("input", "model") if name == "model" else ("empty-prompt", "option")
        assert (side["sampling"]["guidance_reference"], side["sampling_from"]["guidance_reference"]) == want
    assert not np.array_equal(outs["model"], outs["empty"])
    code, _, err = edit_cli(model, src, "--prompt", "moderate ventricle enlargement", "-o", tmp_path / "bad.png",
                            "--guidance-reference", "average")
    assert code == 2 and "--guidance-reference" in err and not (tmp_path / "bad.png").exists()
