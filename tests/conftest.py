"""Shared fixtures: plugin registration (as llm's tests do) and CLI running."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def register_plugin():
    """Register plugin objects into the process-wide manager for one test; unregistered after."""
    from brainsynth_cli.plugin_manager import get_manager

    manager = get_manager()
    names: list[str] = []

    def _register(obj, name: str):
        manager.register(obj, name)
        names.append(name)
        return manager

    yield _register
    for name in names:
        manager.unregister(name)


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys):
    """Run ``brainsynth ARGS`` in-process; returns exit code, stdout and stderr."""
    from brainsynth_cli.main import run

    def _run(*args: str) -> Result:
        capsys.readouterr()
        code = run([str(a) for a in args])
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return _run


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAINSYNTH_")}
    env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [extra.get("PYTHONPATH", ""), str(REPO), str(REPO / "plugins")]))
    return env


def run_brainsynth(*args: str, **env: str):
    """Run the CLI in a fresh Python process (the way users run it)."""
    import subprocess

    return subprocess.run(
        [sys.executable, "-m", "brainsynth_cli.main", *args],
        capture_output=True, text=True, env=subprocess_env(**env), timeout=120,
    )
