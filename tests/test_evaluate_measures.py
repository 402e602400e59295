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


@pytest.fixture(scope="module")
def measures():
    import brainsynth_plugins.evaluate as plugin

    pm = PluginManager()
    pm.load(builtins=(), entry_points=False)
    pm.register(plugin, "evaluate-under-test")
    return pm.registry("measure")


@pytest.mark.parametrize("name, tolerance", [("registration", 2.5), ("tissue", 1.0)])
@pytest.mark.parametrize("vent_scale, wm_scale", [(1.05, 1.0), (1.12, 1.0), (1.0, 0.97), (1.1, 0.97)])
def test_measured_rates_follow_the_truth(measures, name, tolerance, vent_scale, wm_scale):
    prior, prior_labels = phantom()
    target, target_labels = phantom(vent_scale, wm_scale, seed=1)
    truth = rates(prior_labels, target_labels)
    m = measures.create(name)
    got = rates(m.measure(prior, prior_labels, prior), m.measure(prior, prior_labels, target))
    for k in ("ventricle", "cortex"):
        assert abs(got[k] - truth[k]) <= tolerance, (k, got, truth)


def test_identity_is_measured_as_no_change(measures):
    prior, labels = phantom()
    for name in ("registration", "tissue"):
        m = measures.create(name)
        assert rates(m.measure(prior, labels, prior), m.measure(prior, labels, prior.copy())) == {"ventricle": 0.0, "cortex": 0.0}


def test_registration_measure_keeps_hemisphere_labels(measures):
    prior, labels = phantom()
    target, _ = phantom(1.1, seed=2)
    out = measures.create("registration").measure(prior, labels, target)
    assert set(np.unique(out)) == set(np.unique(labels))
    assert default_rules()["ventricle"].labels[0] in out
