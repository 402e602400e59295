"""brainsynth evaluate end to end on a tiny simulated cohort: report files, baselines, resume, errors.
And the demo's command plan parses against the real commands."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("diffusers")

from test_train_pairs import FAST, make_pairs, one_thread, train_cli


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from brainsynth_cli.main import run
    from brainsynth_plugins.simulate.cohort import simulate_cohort

    root = tmp_path_factory.mktemp("evaluate")
    simulate_cohort(root / "cohort", subjects=3, sessions=2, resolution=4.0, seed=3)
    pairs = root / "pairs"
    assert run(["make-pairs", str(root / "cohort"), "-o", str(pairs), "--labels", str(root / "cohort/derivatives/brainsynth-truth"),
                "--slices", "3", "--size", "32", "--split", "1:1:1", "--seed", "3"]) == 0
    code, err = train_cli([pairs, "-o", root / "model", *FAST, "--set", "vae_steps=4", "--set", "unet_steps=6", "--checkpoint-every", "6"])
    assert code == 0, err
    return root, pairs, root / "model"


def evaluate(cli, model, pairs, out, *extra):
    with one_thread():
        return cli("evaluate", model, pairs, "-o", out, "--steps", "2", "--limit", "4", *extra)


def test_report_has_every_method_metric_and_picture(cli, trained):
    root, pairs, model = trained
    res = evaluate(cli, model, pairs, root / "report")
    assert res.exit_code == 0, res.stderr
    out = root / "report"
    for name in ("report.md", "metrics.csv", "metrics-pairs.csv", "metrics.json", "montage.png", "montage-deform.png", "rates.png",
                 "rows.jsonl"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "metrics.json").read_text())
    methods = {"model", "deform", "identity", "chance", "target"}
    assert set(summary["pairs"]["methods"]) == methods and 1 <= summary["pairs"]["rows"] <= summary["rows"]
    assert summary["rows"] == len((out / "rows.jsonl").read_text().splitlines()) >= 1
    assert set(summary["methods"]) == methods
    ident, target = summary["methods"]["identity"]["all"], summary["methods"]["target"]["all"]
    assert target["psnr"] is None  # the real target against itself: PSNR infinite, written as null
    assert target["ssim"] == pytest.approx(1.0) and ident["ssim"] < 1.0
    assert ident["change_error"] == pytest.approx(1.0) and target["change_error"] == pytest.approx(0.0)
    if ident["structure_items"]:
        assert ident["acc"] == 0.0  # no change never falls in an enlargement/atrophy interval
        lo, hi = summary["methods"]["model"]["all"]["acc_ci"]
        assert 0.0 <= lo <= summary["methods"]["model"]["all"]["acc"] <= hi <= 1.0
    # the first screen answers "does the model work?" with the verdict, its reasons and the per-pair table
    report = (out / "report.md").read_text()
    first = report.split("## How this was measured")[0]
    assert "## Does the model work?" in first and any(w in first for w in ("**Yes", "**Partly", "**Not yet"))
    assert "chance (prior + faint noise)" in first and "deform (no training)" in first and "change error" in first.lower()
    assert "FID: not computed" in report
    assert "per pair" in res.stdout and "report.md" in res.stdout and any(w in res.stdout for w in ("Yes:", "Partly:", "Not yet:"))
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("row,subject,kind,prompt,method,psnr,ssim,ms_ssim,change_error,structure")
    # the edit path: outside the row's named structures (plus one pixel) the stored edit equals the prior
    rows = [json.loads(line)["result"] for line in (out / "rows.jsonl").read_text().splitlines()]
    from brainsynth_cli.pairs_folder import read_pairs_folder
    from brainsynth_cli.slices import read_slice
    from brainsynth_plugins.evaluate.engine import row_labels

    folder = read_pairs_folder(pairs)
    by_number = {r.number: r for r in folder.rows}
    from scipy import ndimage

    for r in rows:
        named = [s for s, v in r["methods"]["model"]["structures"].items() if "interval" in v]
        if not named:
            continue
        row = by_number[r["row"]]
        labels = row_labels(row)[0]
        from brainsynth_cli.structures import default_rules

        from brainsynth_cli.edit_path import region as edit_region
        from brainsynth_plugins.evaluate.engine import pixel_spacing

        region = edit_region(labels, [default_rules()[s] for s in named], pixel_spacing(row, folder, 3.0), 3.0)
        # at least two pixels beyond the named structures, whatever the pixel size
        assert region.sum() >= ndimage.binary_dilation(np.isin(labels, [i for s in named for i in default_rules()[s].labels]),
                                                       iterations=2).sum()
        edit = read_slice(out / "edits" / f"row-{row.number:05d}.png")
        assert np.array_equal(edit[~region], read_slice(row.prior)[~region])


def test_rerun_resumes_without_recomputing(cli, trained):
    root, pairs, model = trained
    out = root / "report-resume"
    assert evaluate(cli, model, pairs, out).exit_code == 0
    before = (out / "rows.jsonl").read_text()
    assert evaluate(cli, model, pairs, out).exit_code == 0
    assert (out / "rows.jsonl").read_text() == before
    assert evaluate(cli, model, pairs, out, "--limit", "2").exit_code == 0  # --limit is not a setting of the rows
    assert (out / "rows.jsonl").read_text() == before


def test_worker_processes_give_the_same_rows(cli, trained):
    """--jobs 2 measures rows in two spawned processes while the model edits: same records, same
    order, same edits as one process (every registration runs on one thread)."""
    root, pairs, model = trained
    one, two = root / "report-jobs1", root / "report-jobs2"
    assert evaluate(cli, model, pairs, one).exit_code == 0
    res = evaluate(cli, model, pairs, two, "--jobs", "2")
    assert res.exit_code == 0, res.stderr
    assert (two / "rows.jsonl").read_text() == (one / "rows.jsonl").read_text()
    assert sorted(p.name for p in (two / "edits").iterdir()) == sorted(p.name for p in (one / "edits").iterdir())
    for p in (one / "edits").iterdir():
        assert (two / "edits" / p.name).read_bytes() == p.read_bytes(), p.name
    assert (two / "metrics-pairs.csv").read_text() == (one / "metrics-pairs.csv").read_text()
    res = evaluate(cli, model, pairs, root / "report-jobs0", "--jobs", "0")
    assert res.exit_code == 2 and "--jobs" in res.stderr


def test_other_settings_into_a_report_folder_are_refused_unless_overwrite(cli, trained):
    root, pairs, model = trained
    out = root / "report-settings"
    assert evaluate(cli, model, pairs, out, "--guidance-scale", "3").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    res = evaluate(cli, model, pairs, out, "--guidance-scale", "5")
    assert res.exit_code == 2 and res.stderr.strip() == (
        f"brainsynth: error: {out}: holds a report made with other settings (--guidance-scale 3.0 -> 5.0); "
        "use another -o or pass --overwrite")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing touched
    (out / "edits" / "stale.png").write_bytes(b"old")
    (out / "notes.txt").write_text("mine")  # not the report's: --overwrite leaves it
    res = evaluate(cli, model, pairs, out, "--guidance-scale", "5", "--overwrite")
    assert res.exit_code == 0, res.stderr
    assert not (out / "edits" / "stale.png").exists() and (out / "notes.txt").read_text() == "mine"
    assert json.loads((out / "evaluate.json").read_text())["guidance_scale"] == 5.0
    assert len((out / "rows.jsonl").read_text().splitlines()) == len(before["rows.jsonl"].splitlines())  # rewritten, not appended
    assert json.loads((out / "metrics.json").read_text())["settings"]["guidance_scale"] == 5.0
    assert evaluate(cli, model, pairs, out, "--guidance-scale", "5").exit_code == 0  # the new settings resume


def test_change_floor_acts_on_the_model_row_only(cli, trained):
    """--change-floor soft-thresholds the model's change (fewer pixels changed, less change in all)
    and is recorded; the deform row keeps every change; the default is the model's recommendation."""
    from brainsynth_cli.slices import read_slice

    root, pairs, model = trained
    runs = {f: root / f"report-floor-{f}" for f in ("0", "0.03")}
    for f, out in runs.items():
        # guidance from the empty prompt: this 24-step model's own change, which guidance from the input
        # scales, is above any floor in the whole region
        res = evaluate(cli, model, pairs, out, "--change-floor", f, "--blender", "copy-paste", "--guidance-reference", "empty-prompt")
        assert res.exit_code == 0, res.stderr
        assert json.loads((out / "evaluate.json").read_text())["deform_blender"] == "copy-paste"  # the option: both rows

    def changed(out, name):
        from brainsynth_cli.pairs_folder import read_pairs_folder

        rows = {r.number: r for r in read_pairs_folder(pairs).rows}
        total = []
        for p in sorted((out / "edits").glob(f"{name}-*.png")):
            prior = read_slice(rows[int(p.stem.split("-")[1])].prior)
            total.append(np.abs(read_slice(p) - prior))
        return np.stack(total)

    a, b = changed(runs["0"], "row"), changed(runs["0.03"], "row")
    assert (b > 0).sum() < (a > 0).sum() and b.sum() < a.sum()
    assert np.array_equal(changed(runs["0"], "deform"), changed(runs["0.03"], "deform"))
    metrics = json.loads((runs["0.03"] / "metrics.json").read_text())
    assert metrics["settings"]["change_floor"] == 0.03 and "soft threshold" in metrics["settings"]["edit_path"]
    assert metrics["first_screen"]["table"]["model"]["psnr"] != json.loads((runs["0"] / "metrics.json").read_text())["first_screen"]["table"]["model"]["psnr"]
    recommended = json.loads((model / "brainsynth.json").read_text())["sampling"]["change_floor"]
    out = root / "report-floor-default"
    assert evaluate(cli, model, pairs, out, "--no-baselines").exit_code == 0
    assert json.loads((out / "evaluate.json").read_text())["change_floor"] == recommended


def test_feather_acts_on_the_model_row_only_and_is_recorded(cli, trained):
    """The model's recommendation (the tiny preset: feather on) is used unless --no-feather; the
    setting is recorded in evaluate.json and in the report's edit path; the deform row is the same either way."""
    root, pairs, model = trained
    assert json.loads((model / "brainsynth.json").read_text())["sampling"]["feather"] is True
    runs = {"on": root / "report-feather-on", "off": root / "report-feather-off"}
    assert evaluate(cli, model, pairs, runs["on"], "--guidance-reference", "empty-prompt").exit_code == 0
    res = evaluate(cli, model, pairs, runs["off"], "--guidance-reference", "empty-prompt", "--no-feather")
    assert res.exit_code == 0, res.stderr
    assert json.loads((runs["on"] / "evaluate.json").read_text())["feather"] is True
    assert json.loads((runs["off"] / "evaluate.json").read_text())["feather"] is False
    assert json.loads((runs["on"] / "evaluate.json").read_text())["blender"] == "warp"  # the model's recommendation too
    assert json.loads((runs["on"] / "evaluate.json").read_text())["deform_blender"] == "poisson"  # not the deform row's
    assert "merged by `poisson`" in (runs["on"] / "report.md").read_text()
    assert "merged by warp" in json.loads((runs["on"] / "metrics.json").read_text())["settings"]["edit_path"]
    assert "outermost voxel layer" in json.loads((runs["on"] / "metrics.json").read_text())["settings"]["edit_path"]
    pngs = lambda out, name: [p.read_bytes() for p in sorted((out / "edits").glob(f"{name}-*.png"))]
    assert pngs(runs["on"], "deform") == pngs(runs["off"], "deform")
    assert pngs(runs["on"], "row") != pngs(runs["off"], "row")
    res = evaluate(cli, model, pairs, runs["on"], "--guidance-reference", "empty-prompt", "--no-feather")
    assert res.exit_code == 2 and "--feather True -> False" in res.stderr


@pytest.mark.parametrize("args, needle", [
    (["--measure", "registratoin"], "did you mean 'registration'"),
    (["--change-floor", "0.5"], "--change-floor must be a finite number in [0, 0.1]"),
])
def test_bad_options_are_one_line_errors(cli, trained, args, needle):
    root, pairs, model = trained
    out = root / "bad"
    res = evaluate(cli, model, pairs, out, *args)
    assert res.exit_code == 2 and needle in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (out / "metrics.json").exists()


def test_missing_model_and_pairs_without_labels(cli, trained, tmp_path):
    root, pairs, model = trained
    res = evaluate(cli, tmp_path / "no-model", pairs, tmp_path / "r")
    assert res.exit_code == 2 and "model folder not found" in res.stderr
    phantom_pairs = make_pairs(tmp_path / "phantom", size=32, subjects=3, slices=1, labels=False)
    res = evaluate(cli, model, phantom_pairs, tmp_path / "r2", "--split", "train")
    assert res.exit_code == 2 and "no label slices" in res.stderr


@pytest.mark.parametrize("volumes", [False, True], ids=["2d", "3d"])
def test_demo_plan_parses_against_the_real_commands(tmp_path, volumes):
    """Every step of `brainsynth demo` (and of `demo --3d`) is a valid invocation of the command it names."""
    import typer

    from brainsynth_cli.main import build_app
    from brainsynth_plugins.demo.command import STEPS, plan

    group = typer.main.get_command(build_app())
    steps = plan(tmp_path, subjects=6, seed=0, volumes=volumes)
    assert [name for name, _ in steps] == list(STEPS)
    args = dict(steps)
    # the 3D chain shares the cohort and labels and writes its own pairs, model and report
    assert args["segment"][1] == str(tmp_path / "cohort")
    assert ("--dim" in args["make-pairs"] and "--dim" in args["train"]) is volumes
    assert args["evaluate"][args["evaluate"].index("-o") + 1] == str(tmp_path / ("report3d" if volumes else "report"))
    for name, args in steps:
        command = group.get_command(None, args[0])
        assert command is not None, name
        ctx = command.make_context(args[0], list(args[1:]), resilient_parsing=False)
        assert ctx.params, name
