"""`brainsynth evaluate` on 3D pairs: volume change rates from the atlas segmenter's longitudinal mode,
the baselines, the through-plane statistic, a 2D model slice by slice, a 3D model, resume and refusals.

A simulated 3-subject cohort at 4 mm, made into 3D pairs with its truth labels (one test subject);
the 2D model is a registered stand-in whose change alternates sign from one axial slice to the next
(a striped edit), the 3D model a real one far smaller than `tiny`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

pytest.importorskip("torch")

from test_train3d_ip2p import make_pairs3d, run_cli

from brainsynth_cli import hookimpl
from brainsynth_cli.specs import Spec

#: A 3D model far smaller than the `tiny` preset (as tests/test_train3d_ip2p.py).
SMALL = ["--dim", "3d", "--device", "cpu", "--seed", "3", "--set", "voxel_mm=8", "--set", "grid=24,32,24",
         "--set", "vae.channels=8,8", "--set", "vae.attention_levels=false,false",
         "--set", "unet.channels=16,32", "--set", "unet.attention_levels=false,true", "--set", "unet.num_head_channels=16",
         "--set", "vae_steps=2", "--set", "unet_steps=2", "--set", "warmup_steps=1", "--batch-size", "2"]


class StripedModel:
    """A 2D editing model whose change is +0.2 on one slice it is given and -0.2 on the next."""

    dims = ("2d",)
    resolution = None
    info: ClassVar[dict] = {}
    calls: ClassVar[list[int]] = []  # how many slices each call edited

    def edit(self, images, prompt, *, labels=None, seed=0, progress=None, **options):
        StripedModel.calls.append(len(images))
        return [np.clip(np.asarray(im, np.float32) + np.float32(0.2 if i % 2 == 0 else -0.2), 0, 1) for i, im in enumerate(images)]


class StripedGenerator:
    def load(self, model_dir, device="auto"):
        return StripedModel()


class Volume3DModel(StripedModel):
    dims = ("3d",)


class Volume3DGenerator:
    def load(self, model_dir, device="auto"):
        return Volume3DModel()


class TestModels:
    @hookimpl
    def register_generators(self, register):
        register(Spec("test-striped-2d", StripedGenerator, "alternating change per slice"))
        register(Spec("test-volume-3d", Volume3DGenerator, "a 3D stand-in"))


def fake_model(folder: Path, generator: str, dims: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "brainsynth.json").write_text(json.dumps({"format": "brainsynth-model", "generator": generator, "dims": dims}))
    return folder


@pytest.fixture(scope="module")
def cohort3d(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval3d")
    make_pairs3d(d, "1:1:1", "--seed", "1")
    return d


@pytest.fixture(scope="module")
def baselines(cohort3d):
    out = cohort3d / "baselines"
    code, stdout, err = run_cli("evaluate", "--baselines-only", cohort3d / "pairs", "-o", out)
    assert code == 0, err
    return out, stdout


def _rows(out: Path) -> list[dict]:
    return [json.loads(line)["result"] for line in (out / "rows.jsonl").read_text().splitlines()]


def test_through_plane_statistic_is_one_for_the_reference_and_larger_when_striped():
    from brainsynth_plugins.evaluate import through_plane as tp

    labels = np.zeros((24, 24, 24), np.int32)
    labels[8:16, 8:16, 8:16] = 4
    prior = np.full(labels.shape, 0.5, np.float32)
    zz = np.arange(24)[None, None, :]
    from scipy import ndimage

    smooth = ndimage.gaussian_filter((labels == 4).astype(np.float32), 1.5) * 0.3  # a smooth change around the structure
    striped = smooth * np.where(zz % 2 == 0, 1.0, -1.0)  # the same change, its sign alternating per axial slice
    band = tp.border_band(labels, [4])
    assert band.any() and band[8, 8, 8] and not band[12, 12, 12] and not band[0, 0, 0]
    values = {m: tp.roughness(prior + d, prior, band, (1.0, 1.0, 1.0))
              for m, d in (("target", smooth), ("model", striped), ("identity", 0 * smooth))}
    r = tp.ratios(values)
    assert r["target"]["ratio"] == pytest.approx(1.0) and r["target"]["anisotropy_ratio"] == pytest.approx(1.0)
    assert r["model"]["ratio"] > 3 and r["model"]["anisotropy_ratio"] > 3
    assert r["identity"]["ratio"] == 0.0 and np.isnan(r["identity"]["anisotropy_ratio"])  # no change: nothing to compare
    # thicker slices: the through-plane differences are per mm
    thick = tp.roughness(prior + striped, prior, band, (1.0, 1.0, 2.0))
    assert thick["through"] == pytest.approx(values["model"]["through"] / 2)


def test_baselines_measure_volume_change_rates(baselines, cohort3d):
    out, stdout = baselines
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["settings"]["dim"] == "3d" and summary["settings"]["measure"] == "followup:atlas"
    assert set(summary["methods"]) == {"deform", "identity", "chance", "target"}
    ident, target, deform = (summary["methods"][m]["all"] for m in ("identity", "target", "deform"))
    assert ident["structure_items"] >= 2
    assert ident["acc"] == 0.0 and ident["change_error"] == pytest.approx(1.0)
    assert target["change_error"] == pytest.approx(0.0) and target["structure_error"] is None  # labels, no maps: n/a
    # the real target measured by the longitudinal segmentation lands near the truth from the label volumes
    rows = _rows(out)
    for r in rows:
        for s, v in r["methods"]["target"]["structures"].items():
            if "hit" in v:
                assert abs(v["achieved"] - r["truth"][s]) < 2.5, (r["prompt"], s, v, r["truth"][s])
                assert abs(r["methods"]["identity"]["structures"][s]["achieved"]) < 1e-9
    assert target["mae"] < ident["mae"] and deform["mae"] < ident["mae"]
    # through-plane: the target is its own reference; the deform baseline is reported next to it
    tp = summary["through_plane"]
    assert tp["target"]["ratio"] == pytest.approx(1.0) and tp["target"]["rows"] == summary["rows"]
    assert tp["deform"]["rows"] >= 1 and 0 < tp["deform"]["anisotropy_ratio"] < 2
    report = (out / "report.md").read_text()
    assert "Through-plane consistency" in report and "## Per volume" in report and "## Per slice" not in report
    assert "structure change error is not computed" in report and "FID: not computed: 3D volumes" in report
    edits = sorted(p.name for p in (out / "edits").iterdir())
    assert (out / "montage-deform.png").is_file() and edits and all(n.startswith("deform-") and n.endswith(".nii.gz") for n in edits)
    assert "through-plane" in stdout


def test_resume_does_not_redo_rows(baselines, cohort3d):
    out, _ = baselines
    before = (out / "rows.jsonl").read_text()
    metrics = (out / "metrics.json").read_text()
    code, _, err = run_cli("evaluate", "--baselines-only", cohort3d / "pairs", "-o", out)
    assert code == 0, err
    assert (out / "rows.jsonl").read_text() == before and (out / "metrics.json").read_text() == metrics


def test_2d_model_edits_3d_pairs_slice_by_slice(cohort3d, register_plugin):
    import nibabel as nib
    from scipy import ndimage

    register_plugin(TestModels(), "test-eval3d-models")
    model = fake_model(cohort3d / "striped", "test-striped-2d", ["2d"])
    out = cohort3d / "report-2d"
    StripedModel.calls.clear()
    code, _, err = run_cli("evaluate", model, cohort3d / "pairs", "-o", out, "--limit", "1", "--no-baselines")
    assert code == 0, err
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["settings"]["model_dims"] == ["2d"] and set(summary["methods"]) == {"model", "identity", "target"}
    r = _rows(out)[0]
    row = next(json.loads(line) for line in (cohort3d / "pairs" / "metadata.jsonl").read_text().splitlines()
               if json.loads(line)["split"] == "test")
    prior_img = nib.load(cohort3d / "pairs" / row["input_image_file_name"])
    prior = np.asanyarray(prior_img.dataobj)
    edit = nib.load(out / "edits" / f"row-{r['row']:05d}.nii.gz")
    assert edit.shape == prior.shape and np.allclose(edit.affine, prior_img.affine)
    nonempty = int(sum(np.any(prior[:, :, k] != 0) for k in range(prior.shape[2])))  # the pairs are RAS: axis 2 is axial
    assert StripedModel.calls == [nonempty]  # every non-empty axial slice, in one call, as `edit` does
    # restricted to the named structures (+ margin) of the prior labels: the rest is the prior, bit for bit
    labels = np.asanyarray(nib.load(cohort3d / "pairs" / row["input_labels_file_name"]).dataobj)
    from brainsynth_cli.structures import default_rules

    rules = default_rules()
    named = [s for s, v in r["methods"]["model"]["structures"].items() if "interval" in v]
    near = ndimage.binary_dilation(np.isin(labels, [i for s in named for i in rules[s].labels]), iterations=3)
    changed = np.asanyarray(edit.dataobj) != prior
    assert changed.any() and not changed[~near].any()
    # the edit is `brainsynth edit`'s own, bit for bit (evaluate clips to [0, 1] like the pair's volumes)
    single = cohort3d / "edit-2d.nii.gz"
    code, _, err = run_cli("edit", model, cohort3d / "pairs" / row["input_image_file_name"], "--labels",
                           cohort3d / "pairs" / row["input_labels_file_name"], "--prompt", row["edit_prompt"], "-o", single,
                           "--seed", r["row"], "--free-prompt")
    assert code == 0, err
    assert np.array_equal(np.clip(np.asanyarray(nib.load(single).dataobj), 0, 1), np.asanyarray(edit.dataobj))
    # a change that flips sign from slice to slice is much rougher across slices than the real change
    tp = summary["through_plane"]["model"]
    assert tp["ratio"] > 1.5 and tp["anisotropy_ratio"] > 1.5
    assert summary["through_plane"]["target"]["ratio"] == pytest.approx(1.0)


def test_3d_model_edits_whole_volumes(cohort3d):
    model = cohort3d / "model3d"
    code, _, err = run_cli("train", cohort3d / "pairs", "-o", model, *SMALL)
    assert code == 0, err
    out = cohort3d / "report-3d"
    code, _, err = run_cli("evaluate", model, cohort3d / "pairs", "-o", out, "--limit", "1", "--steps", "2", "--no-baselines")
    assert code == 0, err
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["settings"]["model_dims"] == ["3d"] and "model" in summary["through_plane"]
    r = _rows(out)[0]
    assert (out / "edits" / f"row-{r['row']:05d}.nii.gz").is_file()
    assert any("hit" in v for v in r["methods"]["model"]["structures"].values())
    report = (out / "report.md").read_text()
    assert "## Does the model work?" in report and "autoencoder reconstructs validation volumes" in report
    assert "Structure change error: not measured" in report


def test_refusals_are_one_line_with_exit_2(cohort3d, register_plugin, tmp_path):
    register_plugin(TestModels(), "test-eval3d-models")
    pairs2d = tmp_path / "pairs2d"
    truth = cohort3d / "cohort" / "derivatives" / "brainsynth-truth"
    code, _, err = run_cli("make-pairs", cohort3d / "cohort", "-o", pairs2d, "--labels", truth, "--slices", "2", "--size", "32",
                           "--split", "1:1:1", "--montage", "0", "--seed", "1")
    assert code == 0, err
    model3d = fake_model(tmp_path / "m3", "test-volume-3d", ["3d"])
    cases = [
        (("evaluate", model3d, pairs2d, "-o", tmp_path / "r1"), [str(pairs2d / "pairs.json"), "3D model", "--dim 3d"]),
        (("evaluate", "--baselines-only", cohort3d / "pairs", "-o", tmp_path / "r2", "--measure", "tissue"),
         ["--measure tissue", "--segmenter"]),
        (("evaluate", "--baselines-only", cohort3d / "pairs", "-o", tmp_path / "r3", "--segmenter", "no-such-seg"), ["no-such-seg"]),
        (("evaluate", "--baselines-only", cohort3d / "pairs", "-o", tmp_path / "r5", "--segmenter", "kmeans-tissue"),
         ["kmeans-tissue", "longitudinal mode", "--segmenter atlas"]),
    ]
    fid = tmp_path / "fid.pt"
    fid.write_bytes(b"x")
    cases.append((("evaluate", model3d, cohort3d / "pairs", "-o", tmp_path / "r4", "--fid-weights", fid), [str(fid), "2D slices"]))
    for args, words in cases:
        code, _, err = run_cli(*args)
        assert code == 2, (args, err)
        assert len(err.strip().splitlines()) == 1, err
        assert all(w in err for w in words), (words, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fid.pt", "m3", "pairs2d"]  # no report folder was written


def test_verdict_without_structure_maps_does_not_claim_them():
    from brainsynth_plugins.evaluate.verdict import verdict

    def row(acc, mae, psnr, se):
        return {"acc": acc, "acc_ci": [acc - 0.1, min(1.0, acc + 0.1)], "hits": int(acc * 10), "n": 10, "mae": mae, "psnr": psnr,
                "ssim": 0.9, "structure_error": se, "change_error": 1.0, "leak": 0.1}

    table = {"model": row(0.6, 3.0, 30.0, float("nan")), "identity": row(0.0, 9.0, 30.0, float("nan")),
             "chance": row(0.1, 9.0, 29.0, float("nan")), "target": row(0.9, 1.0, float("inf"), float("nan"))}
    head, reasons = verdict(table, structure_maps=False)
    assert head.startswith("**Partly: the model keeps the scan, but") and "moves the structures" not in head
    assert any(r.startswith("Structure change error: not measured") for r in reasons)
    head2d, _ = verdict(table)  # with maps, a NaN structure error fails the criterion: the 2D verdict as before
    assert head2d.startswith("**Not yet")
