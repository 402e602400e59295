"""Tests of the example plugin, through brainsynth's registries like a user would use it."""

import numpy as np
import pytest

from brainsynth_cli.images import Volume
from brainsynth_cli.interfaces import Change, PromptBuilder, Segmenter
from brainsynth_cli.plugin_manager import PluginManager


@pytest.fixture
def manager():
    import brainsynth_example

    pm = PluginManager()
    pm.load(builtins=(), entry_points=False)
    pm.register(brainsynth_example, "example-under-test")
    return pm


def phantom(seed=0):
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, 40)] * 3, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    truth = np.zeros(r.shape, np.int32)
    truth[r < 0.9] = 3
    truth[r < 0.7] = 2
    truth[r < 0.25] = 24
    intensity = {0: 0.0, 24: 30.0, 3: 70.0, 2: 110.0}
    img = np.vectorize(intensity.get)(truth).astype(np.float32) + rng.normal(0, 4, r.shape).astype(np.float32)
    img[truth == 0] = np.abs(rng.normal(0, 2, (truth == 0).sum()))
    return Volume(img, np.diag([2.0, 2, 2, 1])), truth


def dice(a, b):
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_kmeans_segmenter_recovers_tissue_classes(manager):
    seg = manager.registry("segmenter").create("kmeans-tissue")
    assert isinstance(seg, Segmenter)
    image, truth = phantom()
    labels = seg.segment(image).data
    for lab in (2, 3, 24):
        assert dice(labels == lab, truth == lab) > 0.9, lab


def test_direction_prompts_round_trip(manager):
    from brainsynth_cli.structures import default_rules

    builder = manager.registry("prompt-builder").create("direction", rules=default_rules())
    assert isinstance(builder, PromptBuilder)
    prompt = builder.build(Change(rates={"ventricle": 12.0, "cortex": -3.0}))
    assert prompt == "cortex shrinks, ventricle grows"
    wanted = builder.parse(prompt)
    assert wanted["ventricle"].contains(12.0) and not wanted["ventricle"].contains(-1.0)
    assert wanted["cortex"].contains(-3.0) and not wanted["cortex"].contains(0.5)
    assert builder.build(Change(rates={"ventricle": 0.2})) is None
