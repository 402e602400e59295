"""Plugin loading: built-ins and entry points, guarded; strict mode; blocking; the report."""

import json
import textwrap

import pytest

from brainsynth_cli import hookimpl
from brainsynth_cli.plugin_manager import BUILTIN_PLUGINS, PluginManager
from brainsynth_cli.specs import Spec

from conftest import run_brainsynth


def make_dist(tmp_path, name, module_source, ep_name=None, version="9.9"):
    """A real installed-looking distribution on a path: a module plus dist-info with an entry point."""
    mod = name.replace("-", "_")
    (tmp_path / f"{mod}.py").write_text(textwrap.dedent(module_source))
    info = tmp_path / f"{mod}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[brainsynth]\n{ep_name or name} = {mod}\n")
    return tmp_path


BROKEN = "raise ImportError('needs a library that is not installed')\n"
GOOD = """
from brainsynth_cli import hookimpl
from brainsynth_cli.specs import Spec, program

@hookimpl
def register_blenders(register):
    register(Spec(name="goodblend", factory="collections:OrderedDict", help="a test blender",
                  requires=(program("surely-not-a-program-xyz"),)))
"""


def test_broken_plugin_is_reported_and_the_rest_works(tmp_path):
    make_dist(tmp_path, "broken-plugin", BROKEN, ep_name="broken")
    make_dist(tmp_path, "good-plugin", GOOD, ep_name="good")
    res = run_brainsynth("--help", PYTHONPATH=str(tmp_path))
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "'broken'" in lines[0] and "ImportError" in lines[0]
    res = run_brainsynth("plugins", "--json", PYTHONPATH=str(tmp_path))
    assert res.returncode == 0
    report = {p["name"]: p for p in json.loads(res.stdout)["plugins"]}
    assert report["broken"]["status"] == "failed"
    assert "needs a library" in report["broken"]["error"]
    assert report["good"]["status"] == "loaded"
    assert report["good"]["source"] == "distribution good-plugin" and report["good"]["version"] == "9.9"
    assert report["good"]["provides"] == {"blender": ["goodblend"]}
    assert report["good"]["requires"] == [
        {"kind": "program", "name": "surely-not-a-program-xyz", "present": False,
         "hint": "install surely-not-a-program-xyz and put it on PATH"}
    ]


def test_strict_mode_fails_on_a_broken_plugin(tmp_path):
    make_dist(tmp_path, "broken-plugin", BROKEN, ep_name="broken")
    res = run_brainsynth("--help", PYTHONPATH=str(tmp_path), BRAINSYNTH_STRICT_PLUGINS="1")
    assert res.returncode != 0
    assert "needs a library that is not installed" in res.stderr


def test_disabled_plugin_is_blocked_not_imported(tmp_path):
    make_dist(tmp_path, "broken-plugin", BROKEN, ep_name="broken")
    res = run_brainsynth("plugins", "--json", PYTHONPATH=str(tmp_path), BRAINSYNTH_DISABLE_PLUGINS="broken,other")
    assert res.returncode == 0 and res.stderr == ""
    report = {p["name"]: p for p in json.loads(res.stdout)["plugins"]}
    assert report["broken"]["status"] == "blocked"


def test_plugins_table_lists_failed_with_reason(tmp_path):
    make_dist(tmp_path, "broken-plugin", BROKEN, ep_name="broken")
    res = run_brainsynth("plugins", PYTHONPATH=str(tmp_path))
    assert res.returncode == 0
    assert "broken" in res.stdout and "failed" in res.stdout and "ImportError" in res.stdout


def test_plugins_table_shows_install_hints_verbatim(tmp_path):
    """Hints like pip install "brainsynth[ants]" contain brackets that rich would eat as markup."""
    make_dist(tmp_path, "hint-plugin", GOOD.replace('program("surely-not-a-program-xyz")',
              'module("surely_missing_mod", extra="ants")').replace("Spec, program", "Spec, module"), ep_name="hint")
    res = run_brainsynth("plugins", PYTHONPATH=str(tmp_path))
    assert res.returncode == 0 and 'brainsynth[ants]' in res.stdout.replace("\n", "")


class RaisingHook:
    @hookimpl
    def register_segmenters(self, register):
        register(Spec(name="fine-one", factory="collections:OrderedDict"))
        raise RuntimeError("bug in the plugin")


class InvalidSpec:
    @hookimpl
    def register_blenders(self, register):
        register(Spec(name="Bad Name", factory="collections:OrderedDict"))


class UnknownHook:
    @hookimpl
    def register_things_that_do_not_exist(self, register):
        pass


def fresh():
    pm = PluginManager()
    pm.load(builtins=(), entry_points=False)
    return pm


def test_a_hook_that_raises_leaves_out_that_plugins_components(monkeypatch):
    monkeypatch.delenv("BRAINSYNTH_STRICT_PLUGINS", raising=False)
    pm = fresh()
    pm.register(RaisingHook(), "raiser")
    pm.register(InvalidSpec(), "invalid")
    assert "fine-one" not in pm.registry("segmenter")
    assert len(pm.registry("blender")) == 0
    report = {r["name"]: r for r in pm.report()}
    assert "bug in the plugin" in report["raiser"]["problems"][0]
    assert "invalid component name" in report["invalid"]["problems"][0]


def test_a_hook_that_raises_is_reraised_in_strict_mode(monkeypatch):
    monkeypatch.setenv("BRAINSYNTH_STRICT_PLUGINS", "1")
    pm = fresh()
    pm.register(RaisingHook(), "raiser")
    with pytest.raises(RuntimeError, match="bug in the plugin"):
        pm.registry("segmenter")


def test_unknown_hook_names_fail_validation():
    pm = fresh()
    with pytest.raises(Exception, match="unknown hook"):
        pm.register(UnknownHook(), "unknown")
    assert "unknown" not in pm.records


def test_duplicate_component_names_across_plugins_are_refused(monkeypatch):
    monkeypatch.delenv("BRAINSYNTH_STRICT_PLUGINS", raising=False)

    class A:
        @hookimpl
        def register_blenders(self, register):
            register(Spec(name="same", factory="collections:OrderedDict"))

    pm = fresh()
    pm.register(A(), "plugin-a")
    pm.register(A(), "plugin-b")
    reg = pm.registry("blender")
    assert reg.names() == ["same"]
    problems = [p for r in pm.report() for p in r["problems"]]
    assert len(problems) == 1 and "plugin-a" in problems[0] and "plugin-b" in problems[0]


def test_builtin_plugins_all_load_cleanly():
    pm = PluginManager()
    pm.load(entry_points=False)
    report = {r["name"]: r for r in pm.report()}
    assert len(report) == len(BUILTIN_PLUGINS)
    for rec in report.values():
        assert rec["status"] == "loaded" and rec["source"] == "built-in" and not rec["problems"], rec


def test_register_commands_adds_a_command(register_plugin, cli):
    class Cmd:
        @hookimpl
        def register_commands(self, app):
            @app.command("hello-test")
            def hello(name: str):
                """Say hello."""
                print(f"hello {name}")

    register_plugin(Cmd(), "cmd-plugin")
    res = cli("hello-test", "brain")
    assert res.exit_code == 0 and res.stdout.strip() == "hello brain"
    res = cli("plugins", "--json")
    rec = {p["name"]: p for p in json.loads(res.stdout)["plugins"]}["cmd-plugin"]
    assert rec["provides"] == {"command": ["hello-test"]}
