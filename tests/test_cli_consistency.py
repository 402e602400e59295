"""One spelling across commands: the output option is -o/--output everywhere (make-pairs' old
--out still works, unshown), and options with a fixed set of values list it in --help."""

from __future__ import annotations

import pytest
import typer

from brainsynth_cli.errors import UserError
from brainsynth_cli.main import build_app


def _option_line(help_text: str, option: str) -> str:
    """The row of ``option`` in a command's --help."""
    return next(x for x in help_text.splitlines() if x.strip("│ *").startswith(f"{option} "))


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


@pytest.mark.parametrize("command, option, choices", [
    ("make-pairs", "--dim", "<2d|3d>"),
    ("make-pairs", "--pairing", "<consecutive|all>"),
    ("train", "--stage", "<vae|unet|all>"),
    ("train", "--task", "<edit|generate>"),
    ("train", "--report-to", "<none|tensorboard>"),
    ("evaluate", "--device", "<auto|cpu|cuda|mps>"),
    ("evaluate", "--task", "<edit|generate>"),
    ("edit", "--scheduler", "<ddim|dpm++|euler-a>"),
])
def test_help_lists_the_choices(cli, monkeypatch, command, option, choices):
    monkeypatch.setenv("COLUMNS", "240")  # one line per option
    res = cli(command, "--help")
    line = _option_line(res.stdout, option)
    assert res.exit_code == 0 and choices in line, line


@pytest.mark.parametrize("args, allowed", [
    (["train", "PAIRS", "-o", "OUT", "--stage", "unet2"], "'unet2' is not one of 'vae', 'unet', 'all'"),
    (["evaluate", "MODEL", "PAIRS", "-o", "OUT", "--split", "tests"], "'tests' is not one of 'train', 'validation', 'test', 'all'"),
    (["make-pairs", "DATA", "-o", "OUT", "--dim", "4d"], "'4d' is not one of '2d', '3d'"),
])
def test_a_bad_choice_is_a_usage_error_naming_the_choices(tmp_path, cli, monkeypatch, args, allowed):
    monkeypatch.setenv("COLUMNS", "240")  # the message on one row of the error box
    args = [str(tmp_path / a) if a.isupper() else a for a in args]
    res = cli(*args)
    assert res.exit_code == 2 and allowed in res.stderr, res.stderr
    assert not (tmp_path / "OUT").exists()


def test_choices_reach_the_command_as_plain_strings(tmp_path, cli, caught_options, monkeypatch):
    from brainsynth_plugins.pairs import engine

    def fake(options, echo):
        raise UserError(f"{type(options.dim).__name__} {options.dim} {type(options.pairing).__name__} {options.pairing}")

    monkeypatch.setattr(engine, "make_pairs", fake)
    res = cli("make-pairs", tmp_path, "-o", tmp_path / "p", "--dim", "3D", "--pairing", "all")
    assert res.exit_code == 2 and res.stderr.strip() == "brainsynth: error: str 3d str all"


def test_plugin_names_stay_open_and_help_says_where_to_list_them(cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")
    res = cli("make-pairs", "--help")
    for option in ("--prompt-builder", "--blender"):
        line = _option_line(res.stdout, option)
        assert "<str>" in line and "brainsynth plugins" in line, line
