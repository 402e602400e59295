"""Image similarity metrics with scikit-image's definitions, plus multi-scale SSIM.

``psnr`` and ``ssim`` follow ``skimage.metrics.peak_signal_noise_ratio`` and
``structural_similarity`` (7x7 uniform window, K1=0.01, K2=0.03, sample covariance, mean over
the image cropped by the window radius), so numbers compare with papers that used it.
``ms_ssim`` is Wang, Simoncelli & Bovik (2003): Gaussian-window SSIM (sigma 1.5, 11 taps),
contrast-structure terms at the first scales, luminance at the coarsest, weights
0.0448/0.2856/0.3001/0.2363/0.1333 (as published, summing to 1.0001, as in MONAI), renormalised
when the image is too small for five scales.
"""

from __future__ import annotations

import numpy as np

MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def psnr(reference: np.ndarray, test: np.ndarray, data_range: float) -> float:
    ref = np.asarray(reference, dtype=np.float64)
    err = float(np.mean((ref - np.asarray(test, dtype=np.float64)) ** 2))
    if err == 0:
        return float("inf")
    return float(10 * np.log10(data_range**2 / err))


def _ssim_terms(x: np.ndarray, y: np.ndarray, data_range: float, *, gaussian: bool, win_size: int | None = None):
    from scipy import ndimage

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if gaussian:
        sigma, truncate = 1.5, 3.5
        win = 2 * int(truncate * sigma + 0.5) + 1

        def filt(a):
            return ndimage.gaussian_filter(a, sigma=sigma, truncate=truncate)

        cov_norm = 1.0
    else:
        win = win_size or 7

        def filt(a):
            return ndimage.uniform_filter(a, size=win)

        cov_norm = win**x.ndim / (win**x.ndim - 1.0)
    if min(x.shape) < win:
        raise ValueError(f"image of shape {x.shape} is smaller than the {win}-pixel SSIM window")
    ux, uy = filt(x), filt(y)
    vx = cov_norm * (filt(x * x) - ux * ux)
    vy = cov_norm * (filt(y * y) - uy * uy)
    vxy = cov_norm * (filt(x * y) - ux * uy)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    lum = (2 * ux * uy + c1) / (ux * ux + uy * uy + c1)
    cs = (2 * vxy + c2) / (vx + vy + c2)
    pad = (win - 1) // 2
    crop = tuple(slice(pad, s - pad) for s in x.shape)
    return lum[crop], cs[crop]


def ssim(reference: np.ndarray, test: np.ndarray, data_range: float) -> float:
    lum, cs = _ssim_terms(reference, test, data_range, gaussian=False)
    return float(np.mean(lum * cs, dtype=np.float64))


def ms_ssim(reference: np.ndarray, test: np.ndarray, data_range: float, scales: int = 5) -> float:
    """Multi-scale SSIM; uses as many of the five scales as the image size allows (>= 1)."""
    x = np.asarray(reference, dtype=np.float64)
    y = np.asarray(test, dtype=np.float64)
    usable = 1
    while usable < scales and min(x.shape) // (2**usable) >= 11:
        usable += 1
    weights = np.asarray(MS_WEIGHTS[:usable])
    if usable < len(MS_WEIGHTS):  # the published five weights as they are (they sum to 1.0001, as in MONAI)
        weights = weights / weights.sum()
    values = []
    for level in range(usable):
        lum, cs = _ssim_terms(x, y, data_range, gaussian=True)
        if level == usable - 1:
            values.append(max(float(np.mean(lum * cs)), 0.0))
        else:
            values.append(max(float(np.mean(cs)), 0.0))
            x, y = _downsample(x), _downsample(y)
    return float(np.prod(np.asarray(values) ** weights))


def _downsample(a: np.ndarray) -> np.ndarray:
    """2x average pooling (odd edges dropped)."""
    crop = tuple(slice(0, (s // 2) * 2) for s in a.shape)
    a = a[crop]
    if a.ndim == 2:
        return a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2).mean(axis=(1, 3))
    return a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2, a.shape[2] // 2, 2).mean(axis=(1, 3, 5))
