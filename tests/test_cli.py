"""The command line: version, help, errors as one line with exit 2, tracebacks only with --debug."""

import sys

import pytest

from brainsynth_cli import __version__, hookimpl
from brainsynth_cli.errors import InputError

from conftest import run_brainsynth


class CopyCommand:
    """A test plugin command that reads an image with the kernel readers and writes a copy."""

    @hookimpl
    def register_commands(self, app):
        @app.command("copy-test")
        def copy(src: str, out: str, labels: bool = False):
            from brainsynth_cli.images import read_labels, read_volume, write_volume

            vol = (read_labels if labels else read_volume)(src)
            write_volume(out, vol.data, vol.affine, vol.header)


def test_version(cli):
    res = cli("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"brainsynth {__version__}"


def test_help_lists_commands(cli):
    res = cli("-h")
    assert res.exit_code == 0 and "plugins" in res.stdout and "--debug" in res.stdout


def test_unknown_command_is_a_usage_error(cli):
    assert cli("no-such-command").exit_code == 2


@pytest.fixture
def copy_cmd(register_plugin):
    register_plugin(CopyCommand(), "copy-test-plugin")


def corrupt(tmp_path):
    p = tmp_path / "scan.nii.gz"
    p.write_bytes(b"\x1f\x8b\x08\x00garbage")
    return p


def test_bad_input_is_one_line_exit_2_no_output(tmp_path, cli, copy_cmd):
    out = tmp_path / "out" / "copy.nii.gz"
    res = cli("copy-test", corrupt(tmp_path), out)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("brainsynth: error: ") and "scan.nii.gz" in lines[0]
    assert "Traceback" not in res.stderr
    assert not out.exists() and not any(p.name.startswith(".copy") for p in tmp_path.rglob("*"))


def test_debug_shows_the_traceback(tmp_path, cli, copy_cmd):
    res = cli("--debug", "copy-test", corrupt(tmp_path), tmp_path / "o.nii.gz")
    assert res.exit_code == 2 and "Traceback" in res.stderr and res.stderr.strip().splitlines()[-1].startswith("brainsynth: error:")


def test_internal_errors_are_one_line_exit_1(cli, register_plugin):
    class Boom:
        @hookimpl
        def register_commands(self, app):
            @app.command("boom-test")
            def boom():
                raise ZeroDivisionError("bug")

    register_plugin(Boom(), "boom")
    res = cli("boom-test")
    assert res.exit_code == 1 and "internal error: ZeroDivisionError: bug" in res.stderr and "Traceback" not in res.stderr


HEAVY = ("torch", "diffusers", "transformers", "SimpleITK", "numba", "nilearn", "sklearn", "scipy", "matplotlib")


def test_help_imports_no_heavy_library():
    code = (
        "import sys\nfrom brainsynth_cli.main import run\nrc = run(['--help'])\n"
        f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules], rc)\n"
    )
    import subprocess

    from conftest import subprocess_env

    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "HEAVY [] 0"


def test_every_command_has_help_without_heavy_imports():
    """Each command's --help also stays light (commands import inside their bodies)."""
    from brainsynth_cli.main import build_app

    names = [c.name or c.callback.__name__ for c in build_app().registered_commands]
    for name in names:
        res = run_brainsynth(name, "--help")
        assert res.returncode == 0, (name, res.stderr)


def test_console_script_runs():
    res = run_brainsynth("--version")
    assert res.returncode == 0 and __version__ in res.stdout


def test_input_error_message_format():
    err = InputError("/data/x.nii.gz", "is 4D with 3 volumes", "extract one volume first")
    assert str(err) == "/data/x.nii.gz: is 4D with 3 volumes; extract one volume first"
