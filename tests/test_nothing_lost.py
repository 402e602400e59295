"""Nothing lost, nothing written where it should not be: one test per class of failure, each
asserting the exit status, the one-line message and that pre-existing files are byte-identical
afterwards (the tree is hashed before and after)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from badinputs import (
    bids,
    brain,
    huge_nifti,
    make_corpus,
    malicious_pickle,
    pairs_folder,
    save_nifti,
    traversal_manifest,
    tree_state,
)
from conftest import run_brainsynth, subprocess_env


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("nothing-lost"))


def one_line(res, *words: str, code: int = 2) -> str:
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------------------------------------
# data loss
# ---------------------------------------------------------------------------------------------
def test_an_output_that_is_an_input_is_refused(corpus, tmp_path, cli, monkeypatch):
    import shutil

    img = tmp_path / "t1.nii.gz"
    shutil.copyfile(corpus.image, img)
    mask = tmp_path / "mask.nii.gz"
    shutil.copyfile(corpus.labels, mask)
    os.symlink(img, tmp_path / "link.nii.gz")
    monkeypatch.chdir(tmp_path)
    before = tree_state(tmp_path)
    one_line(cli("segment", img, "-o", img), "t1.nii.gz: is the input", "never writes over its inputs")
    one_line(cli("segment", "t1.nii.gz", "-o", "link.nii.gz"), "is the input")  # through a symbolic link
    one_line(cli("segment", "t1.nii.gz", "-o", "./x/../t1.nii.gz"), "is the input")  # a relative path
    one_line(cli("blend", img, img, mask, "-o", img), "is the input")
    one_line(cli("blend", img, img, mask, "-o", "link.nii.gz"), "is the input")
    one_line(cli("segment", img, "-o", tmp_path / "a.nii.gz", "--qc", tmp_path / "q.png", "--volumes", tmp_path / "a.nii.gz"),
             ".csv or .json")
    assert tree_state(tmp_path) == before


def test_a_failing_command_replaces_no_existing_output(corpus, tmp_path, cli):
    """`segment IMG -o labels --volumes v --qc BAD/qc.png` used to replace labels and volumes, then fail."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "labels.nii.gz").write_bytes(b"earlier labels")
    (out / "volumes.csv").write_text("earlier volumes\n")
    (tmp_path / "afile").write_text("a file, not a folder\n")
    before = tree_state(tmp_path)
    one_line(cli("segment", corpus.image, "-o", out / "labels.nii.gz", "--volumes", out / "volumes.csv",
                 "--qc", tmp_path / "afile" / "qc.png"), "afile/qc.png: cannot be written", "is not a folder")
    assert tree_state(tmp_path) == before


def test_outputs_are_written_all_or_nothing(tmp_path, monkeypatch):
    from brainsynth_cli.errors import InputError
    from brainsynth_cli.outputs import staged_outputs

    a, b, c = tmp_path / "a.txt", tmp_path / "sub" / "b.nii.gz", tmp_path / "c.png"
    a.write_text("old a")
    c.write_text("old c")
    before = tree_state(tmp_path)
    with pytest.raises(RuntimeError), staged_outputs([a, b, c]) as st:  # the third writer fails
        st[a].write_text("new a")
        st[b].write_text("new b")
        assert st[b].name.endswith(".nii.gz")
        raise RuntimeError("writer failed")
    assert tree_state(tmp_path) == before  # nothing replaced, no temporary file, no new folder
    real_replace = os.replace
    calls = []

    def failing_replace(src, dst):
        calls.append(dst)
        if Path(dst) == c:
            raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(InputError, match="no output was changed"), staged_outputs([a, c]) as st:
        st[a].write_text("new a")
        st[c].write_text("new c")
    monkeypatch.undo()
    assert tree_state(tmp_path) == before and a in calls  # a was replaced, then put back
    with staged_outputs([a, b]) as st:
        st[a].write_text("new a")
        st[b].write_text("new b")
    assert a.read_text() == "new a" and b.read_text() == "new b" and c.read_text() == "old c"


def test_derivatives_never_go_into_the_raw_dataset(corpus, tmp_path, cli):
    ds, _ = bids(tmp_path, {("sub-01", "ses-01"): corpus.image})
    (ds / "dataset_description.json").write_text('{"Name": "my study", "BIDSVersion": "1.9.0", "DatasetType": "raw"}\n')
    before = tree_state(tmp_path)
    one_line(cli("segment", ds, "--bids", "-o", ds, "--overwrite"), "dataset's own folder", "derivatives/brainsynth-segment")
    one_line(cli("segment", ds, "--bids", "-o", ds / "sub-01"), "inside the raw dataset")
    one_line(cli("make-pairs", ds, "-o", ds), "is the dataset folder")
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "dataset_description.json").write_text('{"Name": "another study", "DatasetType": "raw"}\n')
    before = tree_state(tmp_path)
    one_line(cli("segment", ds, "--bids", "-o", other, "--overwrite"), "belongs to another dataset")
    assert tree_state(tmp_path) == before


def test_two_runs_into_one_folder(tmp_path):
    """The second run gets the one-line error naming the first run's process; the folder holds
    exactly what the first run alone writes."""
    env = subprocess_env(OMP_NUM_THREADS="1")

    def simulate(out, seed):
        return [sys.executable, "-m", "brainsynth_cli.main", "simulate", "-o", str(out), "--subjects", "6",
                "--sessions", "2", "--resolution", "4", "--seed", str(seed)]

    first = subprocess.Popen(simulate(tmp_path / "x", 0), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "x" / ".brainsynth.lock").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    second = subprocess.run(simulate(tmp_path / "x", 1), env=env, capture_output=True, text=True, timeout=120, check=False)
    first.wait(timeout=120)
    assert first.returncode == 0, first.stderr.read()
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert "is in use by another brainsynth run (simulate, process " + str(first.pid) + ")" in second.stderr
    alone = subprocess.run(simulate(tmp_path / "y", 0), env=env, capture_output=True, text=True, timeout=120, check=False)
    assert alone.returncode == 0
    assert tree_state(tmp_path / "x") == tree_state(tmp_path / "y")  # nothing mixed in, no lock left


def test_the_lock_names_its_holder_across_processes(tmp_path, corpus, cli):
    """A run holding `train -o X` (here: another process) makes `train`, `make-pairs` and co. refuse X."""
    pairs = pairs_folder(tmp_path / "pairs", corpus.good_png)
    model = tmp_path / "model"
    holder = subprocess.Popen(
        [sys.executable, "-c", ("import os, time; from brainsynth_cli.outputs import FolderLock; "
                                f"os.makedirs({str(model)!r}); FolderLock({str(model)!r}, command='train').acquire(); "
                                "print('held', flush=True); time.sleep(60)")],
        env=subprocess_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree_state(tmp_path)
        one_line(cli("train", pairs, "-o", model, "--device", "cpu"), f"in use by another brainsynth run (train, process {holder.pid})")
        assert tree_state(tmp_path) == before
    finally:
        holder.kill()
        holder.wait()


def test_shards_share_a_folder_and_exclude_whole_runs(tmp_path):
    from brainsynth_cli.errors import InputError
    from brainsynth_cli.outputs import FolderLock

    a = FolderLock(tmp_path, command="make-pairs --shard 1/2", shared=True, slot="shard-1-of-2").acquire()
    b = FolderLock(tmp_path, command="make-pairs --shard 2/2", shared=True, slot="shard-2-of-2").acquire()
    with pytest.raises(InputError, match=r"make-pairs --shard 1/2, process \d+"):
        FolderLock(tmp_path, command="make-pairs --shard 1/2", shared=True, slot="shard-1-of-2").acquire()
    with pytest.raises(InputError, match="in use by another brainsynth run"):
        FolderLock(tmp_path, command="make-pairs").acquire()
    a.release()
    b.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # the last one out removes the lock files
    with FolderLock(tmp_path, command="make-pairs"):
        pass


# ---------------------------------------------------------------------------------------------
# security
# ---------------------------------------------------------------------------------------------
def test_traversal_ids_are_refused_and_nothing_is_written_outside(corpus, tmp_path, cli):
    from brainsynth_cli.datasets import bids_entity
    from brainsynth_cli.errors import InputError
    from brainsynth_cli.outputs import check_inside

    manifest = traversal_manifest(tmp_path / "data" / "m.csv", corpus.image, corpus.labels, subject="x/../../../../escaped")
    before = tree_state(tmp_path)
    one_line(cli("segment", manifest, "--bids", "-o", tmp_path / "out" / "deriv"), "sub-x/../../../../escaped", "not a BIDS label")
    one_line(cli("make-pairs", manifest, "-o", tmp_path / "out" / "pairs"), "not a BIDS label")
    assert tree_state(tmp_path) == before
    for bad in ("x/..", "../x", "a_b", "a b", "", "sub-", "ü"):
        with pytest.raises(InputError):
            bids_entity(bad, "sub-", tmp_path)
    assert bids_entity("001", "sub-", tmp_path) == "sub-001" and bids_entity("ses-BL2", "ses-", tmp_path) == "ses-BL2"
    with pytest.raises(InputError, match="outside"):
        check_inside(tmp_path / "out" / "sub-x" / ".." / ".." / "y", tmp_path / "out")
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path, tmp_path / "out" / "up")
    with pytest.raises(InputError, match="outside"):
        check_inside(tmp_path / "out" / "up" / "y", tmp_path / "out")


def test_metadata_paths_that_leave_the_pairs_folder_are_refused(corpus, tmp_path, cli):
    from brainsynth_cli.errors import InputError
    from brainsynth_cli.pairs_folder import read_pairs_folder

    (tmp_path / "secret.png").write_bytes(corpus.good_png.read_bytes())
    cases = {"absolute": str(tmp_path / "secret.png"), "dotdot": "images/../../secret.png", "symlink": "images/up/secret.png"}
    for name, path in cases.items():
        p = pairs_folder(tmp_path / name, corpus.good_png, [(path, "images/b.png")])
        if name == "symlink":
            os.symlink(tmp_path, p / "images" / "up")
        with pytest.raises(InputError, match="leaves the pairs folder"):
            read_pairs_folder(p)
        before = tree_state(tmp_path)
        one_line(cli("train", p, "-o", tmp_path / f"model-{name}", "--device", "cpu"), "leaves the pairs folder")
        assert tree_state(tmp_path) == before
    assert len(read_pairs_folder(pairs_folder(tmp_path / "fine", corpus.good_png)).rows) == 1


def test_a_crafted_model_folder_never_runs_code(corpus, tmp_path, cli):
    """Pickled weights in a model folder, a pretrained folder or a text-encoder folder are refused
    before any loader sees them; the pickle would create ``marker``."""
    pytest.importorskip("diffusers")
    from brainsynth_plugins.ip2p.model import IP2PModel, check_model_dir

    from brainsynth_cli.errors import InputError

    marker = tmp_path / "PWNED"
    model = tmp_path / "ip2p-model"
    (model / "tokenizer").mkdir(parents=True)
    for f in ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json"):
        (model / f).parent.mkdir(parents=True, exist_ok=True)
        (model / f).write_text("{}")
    (model / "brainsynth.json").write_text(json.dumps({"format": "brainsynth-model", "generator": "instruct-pix2pix",
                                                       "resolution": 32, "channels": 1}))
    for sub, name in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("text_encoder", "model")):
        (model / sub / f"{name}.safetensors").write_bytes(b"")
    malicious_pickle(model / "unet" / "diffusion_pytorch_model.bin", marker)
    before = tree_state(tmp_path)
    with pytest.raises(InputError, match="pickled weights"):
        check_model_dir(model)
    with pytest.raises(InputError, match="pickled weights"):
        IP2PModel(model, "cpu")
    one_line(cli("generate", corpus.pickled_model, "-o", tmp_path / "samples"), "diffusion_pytorch_model.bin", "pickled weights")
    # a pretrained Stable Diffusion folder and a text encoder folder whose weights are pickles
    pretrained = tmp_path / "sd"
    for sub in ("unet", "vae", "text_encoder"):
        (pretrained / sub).mkdir(parents=True)
        (pretrained / sub / "config.json").write_text("{}")
    malicious_pickle(pretrained / "unet" / "diffusion_pytorch_model.bin", marker)
    malicious_pickle(pretrained / "text_encoder" / "pytorch_model.bin", marker)
    pairs = pairs_folder(tmp_path / "pairs", corpus.good_png)
    before = tree_state(tmp_path)
    one_line(cli("train", pairs, "-o", tmp_path / "m1", "--preset", "sd15", "--pretrained", pretrained, "--device", "cpu"),
             "pickled weights")
    one_line(cli("train", pairs, "-o", tmp_path / "m2", "--text-encoder", "clip", "--text-encoder-path", pretrained / "text_encoder",
                 "--device", "cpu"), "pytorch_model.bin", "pickled weights")
    assert tree_state(tmp_path) == before
    assert not marker.exists() and not corpus.marker.exists()


# ---------------------------------------------------------------------------------------------
# resume and recovery
# ---------------------------------------------------------------------------------------------
def _train_args(pairs, out):
    from test_train_pairs import FAST

    return ["train", pairs, "-o", out, *FAST, "--set", "vae_steps=2", "--set", "unet_steps=2", "--checkpoint-every", "50",
            "--text-encoder", "clip", "--seed", "4"]


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_step_0(tmp_path, cli, monkeypatch):
    """Ctrl-C (or a kill) after `checkpoints/run.json` and before any checkpoint: --resume starts
    at step 0 and ends with the weights of an uninterrupted run."""
    pytest.importorskip("diffusers")

    from test_train_pairs import interrupting_bar, make_pairs, one_thread

    import brainsynth_cli.progress

    pairs = make_pairs(tmp_path / "pairs", size=32, subjects=2, slices=1)
    real_bar = brainsynth_cli.progress.progress_bar

    interrupting = interrupting_bar("stage 1", 1)

    with one_thread():
        assert cli(*_train_args(pairs, tmp_path / "a")).exit_code == 0
        monkeypatch.setattr(brainsynth_cli.progress, "progress_bar", interrupting)
        line = one_line(cli(*_train_args(pairs, tmp_path / "b")), "interrupted", "kept", "--resume", code=130)
        assert line.startswith("brainsynth: interrupted;")
        monkeypatch.setattr(brainsynth_cli.progress, "progress_bar", real_bar)
        assert (tmp_path / "b" / "checkpoints" / "run.json").is_file() and not list((tmp_path / "b" / "checkpoints").glob("*-0*"))
        kept = tree_state(tmp_path / "pairs")
        one_line(cli(*_train_args(pairs, tmp_path / "b")), "exists and is not empty", "--resume")
        res = cli(*_train_args(pairs, tmp_path / "b"), "--resume")
        assert res.exit_code == 0, res.stderr
    for part in ("vae/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.safetensors"):
        assert (tmp_path / "a" / part).read_bytes() == (tmp_path / "b" / part).read_bytes(), part
    assert (tmp_path / "a" / "logs" / "loss.csv").read_text() == (tmp_path / "b" / "logs" / "loss.csv").read_text()
    assert tree_state(tmp_path / "pairs") == kept


def test_an_error_found_after_the_start_leaves_nothing(corpus, tmp_path, cli):
    """A corrupt PNG, --lr nan, --set vae_lr=abc: refused before checkpoints/run.json is written."""
    pairs = pairs_folder(tmp_path / "pairs", corpus.good_png)
    (pairs / "images" / "b.png").write_bytes(corpus.good_png.read_bytes()[:200])
    before = tree_state(tmp_path)
    one_line(cli("train", pairs, "-o", tmp_path / "m", "--device", "cpu", "--resolution", "32"), "b.png", "cannot be read as PNG")
    good = pairs_folder(tmp_path / "good-pairs", corpus.good_png)
    before = tree_state(tmp_path)
    one_line(cli("train", good, "-o", tmp_path / "m", "--lr", "nan"), "--lr must be a finite number")
    one_line(cli("train", good, "-o", tmp_path / "m", "--set", "vae_lr=abc"), "--set vae_lr='abc'")
    one_line(cli("train", good, "-o", tmp_path / "m", "--set", "vae_steps=-1"), "--set vae_steps=-1")
    assert tree_state(tmp_path) == before and not (tmp_path / "m").exists()


def test_demo_resumes_train_whenever_a_run_file_exists(tmp_path, monkeypatch):
    """The demo used to add --resume whenever model/ was not empty (a run killed in its first steps
    never resumed; a stale lock file alone made it fail)."""
    from typer.testing import CliRunner

    import brainsynth_cli.main
    from brainsynth_cli.main import build_app

    calls = []
    monkeypatch.setattr(brainsynth_cli.main, "run", lambda args: calls.append(list(args)) or 0)
    app = build_app()
    model = tmp_path / "demo" / "model"
    model.mkdir(parents=True)
    (model / ".brainsynth.lock").write_text("")  # left by a killed run: no run yet
    assert CliRunner().invoke(app, ["demo", "-o", str(tmp_path / "demo")]).exit_code == 0
    train = [c for c in calls if c[0] == "train"]
    assert train and "--resume" not in train[-1]
    (model / "checkpoints").mkdir()
    (model / "checkpoints" / "run.json").write_text("{}")  # killed before its first checkpoint
    calls.clear()
    assert CliRunner().invoke(app, ["demo", "-o", str(tmp_path / "demo")]).exit_code == 0
    assert [c for c in calls if c[0] == "train"][-1][-1] == "--resume"
    calls.clear()  # the 3D chain has its own model folder: nothing of the 2D run is resumed there
    assert CliRunner().invoke(app, ["demo", "--3d", "-o", str(tmp_path / "demo")]).exit_code == 0
    train = [c for c in calls if c[0] == "train"][-1]
    assert "--resume" not in train and "--dim" in train and str(tmp_path / "demo" / "model3d") in train


def test_an_unreadable_latest_checkpoint_falls_back_to_the_previous(tmp_path, tmp_path_factory, cli):
    pytest.importorskip("diffusers")
    import shutil

    from test_train_pairs import FAST, one_thread, tiny_model

    pairs, done = tiny_model(tmp_path_factory)  # 24 stage-2 steps, checkpoint at 12
    run = tmp_path / "run"
    run.mkdir()
    for part in ("checkpoints", "vae", "logs", "validation"):
        shutil.copytree(done / part, run / part)
    ck = run / "checkpoints"
    shutil.copytree(ck / "unet-0000012", ck / "unet-0000018")
    model_file = ck / "unet-0000018" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])  # truncated
    kept = tree_state(pairs)
    args = ["train", pairs, "-o", run, *FAST, "--resume"]
    with one_thread():
        res = cli(*args)
    assert res.exit_code == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    warnings = [ln for ln in lines if " INFO " not in ln]  # info lines: the checkpoint resumed from
    assert any(f"INFO resuming from checkpoint {ck / 'unet-0000012'} (stage unet, step 12)" in ln for ln in lines), lines
    assert len(warnings) == 1 and "warning: checkpoint unet-0000018 is unreadable" in warnings[0]
    assert "model.safetensors is truncated" in warnings[0] and "resuming from unet-0000012" in warnings[0]
    name = "unet/diffusion_pytorch_model.safetensors"
    assert (run / name).read_bytes() == (done / name).read_bytes()
    assert (ck / ".unreadable-unet-0000018").is_dir() and tree_state(pairs) == kept
    # no readable checkpoint at all: the one-line error, nothing changed
    only = tmp_path / "only"
    only.mkdir()
    shutil.copytree(run / "vae", only / "vae")
    (only / "checkpoints").mkdir()
    shutil.copy(ck / "run.json", only / "checkpoints" / "run.json")
    shutil.copytree(ck / ".unreadable-unet-0000018", only / "checkpoints" / "unet-0000018")
    before = tree_state(tmp_path)
    one_line(cli(*args[:3], only, "--resume"), "unet-0000018: cannot be resumed from", "model.safetensors is truncated")
    assert tree_state(tmp_path) == before


# ---------------------------------------------------------------------------------------------
# resource limits and absurd values
# ---------------------------------------------------------------------------------------------
def test_a_huge_header_is_refused_before_any_data_is_read(tmp_path, cli):
    import tracemalloc

    from brainsynth_cli.errors import InputError
    from brainsynth_cli.images import read_labels, read_volume

    path = huge_nifti(tmp_path / "huge.nii", (100_000, 100_000, 100_000))
    tracemalloc.start()
    try:
        for reader in (read_volume, read_labels):
            with pytest.raises(InputError, match=r"header claims 100000 x 100000 x 100000 voxels"):
                reader(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6
    img, _ = brain()
    save_nifti(tmp_path / "ok.nii.gz", img)
    before = tree_state(tmp_path)
    one_line(cli("segment", path, "-o", tmp_path / "l.nii.gz"), "header claims", "BRAINSYNTH_MAX_VOXELS")
    one_line(cli("blend", tmp_path / "ok.nii.gz", path, tmp_path / "ok.nii.gz", "-o", tmp_path / "o.nii.gz"), "header claims")
    assert tree_state(tmp_path) == before


def test_absurd_numbers_are_refused_before_work(corpus, tmp_path, cli):
    from brainsynth_cli.errors import UserError
    from brainsynth_cli.limits import check_number, check_settings

    pairs = pairs_folder(tmp_path / "pairs", corpus.good_png)
    before = tree_state(tmp_path)
    one_line(cli("train", pairs, "-o", tmp_path / "m", "--set", "vae_steps=-1"), "vae_steps=-1", "integer in [1")
    one_line(cli("train", pairs, "-o", tmp_path / "m", "--set", "image_guidance_scale=nan"), "image_guidance_scale")
    one_line(cli("train", pairs, "-o", tmp_path / "m", "--set", "vae.norm_num_groups=7"), "model sizes do not fit together")
    one_line(cli("train", pairs, "-o", tmp_path / "m", "--set", "vae.colour=1"), "unknown setting")
    one_line(cli("generate", corpus.pickled_model, "-o", tmp_path / "g", "-n", "100000000"), "-n must be an integer in [1, 10000]")
    one_line(cli("make-pairs", tmp_path, "-o", tmp_path / "p", "--size", "100000"), "--size")
    assert tree_state(tmp_path) == before
    for value in ("nan", "inf", "-inf", "abc", True, None):
        with pytest.raises(UserError):
            check_number("--x", value, low=0, high=1)
    assert check_number("--x", "0.5", low=0, high=1) == 0.5
    with pytest.raises(UserError, match="ema"):
        check_settings({"ema": "yes"}, {"ema": ("bool",)})


def test_ctrl_c_says_what_was_kept_and_how_to_resume(tmp_path):
    env = subprocess_env(OMP_NUM_THREADS="1")
    out = tmp_path / "cohort"
    cmd = [sys.executable, "-m", "brainsynth_cli.main", "simulate", "-o", str(out), "--subjects", "12", "--sessions", "2",
           "--resolution", "4"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 90
    while not (out / "sub-002" / "sub-002_sessions.tsv").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("brainsynth: interrupted;"), err
    assert "finished subjects" in lines[0] and "kept" in lines[0] and "run the same command again" in lines[0]
    kept = {k: v for k, v in tree_state(out).items() if k.startswith(("sub-001", "sub-002"))}
    assert not (out / ".brainsynth.lock").exists()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0 and "already there" in res.stdout, res.stderr
    after = tree_state(out)
    assert all(after[k] == v for k, v in kept.items())  # finished subjects untouched by the resume


# ---------------------------------------------------------------------------------------------
# plugins
# ---------------------------------------------------------------------------------------------
CLASH = """
from brainsynth_cli import hookimpl

@hookimpl
def register_commands(app):
    @app.command("segment")
    def segment():
        '''Not the real segment.'''
        print("hijacked")

    @app.command("hello-clash")
    def hello():
        print("hello")
"""


def test_a_plugin_command_named_like_another_is_refused(tmp_path):
    from test_plugins import make_dist

    make_dist(tmp_path, "clash-plugin", CLASH, ep_name="clash")
    (tmp_path / "b").mkdir()
    make_dist(tmp_path / "b", "clash-two", CLASH.replace('"segment"', '"hello-clash-two"'), ep_name="clash2")
    res = run_brainsynth("segment", "--help", PYTHONPATH=f"{tmp_path}{os.pathsep}{tmp_path / 'b'}")
    assert res.returncode == 0 and "--bids" in res.stdout and "hijacked" not in res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 2, res.stderr
    assert "command 'segment' is registered by both the kernel (built-in) and plugin 'clash'" in lines[0]
    assert "command 'hello-clash' is registered by both plugin 'clash' and plugin 'clash2'" in lines[1]
    res = run_brainsynth("hello-clash", PYTHONPATH=f"{tmp_path}{os.pathsep}{tmp_path / 'b'}")
    assert res.returncode == 0 and res.stdout.strip() == "hello"


def test_a_plugin_that_exits_at_import_is_reported_and_left_out(tmp_path):
    from test_plugins import make_dist

    make_dist(tmp_path, "exiting-plugin", "import sys\nsys.exit(3)\n", ep_name="exiting")
    make_dist(tmp_path, "raising-plugin", "raise BaseException('odd')\n", ep_name="raising")
    res = run_brainsynth("--help", PYTHONPATH=str(tmp_path))
    assert res.returncode == 0 and "segment" in res.stdout
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 2, res.stderr
    assert "plugin 'exiting' failed to load and is left out (SystemExit: 3)" in lines[0]
    assert "plugin 'raising' failed to load and is left out (BaseException: odd)" in lines[1]
    report = {p["name"]: p for p in json.loads(run_brainsynth("plugins", "--json", PYTHONPATH=str(tmp_path)).stdout)["plugins"]}
    assert report["exiting"]["status"] == "failed" and report["raising"]["status"] == "failed"


def test_a_failing_demo_step_gives_one_error_line(tmp_path, monkeypatch, capsys):
    """The failing step prints its own one-line error; the demo only says how to resume (stdout) and
    exits with the step's status."""
    import brainsynth_cli.main
    from brainsynth_cli.main import run as real_run

    def fail_segment(args):
        if args[0] == "segment":
            return real_run(["segment", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "x.nii.gz")])
        return 0

    monkeypatch.setattr(brainsynth_cli.main, "run", fail_segment)
    code = real_run(["demo", "-o", str(tmp_path / "demo")])
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("brainsynth: error:")]
    assert code == 2 and len(errors) == 1 and "missing.nii.gz" in errors[0], err
    assert "segment failed" in out and f"brainsynth demo -o {tmp_path / 'demo'}" in out


def test_demo_into_a_file_is_one_line_naming_it(tmp_path, capsys):
    """`demo -o FILE`: one line naming the file and the fix, exit 2, the file left as it was."""
    from brainsynth_cli.main import run

    f = tmp_path / "notes.txt"
    f.write_text("keep me")
    code = run(["demo", "-o", str(f)])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == f"brainsynth: error: {f}: is a file, not a folder; give a folder for the demo's outputs (-o DIR)"
    assert f.read_text() == "keep me"
