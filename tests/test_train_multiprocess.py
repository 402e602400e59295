"""Training on several processes (``torchrun`` / ``accelerate launch``): two CPU processes (gloo)
train both stages of the instruct-pix2pix generator into one folder, write one set of
checkpoints, and a single process resumes the run where the two stopped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_train_pairs import make_pairs

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--resolution", "32", "--device", "cpu", "--steps", "6", "--seed", "3",
         "--set", "vae.block_out_channels=16", "--set", "vae.norm_num_groups=8",
         "--set", "unet.block_out_channels=16,16,32", "--set", "unet.norm_num_groups=8",
         "--set", "validation_count=1", "--set", "validation_steps=2", "--set", "warmup_steps=2",
         "--set", "checkpoint_every=2", "--set", "lr_scheduler=linear"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "plugins"), env.get("PYTHONPATH", "")])
    return env


def _train(args: list, processes: int = 1) -> subprocess.CompletedProcess:
    if processes > 1:  # what `accelerate launch --multi_gpu` runs; on CPUs accelerate picks gloo
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    else:
        cmd = [sys.executable]
    return subprocess.run([*cmd, "-m", "brainsynth_cli.main", "train", *map(str, args)], env=_env(), capture_output=True,
                          text=True, timeout=600, check=False)


def _losses(model: Path) -> dict[tuple[str, int], tuple[float, float]]:
    rows = (model / "logs" / "loss.csv").read_text().splitlines()
    head = rows[0].split(",")
    out = {}
    for line in rows[1:]:
        r = dict(zip(head, line.split(",")))
        out[r["stage"], int(r["step"])] = (float(r["loss"]), float(r["lr"]))
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("multiprocess")
    pairs = make_pairs(d / "pairs", size=32, subjects=4, slices=2)
    one = _train([pairs, "-o", d / "one", *SMALL, "--batch-size", "4"])
    assert one.returncode == 0, one.stderr[-2000:]
    two = _train([pairs, "-o", d / "two", *SMALL, "--batch-size", "2"], processes=2)  # the same global batch
    assert two.returncode == 0, two.stderr[-3000:]
    return d, pairs, two


def test_two_processes_train_both_stages_into_one_model(runs):
    d, _, two = runs
    model = d / "two"
    assert two.stdout.count("model: ") == 1  # the main process reports; the other is quiet
    assert (model / "brainsynth.json").is_file() and (model / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert sorted(p.name for p in (model / "checkpoints").iterdir()) == ["run.json", "unet-0000002", "unet-0000004",
                                                                         "vae-0000002", "vae-0000004"]
    import json

    state = json.loads((model / "checkpoints" / "unet-0000004" / "state.json").read_text())
    assert state["processes"] == 2
    losses = _losses(model)
    assert sorted(losses) == [(s, k) for s in ("unet", "vae") for k in range(1, 7)]  # one row per step, not one per process


def test_two_process_loss_curve_follows_the_one_process_curve(runs):
    """Same data, same global batch, other noise draws on the second process: the per-step loss
    (the mean over the processes) stays within 25 % of the one-process run's, 10 % on average,
    and the learning rates are the same at every step."""
    d, _, _ = runs
    one, two = _losses(d / "one"), _losses(d / "two")
    assert one.keys() == two.keys()
    rel = [abs(two[k][0] - one[k][0]) / one[k][0] for k in one]
    assert max(rel) < 0.25 and sum(rel) / len(rel) < 0.10, rel
    assert all(two[k][1] == pytest.approx(one[k][1]) for k in one)
    for stage in ("vae", "unet"):
        assert two[stage, 6][0] < 0.8 * two[stage, 1][0]  # it learns


def test_one_process_resumes_a_two_process_run(runs):
    """A two-process run stopped after its step-4 checkpoint, resumed on one process: the schedule
    continues at the same learning rate, and the model is finished."""
    d, pairs, _ = runs
    stopped = d / "stopped"
    shutil.copytree(d / "two", stopped)
    for name in ("brainsynth.json", "model_index.json"):  # as a run killed during stage 2 leaves it
        (stopped / name).unlink()
    for name in ("unet", "scheduler", "text_encoder", "tokenizer"):
        shutil.rmtree(stopped / name)
    res = _train([pairs, "-o", stopped, "--resume"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert "written by 2 process(es), this run has 1: the schedule is re-counted" in res.stderr
    assert (stopped / "brainsynth.json").is_file()
    before, after = _losses(d / "two"), _losses(stopped)
    assert [k for k in after if k[0] == "unet"] == [("unet", k) for k in range(1, 7)]
    assert all(after["unet", k] == before["unet", k] for k in range(1, 5))  # kept from the two-process run
    assert [after["unet", k][1] for k in (5, 6)] == pytest.approx([before["unet", k][1] for k in (5, 6)])


def test_generate_trains_on_two_processes(runs):
    """--task generate (the ldm generator): two processes, one model, one loss row per step, the
    learning rates of one process's run."""
    d, pairs, _ = runs
    args = [pairs, "--task", "generate", "--dim", "2d", "--condition", "text", "--resolution", "32", "--steps", "4",
            "--device", "cpu", "--seed", "3"]
    two = _train([*args, "-o", d / "gen2", "--batch-size", "2"], processes=2)
    assert two.returncode == 0, two.stderr[-3000:]
    one = _train([*args, "-o", d / "gen1", "--batch-size", "4"])
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.stdout.count("model: ") == 1
    assert (d / "gen2" / "brainsynth.json").is_file() and not (d / "gen2" / "checkpoints").exists()
    a, b = _losses(d / "gen1"), _losses(d / "gen2")
    assert a.keys() == b.keys() == {(s, k) for s in ("vae", "unet") for k in range(1, 5)}
    assert all(b[k][1] == pytest.approx(a[k][1]) for k in a)
    assert max(abs(b[k][0] - a[k][0]) / a[k][0] for k in a) < 0.25


def test_3d_models_refuse_several_processes_in_one_line(tmp_path, monkeypatch, capsys):
    from brainsynth_cli.main import run

    pairs = make_pairs(tmp_path / "pairs", size=32, subjects=2, slices=1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code = run(["train", str(pairs), "-o", str(tmp_path / "m3"), "--dim", "3d"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--dim 3d trains on one process" in err[0]
    assert not (tmp_path / "m3").exists()
