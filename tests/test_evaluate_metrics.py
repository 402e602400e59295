"""PSNR and SSIM equal scikit-image's on the same arrays; MS-SSIM equals MONAI's where its five scales
fit and behaves as a similarity."""

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


@pytest.mark.parametrize("shape", [(192, 192), (256, 256), (200, 232)])
def test_ms_ssim_equals_monai_where_its_five_scales_fit(shape):
    """Same settings on both sides: Gaussian window of 11 taps with sigma 1.5, K1 0.01, K2 0.03,
    2x average pooling between scales, the published weights (they sum to 1.0001; neither side
    renormalises them at five scales). MONAI needs H // 16 > 10, so 176 px at least.

    Tolerance 5e-6 (absolute): MONAI computes in float32 and its float32 Gaussian kernel sums to 1
    only to ~1e-7, which biases the local variances (E[x^2] - E[x]^2); measured differences are up
    to 3e-6 (below 6e-7 with MONAI forced to float64). Renormalising the weights to sum to 1 would
    differ by ~2e-5 at MS-SSIM 0.79, so the noisy cases below tell the two apart."""
    torch = pytest.importorskip("torch")
    MultiScaleSSIMMetric = pytest.importorskip("monai.metrics").MultiScaleSSIMMetric
    from scipy import ndimage

    rng = np.random.default_rng(sum(shape))
    a = ndimage.gaussian_filter(rng.random(shape), 2)
    a = (a - a.min()) / (a.max() - a.min())
    monai = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_type="gaussian", kernel_size=11, kernel_sigma=1.5,
                                 k1=0.01, k2=0.03, weights=metrics.MS_WEIGHTS)
    for noise in (0.01, 0.05, 0.2, 0.4):
        b = np.clip(a + rng.normal(0, noise, shape), 0, 1)
        theirs = float(monai(torch.from_numpy(b)[None, None].float(), torch.from_numpy(a)[None, None].float()))
        assert metrics.ms_ssim(a, b, 1.0) == pytest.approx(theirs, abs=5e-6), noise


def test_identical_images_psnr_is_infinite():
    a = np.ones((16, 16))
    assert metrics.psnr(a, a, 1.0) == float("inf")
