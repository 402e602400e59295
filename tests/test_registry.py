import pytest

from brainsynth_cli.errors import PluginError, UserError
from brainsynth_cli.registry import Registry
from brainsynth_cli.specs import Spec, module, program


def make(name, factory="collections:OrderedDict", **kw):
    return Spec(name=name, factory=factory, help="x", **kw)


def test_duplicate_names_are_refused_naming_both_plugins():
    reg = Registry("segmenter")
    reg.add(make("atlas"), "first-plugin")
    with pytest.raises(PluginError) as exc:
        reg.add(make("atlas"), "second-plugin")
    assert "first-plugin" in str(exc.value) and "second-plugin" in str(exc.value)
    assert reg.names() == ["atlas"] and reg.plugin_of("atlas") == "first-plugin"


def test_unknown_name_suggests_close_match_and_lists_all():
    reg = Registry("segmenter")
    for n in ("atlas", "ants", "freesurfer", "synthseg"):
        reg.add(make(n), "p")
    with pytest.raises(UserError) as exc:
        reg.get("synthsge")
    msg = str(exc.value)
    assert "unknown segmenter 'synthsge'" in msg
    assert "did you mean 'synthseg'?" in msg
    assert "available: ants, atlas, freesurfer, synthseg" in msg
    assert "\n" not in msg


def test_empty_registry_says_nothing_provides_one():
    with pytest.raises(UserError, match="none"):
        Registry("generator").get("x")


@pytest.mark.parametrize("bad", ["Atlas", "", "has space", "-lead"])
def test_invalid_names_are_refused(bad):
    with pytest.raises(PluginError, match="invalid component name"):
        Registry("segmenter").add(make(bad), "p")


def test_factory_must_be_lazy_string_or_callable():
    with pytest.raises(PluginError, match="factory"):
        Registry("segmenter").add(make("x", factory="no_colon_here"), "p")


def test_lazy_factory_is_imported_on_create_only():
    reg = Registry("blender")
    reg.add(make("od", factory="collections:OrderedDict"), "p")
    obj = reg.create("od", a=1)
    assert obj == {"a": 1}


def test_missing_requirement_gives_one_line_error_with_hint():
    reg = Registry("segmenter")
    reg.add(make("needs", requires=(module("surely_not_installed_mod", extra="ants"),)), "p")
    reg.add(make("prog", requires=(program("surely-not-a-program", hint="install FreeSurfer 7"),)), "p")
    with pytest.raises(UserError) as exc:
        reg.create("needs")
    assert 'pip install "brainsynth[ants]"' in str(exc.value)
    with pytest.raises(UserError, match="install FreeSurfer 7"):
        reg.create("prog")
