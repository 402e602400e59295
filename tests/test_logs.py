"""Logging on stderr: -v/-q, plain progress lines off a terminal, --report-to tensorboard, Ctrl-C in train."""

from __future__ import annotations

import logging

import pytest
from typer.testing import CliRunner

from brainsynth_cli import hookimpl


class LoggingCommands:
    """Test commands: one reports progress and logs at every level, one runs it nested (as the demo does)."""

    @hookimpl
    def register_commands(self, app):
        @app.command("log-test")
        def log_test():
            from brainsynth_cli.progress import progress_bar

            log = logging.getLogger("brainsynth_plugins.logtest")
            with progress_bar("work", 3, unit="step") as progress:
                for i in range(1, 4):
                    progress(i, 3, f"loss {1 / i:.4f}")
            log.debug("a debug line")
            log.info("an info line")
            log.warning("a warning line")
            print("the result")

        @app.command("nested-test")
        def nested_test():
            from brainsynth_cli.main import run

            raise SystemExit(run(["log-test"]))


@pytest.fixture
def app(register_plugin, monkeypatch):
    from brainsynth_cli.main import build_app

    monkeypatch.setenv("BRAINSYNTH_PROGRESS_EVERY", "0")
    register_plugin(LoggingCommands(), "logging-test-plugin")
    return build_app()


def invoke(app, *args):
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.stdout, res.stderr


def test_default_shows_progress_and_info_not_debug(app):
    code, out, err = invoke(app, "log-test")
    assert code == 0 and out == "the result\n"  # stdout: results only
    lines = err.splitlines()
    assert any("INFO work: loss 0.5000; step 2/3 (67 %)" in ln for ln in lines), err
    assert any("INFO an info line" in ln for ln in lines) and any("WARNING a warning line" in ln for ln in lines)
    assert "a debug line" not in err
    assert lines[0][:4].isdigit() and lines[0][4] == "-"  # not a terminal: each line starts with the date and time


def test_quiet_silences_progress_and_info(app):
    code, out, err = invoke(app, "-q", "log-test")
    assert code == 0 and out == "the result\n"
    assert "step" not in err and "info line" not in err and "debug" not in err
    assert "a warning line" in err and len(err.splitlines()) == 1
    code, out, err = invoke(app, "-qq", "log-test")
    assert code == 0 and err == ""


def test_verbose_shows_debug_lines(app):
    code, _, err = invoke(app, "-v", "log-test")
    assert code == 0
    assert any("DEBUG a debug line" in ln for ln in err.splitlines()), err
    assert any("DEBUG brainsynth " in ln and "plugins:" in ln for ln in err.splitlines()), err


def test_a_nested_command_keeps_the_callers_quiet(app, cli):
    res = cli("-q", "nested-test")
    assert res.exit_code == 0 and "the result" in res.stdout
    assert "info line" not in res.stderr and "step" not in res.stderr and "a warning line" in res.stderr
    res = cli("nested-test")
    assert "an info line" in res.stderr and "step 3/3" in res.stderr


def test_a_bad_progress_interval_is_one_line_exit_2(app, cli, monkeypatch):
    monkeypatch.setenv("BRAINSYNTH_PROGRESS_EVERY", "soon")
    res = cli("log-test")
    assert res.exit_code == 2 and res.stderr.strip().splitlines() == [
        "brainsynth: error: BRAINSYNTH_PROGRESS_EVERY='soon': expected a number of seconds >= 0 (e.g. 30, or 0 for every step)"]


def test_the_default_interval_keeps_log_gaps_under_30_s(monkeypatch):
    """20 s by default: with items of a few seconds (segmenting a scan takes 3-4 s) the next line
    comes before 30 s have passed."""
    from brainsynth_cli.progress import progress_every

    monkeypatch.delenv("BRAINSYNTH_PROGRESS_EVERY", raising=False)
    assert progress_every() == 20.0
    monkeypatch.setenv("BRAINSYNTH_PROGRESS_EVERY", "5")
    assert progress_every() == 5.0


def test_work_that_reports_in_bursts_still_shows_a_line_every_interval(caplog):
    """Off a terminal, a phase that stops reporting (parallel workers finishing together) repeats its
    state once the interval has passed, marked "still working"; the thread ends with the bar."""
    import threading
    import time

    from brainsynth_cli.progress import PlainProgress

    p = PlainProgress("segment (atlas)", 24, every=0.3)
    with caplog.at_level("INFO", logger="brainsynth_cli.progress"):
        stop = p.heartbeat()
        p(9, 24)
        time.sleep(1.6)  # no update: the heartbeat speaks
        stop()
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("segment (atlas); 9/24 (38 %)") and line.endswith("(still working)") for line in lines), lines
    assert not any(t.name == "brainsynth-progress" for t in threading.enumerate())
    quiet = PlainProgress("x", 3, every=0)  # every update is written: no heartbeat
    assert quiet.heartbeat()() is None and not any(t.name == "brainsynth-progress" for t in threading.enumerate())


@pytest.fixture
def logging_on():
    """Logging as the CLI sets it up by default, for the duration of one test."""
    from brainsynth_cli import logs

    restore = logs.configure()
    yield
    restore()


def test_plain_progress_writes_a_line_at_most_every_n_seconds(capsys, logging_on):
    from brainsynth_cli.progress import progress_bar

    now = [100.0]
    with progress_bar("train", unit="step", every=30, clock=lambda: now[0]) as progress:
        for step in range(1, 401):  # 1.1 s a step
            now[0] += 1.1
            progress(step, 400, f"stage 2 (unet) loss {0.06:.4f}")
    lines = capsys.readouterr().err.splitlines()
    # a line each 30 s (every 28th step at 1.1 s), then the last step
    assert len(lines) == 400 * 1.1 // 30 + 1, lines
    assert lines[0].endswith("INFO train: stage 2 (unet) loss 0.0600; step 28/400 (7 %), 1.1 s/step, ~7 min left"), lines[0]
    assert lines[-1].endswith("train: stage 2 (unet) loss 0.0600; step 400/400 (100 %), 1.1 s/step"), lines[-1]


def test_plain_progress_starts_again_at_a_new_stage(capsys, logging_on):
    from brainsynth_cli.progress import progress_bar

    now = [0.0]
    with progress_bar("train", unit="step", every=0, clock=lambda: now[0]) as progress:
        for step in range(1, 3):
            now[0] += 10
            progress(step, 2, "stage 1 (vae)")
        for step in range(1, 3):
            now[0] += 1
            progress(step, 4, "stage 2 (unet)")
    lines = [ln.split("INFO ", 1)[1] for ln in capsys.readouterr().err.splitlines()]
    assert lines == ["train: stage 1 (vae); step 1/2 (50 %)", "train: stage 1 (vae); step 2/2 (100 %), 10 s/step",
                     "train: stage 2 (unet); step 1/4 (25 %)", "train: stage 2 (unet); step 2/4 (50 %), 1 s/step, ~2 s left"]


def test_quiet_progress_is_silent_and_library_use_too(capsys, app):
    from brainsynth_cli import logs
    from brainsynth_cli.progress import progress_bar

    def work():
        with progress_bar("work", 2, every=0) as progress:
            progress(1, 2, "")
            progress(2, 2, "")
        logging.getLogger("brainsynth_plugins.logtest").info("an info line")

    restore = logs.configure(quiet=1)
    work()
    restore()
    assert capsys.readouterr().err == ""
    assert invoke(app, "log-test")[0] == 0  # a command configures logging and puts it back when it ends
    work()  # library use: no output unless the caller configures logging
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------
# brainsynth train: --report-to, Ctrl-C
# ---------------------------------------------------------------------------------------------
def _pairs(tmp_path):
    pytest.importorskip("diffusers")
    from test_train_pairs import make_pairs

    return make_pairs(tmp_path / "pairs", size=32, subjects=2, slices=1)


def _train_args(pairs, out, *more):
    from test_train_pairs import FAST

    return ["train", pairs, "-o", out, *FAST, "--set", "validation_count=0", *more]


def test_report_to_needs_the_package_and_a_known_tracker(tmp_path, cli, monkeypatch):
    import importlib.util

    pairs = tmp_path / "pairs"
    pairs.mkdir()
    (pairs / "metadata.jsonl").write_text("")
    monkeypatch.setenv("COLUMNS", "240")  # the usage error's message on one row of its box
    res = cli("train", pairs, "-o", tmp_path / "m", "--report-to", "wandb")
    assert res.exit_code == 2 and "'wandb' is not one of 'none', 'tensorboard'" in res.stderr
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    res = cli("train", pairs, "-o", tmp_path / "m", "--report-to", "tensorboard")
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and "tensorboard package is not installed" in lines[0]
    assert "pip install 'brainsynth[tensorboard]'" in lines[0] and not (tmp_path / "m").exists()


def test_report_to_tensorboard_writes_event_files_and_keeps_loss_csv(tmp_path, cli):
    if importlib_missing("tensorboard"):
        pytest.skip("tensorboard is not installed (pip install 'brainsynth[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_train_pairs import one_thread

    pairs = _pairs(tmp_path)
    model = tmp_path / "model"
    with one_thread():
        res = cli(*_train_args(pairs, model, "--set", "vae_steps=2", "--set", "unet_steps=3", "--report-to", "tensorboard"))
    assert res.exit_code == 0, res.stderr
    events = sorted((model / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 2  # one per stage
    scalars: dict[str, list[tuple[int, float]]] = {}
    for f in events:
        acc = EventAccumulator(str(f))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    assert [s for s, _ in scalars["vae/loss"]] == [1, 2] and [s for s, _ in scalars["unet/loss"]] == [1, 2, 3]
    assert {"vae/l1", "vae/kl", "unet/lr"} <= set(scalars)
    import csv

    with open(model / "logs" / "loss.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["stage"], r["step"]) for r in rows] == [("vae", "1"), ("vae", "2"), ("unet", "1"), ("unet", "2"), ("unet", "3")]
    unet = [float(r["loss"]) for r in rows if r["stage"] == "unet"]
    assert [v for _, v in scalars["unet/loss"]] == pytest.approx(unet, rel=1e-5)


def importlib_missing(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is None


def test_ctrl_c_in_training_names_the_kept_checkpoint(tmp_path, cli, monkeypatch):

    from test_train_pairs import interrupting_bar, one_thread

    import brainsynth_cli.progress

    pairs = _pairs(tmp_path)
    model = tmp_path / "model"

    monkeypatch.setattr(brainsynth_cli.progress, "progress_bar", interrupting_bar("stage 2", 3))
    with one_thread():
        res = cli(*_train_args(pairs, model, "--set", "vae_steps=2", "--set", "unet_steps=4", "--checkpoint-every", "2"))
    assert res.exit_code == 130, res.stderr
    last = res.stderr.strip().splitlines()[-1]
    checkpoint = model / "checkpoints" / "unet-0000002"
    assert checkpoint.is_dir()
    assert last == (f"brainsynth: interrupted; kept checkpoint {checkpoint} (stage unet, step 2); "
                    f"resume with `brainsynth train {pairs} -o {model} --resume`")
    # the info lines said which checkpoints were written, before the interruption line
    assert any(f"checkpoint {checkpoint} written (stage unet, step 2)" in ln for ln in res.stderr.splitlines())
