"""benchmarks/gpu.sh --dry-run: the GPU check runs end to end on the CPU and writes a complete result.

The GPU run itself needs a GPU; the dry run goes through the same code (data, both training
stages and the bare loops, edit per slice and per volume, 3D generate) at toy sizes, so the
check does not rot while no GPU is at hand.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from conftest import REPO, subprocess_env

pytest.importorskip("torch")
pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check") / "result.json"
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu.sh"), "--dry-run", "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=300, env=subprocess_env(PYTHON=sys.executable, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_every_section_is_there(dry_run):
    r, _ = dry_run
    assert r["format"] == "brainsynth-gpu-check" and r["mode"] == "dry-run"
    assert r["machine"]["device"] == "cpu"
    for key in ("machine", "data", "train", "edit", "generate_3d", "wall_s", "not_measured"):
        assert key in r, key
    assert r["data"]["pairs"]["train_rows"] > 0
    assert _positive(r["wall_s"])


@pytest.mark.slow
def test_training_is_measured_against_the_bare_loop(dry_run):
    t = dry_run[0]["train"]
    assert t["preset"] == "base" and t["precision"] == "bf16"
    for stage in ("vae", "unet"):
        ours, bare, ratio = t[stage]["brainsynth"], t[stage]["bare"], t[stage]["ratio"]
        assert _positive(ours["samples_per_s"]) and _positive(bare["samples_per_s"])
        assert ours["steps"] == bare["steps"] and ours["batch"] == bare["batch"]
        assert ratio["samples_per_s"] == pytest.approx(ours["samples_per_s"] / bare["samples_per_s"])


@pytest.mark.slow
def test_cuda_only_numbers_are_null_with_a_reason(dry_run):
    r = dry_run[0]
    for stage in ("vae", "unet"):
        for side in ("brainsynth", "bare", "ratio"):
            path = f"train.{stage}.{side}.peak_gpu_mib"
            assert r["train"][stage][side]["peak_gpu_mib"] is None
            assert "CUDA" in r["not_measured"][path]
    assert len(r["not_measured"]) == 6  # nothing else is left out


@pytest.mark.slow
def test_edit_and_generate_are_timed(dry_run):
    r, stdout = dry_run
    e, g = r["edit"], r["generate_3d"]
    assert _positive(e["slice"]["s_per_slice"]) and e["slice"]["slices"] > 0
    assert _positive(e["volume"]["s_per_volume"]) and e["volume"]["slices_edited"] > 0
    assert _positive(g["ddim"]["s_per_volume"]) and _positive(g["dpmpp"]["s_per_volume"])
    assert g["ddim_over_dpmpp"] == pytest.approx(g["ddim"]["s_per_volume"] / g["dpmpp"]["s_per_volume"])
    assert "| measure | brainsynth | peer (same run) | ratio |" in stdout and "not GPU numbers" in stdout
