"""The model folder of a training run: ``checkpoints/run.json`` (the run's full configuration,
written once everything is checked), the checks before a new run, and what ``--resume`` reads."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from brainsynth_cli.errors import InputError

RUN_FILE = "run.json"
MODEL_INFO = "brainsynth.json"  # written last: its presence means the model is finished


def warn(message: str) -> None:
    import sys

    print(message, file=sys.stderr)


def load_run(out: Path) -> dict[str, Any]:
    """The settings of the training run in ``out`` (for --resume); one-line error when there is none."""
    run_file = out / "checkpoints" / RUN_FILE
    if not run_file.is_file():
        raise InputError(out, "has no training run to resume (no checkpoints/run.json)", "train without --resume")
    try:
        cfg = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cfg = None
    if not isinstance(cfg, dict):
        raise InputError(run_file, "is not a readable run file", "train into a new folder")
    return cfg


def resume_run(out: Path) -> dict[str, Any]:
    """``--resume``: the stored configuration of the unfinished run in ``out``, its unreadable latest
    checkpoints moved aside (with a warning each)."""
    from brainsynth_plugins.training_core.checkpoints import set_aside_unreadable

    cfg = load_run(out)
    if (out / MODEL_INFO).is_file():
        raise InputError(out, "holds a finished model", "nothing to resume; train into a new folder")
    set_aside_unreadable(out, warn)
    return cfg


def refuse_file(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(out, "is a file", "give a folder name for the model")


def refuse_not_empty(out: Path) -> None:
    """A new run needs a new folder (or one holding nothing but lock files)."""
    from brainsynth_cli.outputs import is_empty_folder

    if not is_empty_folder(out):
        raise InputError(out, "exists and is not empty", "give a new folder, or --resume to continue its training")


def write_run(out: Path, cfg: dict[str, Any]) -> None:
    """``checkpoints/run.json``, written under a temporary name and renamed."""
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    tmp = out / "checkpoints" / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    os.replace(tmp, out / "checkpoints" / RUN_FILE)


def new_or_resumed(out: Path, resume: bool, build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The settings of the run: with ``--resume`` those stored in ``out`` (:func:`resume_run`),
    else ``build()``'s for a new run into a folder that is not a file and is empty."""
    if resume:
        return resume_run(out)
    cfg = build()
    refuse_file(out)
    refuse_not_empty(out)
    return cfg
