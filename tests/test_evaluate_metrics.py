"""PSNR and SSIM equal scikit-image's on the same arrays; MS-SSIM behaves as a similarity."""

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from brainsynth_plugins.evaluate import metrics


@pytest.fixture(params=[(64, 64), (96, 80), (20, 22, 24)])
def pair(request):
    rng = np.random.default_rng(sum(request.param))
    a = rng.random(request.param).astype(np.float32)
    b = np.clip(a + rng.normal(0, 0.08, a.shape), 0, 1).astype(np.float32)
    return a, b


def test_psnr_equals_scikit_image(pair):
    a, b = pair
    assert abs(metrics.psnr(a, b, 1.0) - peak_signal_noise_ratio(a, b, data_range=1.0)) < 1e-6


def test_ssim_equals_scikit_image(pair):
    a, b = pair
    assert abs(metrics.ssim(a, b, 1.0) - structural_similarity(a, b, data_range=1.0)) < 1e-6


def test_ssim_with_another_data_range():
    rng = np.random.default_rng(3)
    a = rng.random((50, 50)) * 1000
    b = a + rng.normal(0, 30, a.shape)
    assert abs(metrics.ssim(a, b, 1000.0) - structural_similarity(a, b, data_range=1000.0)) < 1e-6


def test_ms_ssim_is_one_for_identical_and_falls_with_noise():
    rng = np.random.default_rng(0)
    from scipy import ndimage

    a = ndimage.gaussian_filter(rng.random((128, 128)), 3)
    a = (a - a.min()) / (a.max() - a.min())
    assert metrics.ms_ssim(a, a, 1.0) == pytest.approx(1.0)
    values = [metrics.ms_ssim(a, np.clip(a + rng.normal(0, s, a.shape), 0, 1), 1.0) for s in (0.02, 0.1, 0.3)]
    assert values[0] > values[1] > values[2] > 0


def test_identical_images_psnr_is_infinite():
    a = np.ones((16, 16))
    assert metrics.psnr(a, a, 1.0) == float("inf")
