"""`brainsynth train --task generate`, `brainsynth generate` and `evaluate --task generate` (generator ldm).

Tiny 2D (32x32 slices, covariates + captions) and 3D (8 mm volumes, covariates) models trained for a
few steps on a simulated 4-subject cohort: the samples are not good brains, but the plumbing,
grids, determinism, covariate ranges and the conditioning report are checked on real results.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """2 shared cores: one torch thread avoids oversubscription stalls."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from brainsynth_plugins.simulate.cohort import simulate_cohort

    root = tmp_path_factory.mktemp("gen") / "cohort"
    simulate_cohort(root, subjects=4, sessions=2, resolution=4.0, seed=0)
    return root


def _sessions(cohort: Path) -> list[dict[str, str]]:
    rows = []
    for f in sorted(cohort.glob("sub-*/sub-*_sessions.tsv")):
        with open(f, newline="") as fh:
            rows += list(csv.DictReader(fh, delimiter="\t"))
    return rows


def _run(*args):
    from brainsynth_cli.main import run

    return run([str(a) for a in args])


@pytest.fixture(scope="module")
def model2d(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "model2d"
    code = _run("train", cohort, "--task", "generate", "--dim", "2d", "--condition", "both", "--resolution", 32,
                "--set", "vae_steps=15", "--set", "unet_steps=25", "--set", "validation_steps=4", "--batch-size", 8,
                "--device", "cpu", "-o", out)
    assert code == 0
    return out


@pytest.fixture(scope="module")
def model3d(cohort, tmp_path_factory):
    from brainsynth_cli.interfaces import TrainOptions
    from brainsynth_cli.plugin_manager import get_manager

    out = tmp_path_factory.mktemp("gen") / "model3d"
    gen = get_manager().registry("generator").create("ldm")
    gen.train(TrainOptions(data=cohort, output=out, seed=0, device="cpu",
                           extra={"dim": "3d", "condition": "covariates", "vae_steps": 10, "unet_steps": 15,
                                  "batch_size": 4, "set": {"voxel_mm": "8", "validation_steps": "4"}}))
    return out


def test_model_folder_records_covariate_ranges(model2d, cohort):
    info = json.loads((model2d / "brainsynth.json").read_text())
    assert info["generator"] == "ldm" and info["dim"] == "2d" and info["condition"] == "both"
    rows = _sessions(cohort)
    vent = [float(r["ventricle_mm3"]) for r in rows]
    brain = [float(r["brain_mm3"]) for r in rows]
    ages = [float(r["age"]) for r in rows]
    ranges = info["covariates"]["ranges"]
    assert ranges["ventricle_volume"] == pytest.approx([min(vent), max(vent)], rel=1e-6)
    assert ranges["brain_volume"] == pytest.approx([min(brain), max(brain)], rel=1e-6)
    assert ranges["age"] == pytest.approx([min(ages), max(ages)], abs=1e-3)
    assert info["text_encoder"]["name"] == "minilm" and info["conditioning"]["cross_attention_dim"] == 384
    assert info["conditioning"]["concatenated_channels"] == 4
    assert info["image"]["slice_convention"] == "brainsynth_cli.slices v1"  # canonical slices of the dataset
    assert (model2d / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (model2d / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert not (model2d / "checkpoints").exists()


def test_generate_2d_png_csv_and_same_seed_same_bytes(model2d, tmp_path, capsys):
    from brainsynth_cli.images import read_png

    info = json.loads((model2d / "brainsynth.json").read_text())
    hi = info["covariates"]["ranges"]["ventricle_volume"][1]
    want = round(hi * 1.5)
    args = [model2d, "-n", 3, "--steps", 8, "--seed", 5, "--age", 70, "--sex", "F", "--ventricle-volume", want, "--device", "cpu"]
    capsys.readouterr()
    assert _run("generate", *args, "-o", tmp_path / "a") == 0
    err = capsys.readouterr().err
    assert "outside the trained range" in err
    files = sorted((tmp_path / "a").glob("sample-*.png"))
    assert len(files) == 3
    for f in files:
        arr, bits = read_png(f)
        assert bits == 16 and arr.shape == (32, 32) and arr.max() > arr.min()
    with open(tmp_path / "a" / "samples.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["seed"]) for r in rows] == [5, 6, 7]
    assert all(float(r["ventricle_volume_mm3"]) == want and r["sex"] == "F" and float(r["age"]) == 70 for r in rows)
    assert all("ventricle" in r["prompt"] and f"{want:,}" in r["prompt"] for r in rows)  # text models get the caption
    assert all("outside the trained range" in r["warnings"] for r in rows)
    assert (tmp_path / "a" / "samples.png").is_file()
    # same seed, same bytes; another seed, other images
    assert _run("generate", *args, "-o", tmp_path / "b") == 0
    assert [f.read_bytes() for f in files] == [(tmp_path / "b" / f.name).read_bytes() for f in files]
    args[args.index("--seed") + 1] = 6
    assert _run("generate", *args, "-o", tmp_path / "c") == 0
    assert files[0].read_bytes() != (tmp_path / "c" / "sample-0000.png").read_bytes()


def test_generate_prompt_sets_covariates(model2d):
    from brainsynth_plugins.ldm.model import LDMModel

    ldm = LDMModel(model2d, "cpu")
    c = ldm.condition("Axial T1-weighted brain MRI of a 64-year-old male subject. Measured volumes: ventricle volume 12,345 mm3.")
    assert c.covariates["ventricle_volume"] == 12345 and c.covariates["age"] == 64 and c.sex == "M"
    assert c.sources["ventricle_volume"] == "prompt" and c.sources["brain_volume"] == "median"
    c = ldm.condition(None, ventricle_volume=20000, sex="M")
    assert c.sources["ventricle_volume"] == "option" and "20,000" in c.prompt


def test_generate_errors(model2d, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")  # a usage error's message on one row of its box
    capsys.readouterr()
    assert _run("generate", tmp_path, "-o", tmp_path / "x") == 2
    assert "brainsynth.json" in capsys.readouterr().err
    assert _run("generate", model2d, "--sex", "X", "--steps", 2, "--device", "cpu", "-o", tmp_path / "y") == 2
    assert "'X' is not one of 'f', 'm'" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    (tmp_path / "z").mkdir()
    (tmp_path / "z" / "keep.txt").write_text("x")
    assert _run("generate", model2d, "--steps", 2, "-o", tmp_path / "z") == 2
    assert "not empty" in capsys.readouterr().err
    assert _run("generate", model2d, "--scheduler", "plms", "--steps", 2, "--device", "cpu", "-o", tmp_path / "w") == 2
    assert "'plms' is not one of 'ddim', 'ddpm', 'dpm++', 'euler-a'" in capsys.readouterr().err


def test_train_generate_needs_labels(cohort, tmp_path, capsys):
    manifest = tmp_path / "m.csv"
    lines = ["subject,session,image,age,sex"]
    for f in sorted(cohort.glob("sub-*/ses-*/anat/*_T1w.nii.gz")):
        sub, ses = f.name.split("_")[:2]
        lines.append(f"{sub},{ses},{f},70,F")
    manifest.write_text("\n".join(lines) + "\n")
    capsys.readouterr()
    assert _run("train", manifest, "--task", "generate", "--condition", "covariates", "-o", tmp_path / "m") == 2
    assert "--labels" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_generate_3d_on_template_grid(model3d, tmp_path):
    from brainsynth_plugins.simulate.template import reference

    from brainsynth_cli.images import read_volume

    info = json.loads((model3d / "brainsynth.json").read_text())
    assert (model3d / "unet" / "model.safetensors").is_file()
    assert json.loads((model3d / "unet" / "config.json").read_text())["_class_name"] == "monai.networks.nets.DiffusionModelUNet"
    ref, _ = reference(8.0)
    args = ["generate", model3d, "-n", 2, "--steps", 6, "--seed", 3, "--brain-volume", info["covariates"]["medians"]["brain_volume"],
            "--device", "cpu"]
    assert _run(*args, "-o", tmp_path / "a") == 0
    assert _run(*args, "-o", tmp_path / "b") == 0
    for name in ("sample-0000.nii.gz", "sample-0001.nii.gz"):
        a, b = read_volume(tmp_path / "a" / name), read_volume(tmp_path / "b" / name)
        assert a.shape == ref.shape and np.allclose(a.affine, ref.affine)
        assert np.isfinite(a.data).all() and a.data.min() >= 0 and a.data.max() <= 1 and a.data.std() > 0
        assert np.array_equal(a.data, b.data)
    x0 = read_volume(tmp_path / "a" / "sample-0000.nii.gz").data
    x1 = read_volume(tmp_path / "a" / "sample-0001.nii.gz").data
    assert not np.array_equal(x0, x1)


def test_evaluate_generation_2d_cli(model2d, tmp_path, capsys):
    capsys.readouterr()
    code = _run("evaluate", model2d, "--task", "generate", "--grid", 3, "--per-value", 2, "--steps", 8, "--device", "cpu",
                "-o", tmp_path / "ev")
    assert code == 0
    assert "Pearson r" in capsys.readouterr().out
    s = json.loads((tmp_path / "ev" / "summary.json").read_text())
    c = s["conditioning"]
    with open(tmp_path / "ev" / "conditioning.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    req = [float(r["requested_ventricle_volume_mm3"]) for r in rows]
    measured = [float(r["measured"]) for r in rows]
    assert c["samples"] == 6 and all(m >= 0 for m in measured)
    if np.std(measured) > 0:  # r of the CSV's columns (undefined when a tiny model's samples all measure the same)
        assert c["pearson_r"] == pytest.approx(np.corrcoef(req, measured)[0, 1], abs=1e-3)
    else:
        assert np.isnan(c["pearson_r"])
    # the 2D measurement itself tracks the true ventricle volume on the real slices
    assert s["measurement_check"]["pearson_r_truth_vs_measured"] > 0.5
    d = s["diversity"]
    assert 0 < d["ms_ssim_samples"] <= 1 and 0 < d["ms_ssim_real"] <= 1 and d["real_pairs"] > 0
    lo, hi = c["requested_range"]
    assert len(rows) == 6 and float(rows[0]["requested_ventricle_volume_mm3"]) == pytest.approx(lo, rel=1e-5)
    assert float(rows[-1]["requested_ventricle_volume_mm3"]) == pytest.approx(hi, rel=1e-5)
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "Pearson r" in report and "0.972" in report and f"{d['ms_ssim_real']:.3f}" in report
    assert _run("evaluate", model2d, "--task", "generate", "--steps", 2, "--device", "cpu", "-o", tmp_path / "ev") == 2
    assert "already holds an evaluation" in capsys.readouterr().err


def test_evaluate_generation_3d(model3d, tmp_path):
    from brainsynth_plugins.ldm.evaluation import evaluate_generation

    from brainsynth_cli.plugin_manager import get_manager

    if "atlas" not in get_manager().registry("segmenter"):
        pytest.skip("the atlas segmenter plugin is not registered in this tree")
    s = evaluate_generation(model3d, tmp_path / "ev", grid=2, per_value=1, steps=4, pairs=6, real=2, device="cpu")
    c = s["conditioning"]
    assert c["samples"] == 2 and "segmenter atlas" in s["settings"]["method"]
    with open(tmp_path / "ev" / "conditioning.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    measured = [float(r["measured"]) for r in rows]
    assert all(m >= 0 for m in measured) and s["measurement_check"]["images"] == 2
    assert c["mae_mm3"] == pytest.approx(np.mean(np.abs(np.asarray(measured) - [float(r["requested_ventricle_volume_mm3"]) for r in rows])), rel=1e-4)
    assert 0 < s["diversity"]["ms_ssim_real"] <= 1
    assert len(list((tmp_path / "ev" / "samples").glob("sample-*.nii.gz"))) == 2


def test_resume_after_interruption_gives_the_same_model(cohort, tmp_path):
    from brainsynth_cli.interfaces import TrainOptions
    from brainsynth_cli.plugin_manager import get_manager

    gen = get_manager().registry("generator").create("ldm")
    extra = {"dim": "2d", "condition": "covariates", "resolution": 32, "vae_steps": 4, "unet_steps": 4, "batch_size": 4,
             "checkpoint_every": 2, "set": {"validation_steps": "2"}}
    full = gen.train(TrainOptions(data=cohort, output=tmp_path / "full", seed=1, device="cpu", extra=extra))

    class Stop(Exception):
        pass

    for stage, at in (("autoencoder", 3), ("unet", 3)):
        def stop(done, total, message="", stage=stage, at=at):
            if stage in message and done == at:
                raise Stop

        try:
            gen.train(TrainOptions(data=cohort, output=tmp_path / "cut", seed=1, device="cpu", extra=extra,
                                   resume=stage == "unet"), stop)
        except Stop:
            pass
        assert not (tmp_path / "cut" / "brainsynth.json").exists()
    gen.train(TrainOptions(data=cohort, output=tmp_path / "cut", seed=1, device="cpu", extra=extra, resume=True))
    for part in ("vae/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors"):
        assert (full / part).read_bytes() == (tmp_path / "cut" / part).read_bytes(), part
    assert (tmp_path / "cut" / "validation" / "samples.png").is_file()
    with open(tmp_path / "cut" / "logs" / "loss.csv", newline="") as fh:
        assert [r["stage"] for r in csv.DictReader(fh)] == ["vae"] * 4 + ["unet"] * 4


def test_train_from_template_pairs_reads_covariates_from_captions(cohort, tmp_path):
    pairs = tmp_path / "pairs"
    assert _run("make-pairs", cohort, "--labels", cohort / "derivatives" / "brainsynth-truth", "--prompt-builder", "template",
                "--dim", "2d", "--slices", 1, "--size", 32, "--split", "1:0:0", "-o", pairs) == 0
    out = tmp_path / "model"
    assert _run("train", pairs, "--task", "generate", "--condition", "covariates", "--resolution", 32, "--steps", 2,
                "--device", "cpu", "-o", out) == 0
    info = json.loads((out / "brainsynth.json").read_text())
    targets = [r for r in _sessions(cohort) if r["session_id"] != "ses-01"]  # the edited images are the later sessions
    vent = [float(r["ventricle_mm3"]) for r in targets]
    assert info["data"]["kind"] == "pairs" and info["data"]["images"] == len(targets)
    assert info["image"]["slice_convention"] == "brainsynth_cli.slices v2"  # the pairs folder's radiological view
    assert info["covariates"]["ranges"]["ventricle_volume"] == pytest.approx([min(vent), max(vent)], abs=0.5)  # captions round to mm3


def test_train_on_default_pairs_reads_covariates_from_rows(cohort, tmp_path, cli):
    """The default make-pairs output (quantized prompts, no covariates in the text) trains with
    the default --condition: age, sex and volumes come from the rows, equal to the cohort's truth."""
    pairs = tmp_path / "pairs"
    assert _run("make-pairs", cohort, "--labels", cohort / "derivatives" / "brainsynth-truth", "--slices", 1, "--size", 32,
                "--split", "1:0:0", "--montage", 0, "-o", pairs) == 0
    rows = [json.loads(line) for line in (pairs / "metadata.jsonl").read_text().splitlines()]
    assert rows and all("year" not in r["edit_prompt"] and "mm3" not in r["edit_prompt"] for r in rows)
    out = tmp_path / "model"
    assert _run("train", pairs, "--task", "generate", "--resolution", 32, "--steps", 2, "--device", "cpu", "-o", out) == 0
    info = json.loads((out / "brainsynth.json").read_text())
    assert info["condition"] == "both"
    targets = {(r["subject"], r["sessions"][1]) for r in rows if r["kind"] == "real"}
    truth = [r for r in _sessions(cohort) if r["session_id"] != "ses-01"]
    assert len(truth) == len(targets) == info["data"]["images"]
    ranges = info["covariates"]["ranges"]
    for name, column in (("age", "age"), ("ventricle_volume", "ventricle_mm3"), ("brain_volume", "brain_mm3")):
        values = [float(r[column]) for r in truth]
        assert ranges[name] == pytest.approx([min(values), max(values)], abs=1e-3), name
    # a folder whose rows lack the fields (made before they were written) is refused in one line
    for r in rows:
        for key in ("prior_age", "target_age", "sex", "prior_volumes_mm3", "target_volumes_mm3"):
            r.pop(key)
    (pairs / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = cli("train", pairs, "--task", "generate", "--resolution", 32, "--steps", 2, "--device", "cpu", "-o", tmp_path / "m2")
    assert res.exit_code == 2 and "has no age" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_samples_montage_captions_each_sample_and_shows_the_radiological_view(tmp_path, monkeypatch):
    """samples.png: one caption per sample (seed and what was asked for, in full), slices turned
    to the radiological view whatever the model's slice convention."""
    from types import SimpleNamespace

    from brainsynth_plugins.ldm.command import sample_caption, write_samples
    from brainsynth_plugins.ldm.model import Condition
    from PIL import Image

    import brainsynth_cli.figures.save as save

    prompt = "a 71 year old woman with a ventricle volume of 31,000 mm3 and a brain volume of 1,050,000 mm3"
    cond = Condition(prompt, {"age": 71.0, "sex": 0.0, "ventricle_volume": 31000.0, "brain_volume": 1.05e6},
                     {"age": "option", "sex": "option", "ventricle_volume": "prompt", "brain_volume": "median"})
    caption = sample_caption(cond, 5)
    assert caption == f"seed 5: “{prompt}”, age 71 y, ventricle volume 31000 mm³, sex F"
    figures = []
    real_save = save.save_figure
    monkeypatch.setattr(save, "save_figure", lambda fig, path: (figures.append(fig), real_save(fig, path))[1])
    canonical = np.zeros((32, 32), np.float32)
    canonical[24:30, 10:20] = 1.0  # high canonical x: the patient's right
    for convention, stored in (("brainsynth_cli.slices v1", canonical), ("brainsynth_cli.slices v2", canonical[::-1, ::-1].T)):
        ldm = SimpleNamespace(dim="2d", info={"image": {"slice_convention": convention}})
        out = tmp_path / convention[-2:]
        write_samples(ldm, out, [stored, stored], [cond, cond], [5, 6], steps=4, scheduler="ddim", guidance_scale=1.0)
        fig = figures[-1]
        assert [ax.get_title().replace("\n", " ") for ax in fig.axes] == [sample_caption(cond, 5), sample_caption(cond, 6)]
        shown = fig.axes[0].get_images()[0].get_array()
        cols = np.flatnonzero(np.asarray(shown).max(axis=0) > 0.5)
        assert cols.size and cols.max() < 16  # the patient's right on the left
        with Image.open(out / "samples.png") as im:
            assert im.size[0] >= 2 * 180


def test_monai_attention_switches_to_torch_fused_attention_with_the_same_result():
    """MONAI's 3D attention blocks run torch's scaled_dot_product_attention when switched (what
    trainers and loaders do on CUDA devices): it is called, and the output is unchanged on the CPU."""
    import torch
    import torch.nn.functional as F
    from brainsynth_plugins.ldm import nets
    from brainsynth_plugins.ldm.presets import PRESETS

    torch.manual_seed(0)
    unet = nets.build_unet("3d", PRESETS["tiny"]["unet"]["3d"], in_channels=3, out_channels=3, cross_attention_dim=8)
    x, ctx, t = torch.randn(2, 3, 8, 8, 8), torch.randn(2, 1, 8), torch.tensor([10, 20])
    calls = []
    fused = F.scaled_dot_product_attention

    def spy(*a, **k):
        calls.append(1)
        return fused(*a, **k)

    F.scaled_dot_product_attention = spy
    try:
        with torch.no_grad():
            plain = nets.denoise(unet, "3d", x, t, ctx)
            assert calls == []
            assert nets.use_flash_attention(unet, True) > 0
            flash = nets.denoise(unet, "3d", x, t, ctx)
    finally:
        F.scaled_dot_product_attention = fused
    assert calls and torch.allclose(plain, flash, atol=1e-5)
    assert nets.use_flash_attention(nets.build_unet("2d", PRESETS["tiny"]["unet"]["2d"], in_channels=4, out_channels=4,
                                                    cross_attention_dim=8), True) == 0  # diffusers' networks: no switch
