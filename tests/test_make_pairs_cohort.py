"""Acceptance on a simulated cohort (brainsynth_plugins.simulate, ground-truth labels):
disentangled rows change their structure as the real pair does, and nothing else described."""

from __future__ import annotations

import csv
import json

import pytest


@pytest.fixture(scope="session")
def simulated(tmp_path_factory):
    cohort = pytest.importorskip("brainsynth_plugins.simulate.cohort")
    root = tmp_path_factory.mktemp("cohort") / "bids"
    cohort.simulate_cohort(root, subjects=3, sessions=2, resolution=2.0, seed=1)
    return root, root / "derivatives" / "brainsynth-truth"


@pytest.fixture(scope="session")
def made(simulated, tmp_path_factory):
    from brainsynth_cli.main import run

    root, truth = simulated
    out = tmp_path_factory.mktemp("cohort-pairs") / "out"
    assert run(["make-pairs", str(root), "-o", str(out), "--labels", str(truth), "--blender", "poisson",
                "--slices", "6", "--size", "64", "--seed", "1"]) == 0
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    return out, rows


def test_real_rates_are_the_simulated_ones(simulated, made):
    root, _ = simulated
    _, rows = made
    real = [r for r in rows if r["kind"] == "real"]
    assert real
    for r in real:
        with open(root / r["subject"] / f"{r['subject']}_sessions.tsv", newline="") as fh:
            truth = {row["session_id"]: row for row in csv.DictReader(fh, delimiter="\t")}
        target = truth[r["sessions"][1]]
        for group in ("ventricle", "cortex"):
            assert r["rates"][group] == pytest.approx(float(target[f"{group}_rate_realised"]), abs=0.01)


def test_disentangled_rows_change_one_structure(made):
    """Each disentangled row's realised rate for S equals the real pair's within 1 pp; every
    other described structure, and white matter, stays within 0.5 pp of zero. (CSF fills what
    the cortex gives up and "brain" contains the cortex, so those follow S by construction.)"""
    _, rows = made
    real = {(r["subject"], tuple(r["sessions"])): r for r in rows if r["kind"] == "real"}
    dis = [r for r in rows if r["kind"] == "disentangled"]
    structures = {r["structure"] for r in dis}
    assert structures == {"ventricle", "cortex"}  # the cohort's patterns give both kinds
    for r in dis:
        ref = real[(r["subject"], tuple(r["sessions"]))]
        s = r["structure"]
        assert abs(r["rates"][s] - ref["rates"][s]) <= 1.0
        for other in ({"ventricle", "cortex"} - {s}) | {"white-matter"}:
            assert abs(r["rates"][other]) <= 0.5, (r["subject"], s, other, r["rates"][other])
        assert r["intervals"][s] == ref["intervals"][s]
        assert r["edit_prompt"] == {"ventricle": f"{ref['intervals']['ventricle']} ventricle enlargement",
                                    "cortex": "cortex atrophy"}[s]


def test_blend_keeps_the_prior_outside_omega(made):
    """Outside Ω the disentangled target is the prior (same PNG bytes far from the structure)."""
    import numpy as np

    from brainsynth_cli.images import read_png

    out, rows = made
    r = next(r for r in rows if r["kind"] == "disentangled" and r["structure"] == "ventricle")
    prior, _ = read_png(out / r["input_image_file_name"])
    edited, _ = read_png(out / r["edited_image_file_name"])
    real, _ = read_png(out / r["edited_image_file_name"].replace("dis-ventricle", "real"))
    changed = np.abs(edited.astype(int) - prior.astype(int)) > 65535 * 0.02
    # the change sits in the middle of the slice (the ventricles), not at the cortex
    yy, xx = np.nonzero(changed)
    assert changed.any() and np.all(np.abs(xx - 32) < 20) and np.all(np.abs(yy - 32) < 24)
    assert np.abs(real.astype(int) - prior.astype(int)).mean() > np.abs(edited.astype(int) - prior.astype(int)).mean()


def test_datasets_columns_on_the_cohort(made):
    datasets = pytest.importorskip("datasets")
    out, rows = made
    train = datasets.load_dataset("imagefolder", data_dir=str(out))["train"]
    assert len(train) == len(rows)
    assert train.column_names[:3] == ["input_image", "edited_image", "edit_prompt"]
