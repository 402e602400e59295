"""Every hook: documented in docs/plugins.md and exercised here by a plugin registered at runtime
(as datasette's and llm's tests do)."""

import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from brainsynth_cli import hookimpl, hookspecs
from brainsynth_cli.images import Volume
from brainsynth_cli.interfaces import Blender, Change, Generator, Measure, PromptBuilder, Segmenter, TextEncoder, TrainOptions
from brainsynth_cli.plugin_manager import get_manager
from brainsynth_cli.specs import Spec
from brainsynth_cli.structures import Interval

DOCS = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
HOOKS = sorted(n for n, f in inspect.getmembers(hookspecs, inspect.isfunction) if n.startswith("register_"))


def test_the_hook_list_is_what_the_design_names():
    assert HOOKS == [
        "register_blenders", "register_commands", "register_generators", "register_measures",
        "register_prompt_builders", "register_segmenters", "register_text_encoders",
    ]


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook):
    text = DOCS.read_text()
    assert re.search(rf"^### `{hook}\(", text, re.M), f"docs/plugins.md lacks a '### `{hook}(...)`' section"
    first = inspect.getdoc(getattr(hookspecs, hook)).splitlines()[0]
    assert first in text, f"docs/plugins.md should quote the first docstring line of {hook}"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_exercised_by_this_file(hook):
    assert f"def {hook}(" in Path(__file__).read_text()


# --- one tiny component of each kind ----------------------------------------------------------
class ThresholdSegmenter:
    def __init__(self, level=0.5):
        self.level = level

    def segment(self, image, progress=None):
        return image.with_data((image.data > self.level).astype(np.int32) * 4)


class SignPrompts:
    def __init__(self, rules=None):
        self.rules = rules

    def build(self, change):
        return "ventricle up" if change.rates.get("ventricle", 0) > 0 else None

    def parse(self, prompt):
        return {"ventricle": Interval("up", prompt, low=0.0)}


class MeanBlender:
    def blend(self, prior, target, mask):
        out = prior.astype(np.float32).copy()
        out[mask] = target[mask]
        return out


class CharEncoder:
    hidden_size = 3
    max_length = 8

    def load(self):
        return (lambda text: [ord(c) for c in text[: self.max_length]], lambda ids: np.ones((1, len(ids), 3)))


class EchoGenerator:
    def train(self, options, progress=None):
        options.output.mkdir(parents=True, exist_ok=True)
        (options.output / "model.txt").write_text(str(options.seed))
        return options.output

    def load(self, model_dir, device="auto"):
        return (Path(model_dir) / "model.txt").read_text()


class CountMeasure:
    def measure(self, reference, reference_labels, image, spacing=None):
        ids, counts = np.unique(reference_labels, return_counts=True)
        return {int(i): float(c) for i, c in zip(ids, counts)}


class EveryHook:
    @hookimpl
    def register_segmenters(self, register):
        register(Spec("hooktest-seg", ThresholdSegmenter, "threshold"))

    @hookimpl
    def register_prompt_builders(self, register):
        register(Spec("hooktest-prompts", SignPrompts, "sign"))

    @hookimpl
    def register_blenders(self, register):
        register(Spec("hooktest-blend", MeanBlender, "copy"))

    @hookimpl
    def register_text_encoders(self, register):
        register(Spec("hooktest-text", CharEncoder, "chars"))

    @hookimpl
    def register_generators(self, register):
        register(Spec("hooktest-gen", EchoGenerator, "echo"))

    @hookimpl
    def register_measures(self, register):
        register(Spec("hooktest-measure", CountMeasure, "label counts of the reference"))

    @hookimpl
    def register_commands(self, app):
        @app.command("hooktest-cmd")
        def cmd(seg: str = "hooktest-seg"):
            """Count voxels a registered segmenter labels."""
            segmenter = get_manager().registry("segmenter").create(seg)
            labels = segmenter.segment(Volume(np.linspace(0, 1, 27).reshape(3, 3, 3), np.eye(4)))
            print(int((labels.data > 0).sum()))


@pytest.fixture
def every_hook(register_plugin):
    return register_plugin(EveryHook(), "every-hook")


def test_components_of_every_kind_work_through_the_registries(every_hook, tmp_path):
    reg = every_hook.registries
    seg = reg["segmenter"].create("hooktest-seg", level=0.25)
    assert isinstance(seg, Segmenter)
    assert seg.segment(Volume(np.array([[[0.1, 0.9]]]), np.eye(4))).data.tolist() == [[[0, 4]]]
    pb = reg["prompt-builder"].create("hooktest-prompts")
    assert isinstance(pb, PromptBuilder)
    assert pb.build(Change(rates={"ventricle": 3.0})) == "ventricle up" and pb.parse("x")["ventricle"].contains(1)
    bl = reg["blender"].create("hooktest-blend")
    assert isinstance(bl, Blender)
    mask = np.array([True, False])
    assert bl.blend(np.zeros(2), np.ones(2), mask).tolist() == [1.0, 0.0]
    te = reg["text-encoder"].create("hooktest-text")
    assert isinstance(te, TextEncoder) and te.load()[0]("abc") == [97, 98, 99]
    gen = reg["generator"].create("hooktest-gen")
    assert isinstance(gen, Generator)
    out = gen.train(TrainOptions(data=tmp_path, output=tmp_path / "m", seed=7))
    assert gen.load(out) == "7"
    me = reg["measure"].create("hooktest-measure")
    assert isinstance(me, Measure)
    assert me.measure(np.zeros((2, 2)), np.eye(2, dtype=int) * 4, np.ones((2, 2))) == {0: 2.0, 4: 2.0}


def test_commands_hook(every_hook, cli):
    res = cli("hooktest-cmd")
    assert res.exit_code == 0 and res.stdout.strip() == "13"
    report = {r["name"]: r for r in every_hook.report()}["every-hook"]
    assert report["provides"]["segmenter"] == ["hooktest-seg"] and report["provides"]["command"] == ["hooktest-cmd"]
