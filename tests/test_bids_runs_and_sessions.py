"""Every command that reads a BIDS dataset takes ``--run`` the same way (segment, make-pairs,
train --task generate): the last run by default, said once, or the run named; a derivatives
folder with a label map per run gives the run's. make-pairs names a dataset without a ``ses-``
level as such (no pairs: one scan per subject) instead of printing an empty session."""

from __future__ import annotations

import json
import shutil

import pytest

cohort = pytest.importorskip("brainsynth_plugins.simulate.cohort")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs") / "bids"
    cohort.simulate_cohort(root, subjects=2, sessions=2, resolution=4.0, seed=5)
    return root


def _with_runs(sim, dest):
    """The cohort with sub-001 ses-01 scanned twice: run-1 is ses-02's image (so the run taken
    shows), run-2 the session's own; the truth labels of both runs beside each other."""
    shutil.copytree(sim, dest)
    anat = dest / "sub-001" / "ses-01" / "anat"
    own = anat / "sub-001_ses-01_T1w.nii.gz"
    shutil.copy(dest / "sub-001" / "ses-02" / "anat" / "sub-001_ses-02_T1w.nii.gz", anat / "sub-001_ses-01_run-1_T1w.nii.gz")
    own.rename(anat / "sub-001_ses-01_run-2_T1w.nii.gz")
    truth = dest / "derivatives" / "brainsynth-truth" / "sub-001" / "ses-01" / "anat"
    lab = truth / "sub-001_ses-01_desc-truth_dseg.nii.gz"
    shutil.copy(dest / "derivatives" / "brainsynth-truth" / "sub-001" / "ses-02" / "anat" / "sub-001_ses-02_desc-truth_dseg.nii.gz",
                truth / "sub-001_ses-01_run-1_desc-truth_dseg.nii.gz")
    lab.rename(truth / "sub-001_ses-01_run-2_desc-truth_dseg.nii.gz")
    return dest


def test_labels_of_the_run_taken(sim, tmp_path):
    from brainsynth_cli.datasets import read_dataset

    data = _with_runs(sim, tmp_path / "bids")
    truth = data / "derivatives" / "brainsynth-truth"
    for run, want in ((None, "run-2"), ("1", "run-1"), ("run-2", "run-2")):
        ses = read_dataset(data, truth, run=run).subjects()["sub-001"][0]
        assert want in ses.image.name and want in ses.labels.name, (run, ses)


def test_make_pairs_takes_the_last_run_or_the_one_named(sim, tmp_path, cli):
    data = _with_runs(sim, tmp_path / "bids")
    common = ("--labels", data / "derivatives" / "brainsynth-truth", "--slices", "1", "--size", "32", "--montage", "0",
              "--split", "1:0:1")
    r = cli("make-pairs", data, "-o", tmp_path / "last", *common)
    assert r.exit_code == 0, r.stderr
    assert "sub-001/ses-01/anat: 2 T1w runs, took run-2; --run LABEL takes another" in r.stdout
    assert "run" not in json.loads((tmp_path / "last" / "pairs.json").read_text())
    r = cli("make-pairs", data, "-o", tmp_path / "run1", "--run", "1", *common)
    assert r.exit_code == 0, r.stderr
    assert "T1w runs" not in r.stdout and json.loads((tmp_path / "run1" / "pairs.json").read_text())["run"] == "1"
    # run-1 of ses-01 is ses-02's scan: sub-001's pair then has no change, the default run's has
    rows = {name: [json.loads(x) for x in (tmp_path / name / "metadata.jsonl").read_text().splitlines()] for name in ("last", "run1")}
    assert any(r["subject"] == "sub-001" for r in rows["last"]) and not any(r["subject"] == "sub-001" for r in rows["run1"])
    # the same folder with another run: refused (the pairs would mix runs)
    r = cli("make-pairs", data, "-o", tmp_path / "run1", "--run", "2", *common)
    assert r.exit_code == 2 and "run" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("make-pairs", data, "-o", tmp_path / "none", "--run", "7", *common)
    assert r.exit_code == 2 and "no run-7 T1w" in r.stderr


def test_train_generate_takes_the_run_named(sim, tmp_path, cli):
    pytest.importorskip("torch")
    from brainsynth_plugins.ldm.data import read_training_set

    from brainsynth_cli.errors import InputError

    data = _with_runs(sim, tmp_path / "bids")
    for run, want in ((None, "run-2"), ("1", "run-1")):
        ts = read_training_set(data, dim="2d", resolution=16, voxel_mm=4.0, captions_per_image=1, run=run)
        first = next(it for it in ts.items if it.subject == "sub-001" and it.session == "ses-01")
        assert want in first.source
    with pytest.raises(InputError, match="is a pairs folder; --run picks T1w runs of a dataset"):
        read_training_set(_pairs_folder(tmp_path), dim="2d", resolution=16, voxel_mm=4.0, run="1")
    r = cli("train", tmp_path / "pairs", "-o", tmp_path / "model", "--run", "1")
    assert r.exit_code == 2 and "--run" in r.stderr and "make-pairs" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "model").exists()


def _pairs_folder(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir(exist_ok=True)
    (folder / "metadata.jsonl").write_text("")
    return folder


def test_make_pairs_on_a_dataset_without_sessions(sim, tmp_path, cli):
    flat = tmp_path / "flat"
    for sub in ("sub-001", "sub-002"):
        (flat / sub / "anat").mkdir(parents=True)
        shutil.copy(sim / sub / "ses-01" / "anat" / f"{sub}_ses-01_T1w.nii.gz", flat / sub / "anat" / f"{sub}_T1w.nii.gz")
    shutil.copy(sim / "dataset_description.json", flat)
    r = cli("make-pairs", flat, "-o", tmp_path / "pairs")
    assert r.exit_code == 2 and "()" not in r.stderr
    assert r.stderr.strip().splitlines() == [
        (f"brainsynth: error: {flat}: has no session level (sub-*/anat/*_T1w only): one scan per subject, so no pairs; "
         "make-pairs needs two or more sessions per subject: sub-X/ses-Y/anat/..., or a CSV manifest with a session column")]
    # beside longitudinal subjects, a subject without sessions is skipped with a warning that says so
    mixed = tmp_path / "mixed"
    shutil.copytree(sim, mixed)
    shutil.copytree(flat / "sub-001", mixed / "sub-009")
    (mixed / "sub-009" / "anat" / "sub-001_T1w.nii.gz").rename(mixed / "sub-009" / "anat" / "sub-009_T1w.nii.gz")
    r = cli("make-pairs", mixed, "-o", tmp_path / "mixed-pairs", "--labels", mixed / "derivatives" / "brainsynth-truth",
            "--slices", "1", "--size", "32", "--montage", "0", "--split", "1:0:1")
    assert r.exit_code == 0, r.stderr
    assert ("brainsynth: warning: sub-009 has no session level (one scan, sub-009/anat); skipped (a pair needs two sessions)"
            in r.stderr.splitlines())
