"""The differential bias field between two scans of one head (brainsynth_plugins.bias_field)."""

from __future__ import annotations

import numpy as np
import pytest
from brainsynth_plugins import bias_field


def _scan(shape, seed):
    rng = np.random.default_rng(seed)
    img = 0.6 + 0.3 * (rng.random(shape) > 0.5)  # two tissues, voxel by voxel
    return img.astype(np.float32)


@pytest.mark.parametrize("shape", [(96, 96), (40, 48, 36)])
def test_field_is_recovered_inside_an_excluded_hole(shape):
    """The fit region leaves out the centre (where the ventricles sit); a smooth field with its
    extreme in that centre is still recovered there, where a Gaussian estimate from the
    surroundings would average it away."""
    ref = _scan(shape, 0)
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r2 = sum(g ** 2 for g in grids)
    true_field = np.exp(0.08 - 0.12 * r2 + 0.05 * grids[0]).astype(np.float32)
    noise = np.random.default_rng(1).normal(0, 0.01, shape).astype(np.float32)
    image = ref * true_field + noise
    region = r2 > 0.2  # the middle is excluded
    corrected = bias_field.correct(image, ref, region)
    hole = r2 < 0.1
    ratio = corrected[hole] / ref[hole]
    assert abs(float(np.median(ratio)) - 1.0) < 0.01 and float(np.percentile(np.abs(ratio - 1), 95)) < 0.05
    assert abs(float(np.median(image[hole] / ref[hole])) - 1.0) > 0.05  # the field there was real


def test_changed_voxels_inside_the_region_do_not_bend_the_field():
    shape = (96, 96)
    ref = _scan(shape, 0)
    _, x = np.meshgrid(np.linspace(-1, 1, 96), np.linspace(-1, 1, 96), indexing="ij")
    true_field = np.exp(0.1 * x).astype(np.float32)
    image = ref * true_field
    image[10:30, 60:90] *= 0.6  # a structure that did change (a tenth of the region), darker
    field = bias_field.fit_log_ratio(image, ref, np.ones(shape, bool))
    unchanged = np.ones(shape, bool)
    unchanged[8:32, 58:92] = False
    assert np.max(np.abs(field[unchanged] / true_field[unchanged] - 1)) < 0.01


def test_too_small_a_region_returns_the_image_unchanged():
    ref = _scan((32, 32), 0)
    region = np.zeros((32, 32), bool)
    region[0, :5] = True
    assert bias_field.fit_log_ratio(ref * 1.2, ref, region) is None
    assert np.array_equal(bias_field.correct(ref * 1.2, ref, region), ref * np.float32(1.2))
