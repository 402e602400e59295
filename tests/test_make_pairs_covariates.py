"""Rows of make-pairs carry the covariates (ages, sex, interval, prior and target volumes) of
their pair, equal to the cohort's participants.tsv / sessions.tsv, whatever the prompt builder;
and `train --task generate` runs on the default make-pairs output without template captions."""

from __future__ import annotations

import csv
import json

import pytest


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from brainsynth_plugins.simulate.cohort import simulate_cohort

    root = tmp_path_factory.mktemp("cov") / "bids"
    simulate_cohort(root, subjects=3, sessions=2, resolution=4.0, seed=3)
    return root


def _truth(root, subject):
    with open(root / "participants.tsv", newline="") as fh:
        sex = {r["participant_id"]: r["sex"] for r in csv.DictReader(fh, delimiter="\t")}[subject]
    with open(root / subject / f"{subject}_sessions.tsv", newline="") as fh:
        return sex, {r["session_id"]: r for r in csv.DictReader(fh, delimiter="\t")}


def _make(root, out, *extra, labels=None):
    from brainsynth_cli.main import run

    labels = labels or root / "derivatives" / "brainsynth-truth"
    assert run(["make-pairs", str(root), "-o", str(out), "--labels", str(labels),
                "--slices", "2", "--size", "32", "--montage", "0", "--seed", "1", *extra]) == 0
    return [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def rows(cohort, tmp_path_factory):
    return _make(cohort, tmp_path_factory.mktemp("cov") / "pairs", "--deformed")


GROUPS = ("ventricle", "cortex", "white-matter", "csf", "brain")


def test_rows_carry_the_cohort_truth(cohort, rows):
    assert {r["kind"] for r in rows} == {"real", "disentangled", "deformed"}
    for r in rows:
        sex, sessions = _truth(cohort, r["subject"])
        prior, target = (sessions[s] for s in r["sessions"])
        assert r["sex"] == sex
        assert r["prior_age"] == pytest.approx(float(prior["age"])) and r["target_age"] == pytest.approx(float(target["age"]))
        if r["kind"] == "deformed":
            assert r["interval_years"] is None
        else:
            assert r["interval_years"] == pytest.approx(float(target["age"]) - float(prior["age"]), abs=1e-3)
        for g in GROUPS:
            assert r["prior_volumes_mm3"][g] == pytest.approx(float(prior[f"{g}_mm3"]), rel=1e-6)
            if r["kind"] == "real":
                assert r["target_volumes_mm3"][g] == pytest.approx(float(target[f"{g}_mm3"]), rel=1e-6)
            elif r["rates"][g] is not None:  # made targets: the prior's volumes changed by the row's rates
                want = float(prior[f"{g}_mm3"]) * (1 + r["rates"][g] / 100)
                assert r["target_volumes_mm3"][g] == pytest.approx(want, rel=1e-6)
    # a disentangled row keeps its structure's real target volume (same change as the real pair)
    real = {(r["subject"], tuple(r["sessions"])): r for r in rows if r["kind"] == "real"}
    for r in rows:
        if r["kind"] == "disentangled":
            s = r["structure"]
            ref = real[(r["subject"], tuple(r["sessions"]))]["target_volumes_mm3"][s]
            assert r["target_volumes_mm3"][s] == pytest.approx(ref, rel=0.01)


def test_covariates_come_from_derivative_sidecars_and_unlabelled_groups_are_null(cohort, tmp_path, cli):
    """A derivatives folder that records a group as not labelled (null) gives null volumes, and
    a described group the segmenter does not label is a one-line error naming the segmenter."""
    import shutil

    from brainsynth_cli.main import run

    labels = tmp_path / "labels"
    shutil.copytree(cohort / "derivatives" / "brainsynth-truth", labels)
    for dseg in labels.glob("sub-*/ses-*/anat/*_dseg.nii.gz"):
        sidecar = dseg.with_name(dseg.name.replace(".nii.gz", ".json"))
        subject, session = dseg.name.split("_")[:2]
        _, sessions = _truth(cohort, subject)
        vols = {g: float(sessions[session][f"{g}_mm3"]) for g in GROUPS}
        sidecar.write_text(json.dumps({"segmenter": "atlas", "structures_mm3": {**vols, "hippocampus": None}}))
    out = tmp_path / "pairs"
    assert run(["make-pairs", str(cohort), "-o", str(out), "--labels", str(labels), "--slices", "1", "--size", "32",
                "--montage", "0", "--prompt-builder", "numeric"]) == 0
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert rows and all(r["prior_volumes_mm3"]["hippocampus"] is None and r["target_volumes_mm3"]["hippocampus"] is None
                        for r in rows)
    assert all(r["sex"] in ("F", "M") and r["prior_age"] is not None for r in rows)
    rules = tmp_path / "hippo.toml"
    rules.write_text('[structures.hippocampus]\nlabels = [17, 53]\n[[structures.hippocampus.intervals]]\n'
                     'name = "loss"\nmax = -2\nmax_closed = true\nphrase = "hippocampal atrophy"\n')
    res = cli("make-pairs", cohort, "-o", tmp_path / "hippo", "--labels", labels, "--rules", rules,
              "--slices", "1", "--size", "32", "--montage", "0")
    assert res.exit_code == 2 and not (tmp_path / "hippo").exists()
    err = res.stderr.strip()
    assert len(err.splitlines()) == 1
    assert "structure group 'hippocampus' (labels 17, 53) is not labelled by segmenter 'atlas'" in err and "freesurfer" in err


def test_unknown_age_and_sex_are_null_not_invented(cohort, tmp_path):
    import shutil

    data = tmp_path / "bids"
    shutil.copytree(cohort, data, ignore=shutil.ignore_patterns("derivatives"))
    (data / "participants.tsv").write_text("participant_id\n" + "".join(
        f"{d.name}\n" for d in sorted(data.glob("sub-*")) if d.is_dir()))
    for tsv in data.glob("sub-*/sub-*_sessions.tsv"):
        with open(tsv, newline="") as fh:
            ids = [r["session_id"] for r in csv.DictReader(fh, delimiter="\t")]
        tsv.write_text("session_id\tage\n" + "".join(f"{i}\tn/a\n" for i in ids))
    rows = _make(data, tmp_path / "pairs", labels=cohort / "derivatives" / "brainsynth-truth")
    assert rows and all(r["prior_age"] is None and r["target_age"] is None and r["sex"] is None and r["interval_years"] is None
                        for r in rows)
    assert all(r["prior_volumes_mm3"]["ventricle"] > 0 for r in rows)


def test_sidecar_label_volumes_follow_the_rules(cohort, tmp_path):
    """A sidecar with per-label volumes (as `segment --bids` writes): each group of make-pairs'
    own rules is summed from them, and a group of ids the segmenter does not produce is null."""
    import shutil

    import numpy as np

    from brainsynth_cli.images import read_labels

    labels = tmp_path / "labels"
    shutil.copytree(cohort / "derivatives" / "brainsynth-truth", labels)
    left = {}
    for dseg in labels.glob("sub-*/ses-*/anat/*_dseg.nii.gz"):
        lab = read_labels(dseg)
        ids, counts = np.unique(lab.data, return_counts=True)
        per = {str(int(i)): float(c) * lab.voxel_volume for i, c in zip(ids, counts) if i > 0}
        left[tuple(dseg.name.split("_")[:2])] = per.get("4", 0.0)
        dseg.with_name(dseg.name.replace(".nii.gz", ".json")).write_text(json.dumps(
            {"segmenter": "truth", "structures_mm3": {"ventricle": 1.0}, "labels_mm3": per,
             "labels_produced": sorted(int(i) for i in per)}))
    rules = tmp_path / "rules.toml"
    rules.write_text('[structures.left-ventricle]\nlabels = [4]\n')
    out = tmp_path / "pairs"
    rows = _make(cohort, out, "--rules", str(rules), labels=labels)
    assert rows
    for r in rows:
        assert r["prior_volumes_mm3"]["left-ventricle"] == pytest.approx(left[(r["subject"], r["sessions"][0])])
        assert r["prior_volumes_mm3"]["hippocampus"] is None  # 17, 53 are not among the labels produced
        assert r["prior_volumes_mm3"]["ventricle"] > 1.0  # summed from the labels, not the stale group table
