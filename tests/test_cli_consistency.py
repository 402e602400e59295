"""One spelling across commands: the output option is -o/--output everywhere (make-pairs' old
--out still works, unshown), and options with a fixed set of values list it in --help."""

from __future__ import annotations

import pytest
import typer

from brainsynth_cli.errors import UserError
from brainsynth_cli.main import build_app


def _commands():
    return typer.main.get_command(build_app()).commands


def test_every_output_option_is_dash_o_dash_dash_output():
    commands = _commands()
    with_output = {name for name, c in commands.items()
                   if any(getattr(p, "param_type_name", "") == "option" and p.name == "output" for p in c.params)}
    assert {"make-pairs", "evaluate", "train", "edit", "segment", "blend", "simulate"} <= with_output
    for name in with_output:
        (opt,) = [p for p in commands[name].params if p.name == "output"]
        assert set(opt.opts) == {"-o", "--output"}, (name, opt.opts)
    shown = {name: o for name, c in commands.items() for p in c.params for o in getattr(p, "opts", []) if o == "--out"}
    assert shown == {}


@pytest.fixture
def caught_options(monkeypatch):
    """make-pairs stops where its engine would start, with the output folder it was given."""
    from brainsynth_plugins.pairs import engine

    def fake(options, echo):
        raise UserError(f"would write {options.out}")

    monkeypatch.setattr(engine, "make_pairs", fake)


@pytest.mark.parametrize("spelling", ["-o", "--output", "--out", "--out="])
def test_make_pairs_output_spellings(tmp_path, cli, caught_options, spelling):
    out = tmp_path / "pairs"
    args = [f"--out={out}"] if spelling == "--out=" else [spelling, out]
    res = cli("make-pairs", tmp_path, *args)
    assert res.exit_code == 2 and res.stderr.strip() == f"brainsynth: error: would write {out}"


def test_make_pairs_help_shows_output_not_out(cli):
    res = cli("make-pairs", "--help")
    assert res.exit_code == 0 and "--output" in res.stdout
    assert "--out " not in res.stdout and "--out," not in res.stdout


def test_make_pairs_without_output_is_a_usage_error(tmp_path, cli):
    res = cli("make-pairs", tmp_path)
    assert res.exit_code == 2 and "--output" in res.stderr
