"""Measurement plugins recover known structure changes on a labelled 2D phantom."""

import numpy as np
import pytest
from scipy import ndimage

from brainsynth_cli.plugin_manager import PluginManager
from brainsynth_cli.structures import change_rate, default_rules, group_volumes, label_volumes

INTENSITY = {0: 0.0, 2: 0.85, 41: 0.85, 3: 0.55, 42: 0.55, 4: 0.15, 43: 0.15, 24: 0.12}


def phantom(vent_scale=1.0, wm_scale=1.0, n=128, seed=0):
    """Axial-slice-like phantom: cortex ribbon, white matter, two ventricles, CSF rim."""
    y, x = np.mgrid[0:n, 0:n].astype(float)
    c = n / 2
    r = np.sqrt(((x - c) / (0.42 * n)) ** 2 + ((y - c) / (0.36 * n)) ** 2)
    lab = np.zeros((n, n), np.int32)
    lab[r < 1.0] = 3
    lab[(r < 1.0) & (x > c)] = 42
    wm = r < 0.86 * wm_scale
    lab[wm] = np.where(x[wm] > c, 41, 2)
    for side, cx in ((4, c - 0.08 * n), (43, c + 0.08 * n)):
        rv = np.sqrt(((x - cx) / (0.05 * n * vent_scale)) ** 2 + ((y - c) / (0.16 * n * vent_scale)) ** 2)
        lab[rv < 1] = side
    lab[(r >= 1.0) & (r < 1.06)] = 24
    img = np.vectorize(INTENSITY.get)(lab).astype(np.float32)
    img = ndimage.gaussian_filter(img, 0.8) + np.random.default_rng(seed).normal(0, 0.02, img.shape)
    return np.clip(img, 0, 1).astype(np.float32), lab


def rates(a, b):
    ga, gb = group_volumes(label_volumes(a, 1.0)), group_volumes(label_volumes(b, 1.0))
    return {k: change_rate(ga[k], gb[k]) for k in ("ventricle", "cortex")}


def measured(m, prior, labels, image):
    """Achieved rates the way evaluate computes them: measured change over labelled prior size."""
    from brainsynth_plugins.evaluate import engine

    rules = default_rules()
    base = engine.group_sizes(m.measure(prior, labels, prior), rules)
    got = engine.group_sizes(m.measure(prior, labels, image), rules)
    return engine.measured_rates(base, got, engine.areas(labels, rules))


@pytest.fixture(scope="module")
def measures():
    import brainsynth_plugins.evaluate as plugin

    pm = PluginManager()
    pm.load(builtins=(), entry_points=False)
    pm.register(plugin, "evaluate-under-test")
    return pm.registry("measure")


@pytest.mark.parametrize("name, tolerance", [("registration", 2.5), ("tissue", 1.5)])
@pytest.mark.parametrize("vent_scale, wm_scale", [(1.05, 1.0), (1.12, 1.0), (1.0, 0.97), (1.1, 0.97)])
def test_measured_rates_follow_the_truth(measures, name, tolerance, vent_scale, wm_scale):
    prior, prior_labels = phantom()
    target, target_labels = phantom(vent_scale, wm_scale, seed=1)
    truth = rates(prior_labels, target_labels)
    m = measures.create(name)
    got = measured(m, prior, prior_labels, target)
    for k in ("ventricle", "cortex"):
        assert abs(got[k] - truth[k]) <= tolerance, (k, got, truth)


def test_identity_is_measured_as_no_change(measures):
    prior, labels = phantom()
    for name in ("registration", "tissue"):
        m = measures.create(name)
        got = measured(m, prior, labels, prior.copy())
        assert got["ventricle"] == 0.0 and got["cortex"] == 0.0


@pytest.mark.parametrize("name", ["registration", "tissue"])
def test_sizes_per_label_and_reference_counts(measures, name):
    prior, labels = phantom()
    target, _ = phantom(1.1, seed=2)
    m = measures.create(name)
    assert m.measure(prior, labels, prior) == {int(i): float(c) for i, c in zip(*np.unique(labels, return_counts=True))}
    sizes = m.measure(prior, labels, target)
    assert set(sizes) >= {4, 43, 3, 42} and sizes[4] > (labels == 4).sum() and sizes[43] > (labels == 43).sum()


def test_bias_field_between_scans_is_not_measured_as_change(measures):
    prior, labels = phantom()
    target, _ = phantom(seed=3)
    y, x = np.mgrid[0:128, 0:128] / 128.0
    biased = np.clip(target * (0.85 + 0.3 * x) * 0.9, 0, 1).astype(np.float32)
    for name in ("registration", "tissue"):
        got = measured(measures.create(name), prior, labels, biased)
        assert abs(got["ventricle"]) < 2.0 and abs(got["cortex"]) < 2.0, (name, got)
