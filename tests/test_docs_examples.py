"""Every code block in docs/ marked runnable runs as written.

A fenced block whose info string has the word ``runnable`` (```` ```console runnable ````) is run;
a block whose info string has ``file=NAME`` (```` ```toml file=hippocampus.toml ````) is written to
NAME first. The blocks of one page run in order in one empty folder, so a page's examples build
on each other. In a ``console`` block, ``$ brainsynth ...`` lines are commands (a trailing ``\\``
continues a line) and the lines after a command are what it prints: each must match a line of
its output (``...`` stands for anything). A command must succeed, unless a line of its shown
output starts with ``brainsynth: error:``; then it must fail with exit status 2 and print that
one line.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.DOTALL | re.MULTILINE)


@dataclass
class Block:
    page: Path
    line: int
    language: str
    words: list[str]
    text: str
    file: str | None = None
    commands: list[tuple[str, list[str]]] = field(default_factory=list)


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        words = m.group(1).split()
        file = next((w.split("=", 1)[1] for w in words if w.startswith("file=")), None)
        if "runnable" not in words and file is None:
            continue
        b = Block(page, text.count("\n", 0, m.start()) + 1, words[0] if words else "", words, m.group(2), file)
        if "runnable" in words:
            b.commands = commands(b)
        out.append(b)
    return out


def commands(block: Block) -> list[tuple[str, list[str]]]:
    """``[(command, shown output lines)]`` of a console block."""
    if block.language != "console":
        raise AssertionError(f"{block.page}:{block.line}: only console blocks are runnable, not {block.language!r}")
    out: list[tuple[str, list[str]]] = []
    pending = ""
    for line in block.text.splitlines():
        if pending or line.startswith("$ "):
            part = line[2:] if not pending else line
            if part.rstrip().endswith("\\"):
                pending += part.rstrip()[:-1] + " "
                continue
            out.append(((pending + part).strip(), []))
            pending = ""
        elif line.strip():
            assert out, f"{block.page}:{block.line}: output before any command"
            out[-1][1].append(line.strip())
    return out


def pages() -> list[Path]:
    return sorted(p for p in [REPO / "README.md", *(REPO / "docs").rglob("*.md")] if any("runnable" in b.words for b in blocks(p)))


def _matches(shown: str, printed: list[str]) -> bool:
    pattern = ".*".join(re.escape(part) for part in shown.split("...")) if "..." in shown else re.escape(shown)
    return any(re.fullmatch(pattern, p.strip()) for p in printed)


def test_some_pages_have_runnable_examples():
    found = pages()
    assert {p.relative_to(REPO).as_posix() for p in found} >= {"docs/rules.md", "docs/commands/segment.md"}
    runnable = [b for p in found for b in blocks(p) if "runnable" in b.words]
    assert 0 < len(runnable) <= 8  # few and fast: every one runs offline in seconds


@pytest.mark.parametrize("page", pages(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_runnable_examples(page, tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    for b in blocks(page):
        where = f"{page.relative_to(REPO)}:{b.line}"
        if b.file is not None:
            (tmp_path / b.file).write_text(b.text, encoding="utf-8")
        for command, shown in b.commands:
            argv = shlex.split(command)
            assert argv and argv[0] == "brainsynth", f"{where}: runnable blocks run brainsynth commands only: {command}"
            res = cli(*argv[1:])
            printed = (res.stdout + res.stderr).splitlines()
            errors = [s for s in shown if s.startswith("brainsynth: error:")]
            if errors:
                assert res.exit_code == 2, f"{where}: `{command}` should fail (exit {res.exit_code})"
                assert len(res.stderr.strip().splitlines()) == 1, f"{where}: `{command}`: {res.stderr}"
            else:
                assert res.exit_code == 0, f"{where}: `{command}` failed: {res.stderr.strip()}"
            for s in shown:
                assert _matches(s, printed), f"{where}: `{command}` did not print {s!r}; it printed:\n" + "\n".join(printed)
