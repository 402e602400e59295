"""Differential bias field between two scans of one head: a smooth polynomial in the log ratio.

Two scans of the same head taken apart differ by a slowly varying multiplicative field (coil
loading, positioning). Longitudinal measurements (the boundary shift integral, Lewis & Fox
2004; SIENA's intensity normalisation) divide it out before comparing the scans: the ratio
image / reference is taken where the tissue should not have changed, and a smooth field is fitted
to it. Here the field is a low-degree polynomial of the normalised voxel coordinates fitted to
log(image / reference) by least squares with one robust re-weighting pass. A polynomial
interpolates across regions excluded from the fit (around the ventricles, which sit in the
middle of the brain), where a normalised Gaussian convolution would return the average of the
surroundings and leave a few percent of bias exactly where ventricle walls are measured.

Not a plugin: shared by the ``segment`` (longitudinal mode) and ``evaluate`` (measurements)
plugins.
"""

from __future__ import annotations

import itertools

import numpy as np

MAX_SAMPLES = 200_000


def _exponents(ndim: int, degree: int) -> list[tuple[int, ...]]:
    return [e for e in itertools.product(range(degree + 1), repeat=ndim) if sum(e) <= degree]


def _axis_coordinates(shape: tuple[int, ...]) -> list[np.ndarray]:
    return [(np.arange(n, dtype=np.float64) - (n - 1) / 2.0) / max((n - 1) / 2.0, 1.0) for n in shape]


def _evaluate(shape: tuple[int, ...], exps: list[tuple[int, ...]], coef: np.ndarray, degree: int) -> np.ndarray:
    axes = _axis_coordinates(shape)
    powers = [[a ** k for k in range(degree + 1)] for a in axes]
    out = np.zeros(shape, dtype=np.float64)
    for e, c in zip(exps, coef):
        term = np.asarray(c, dtype=np.float64)
        for d, k in enumerate(e):
            dims = [1] * len(shape)
            dims[d] = shape[d]
            term = term * powers[d][k].reshape(dims)
        out = out + term
    return out


def _fit(log_ratio: np.ndarray, mask: np.ndarray, exps: list[tuple[int, ...]]) -> np.ndarray:
    idx = np.nonzero(mask)
    if idx[0].size > MAX_SAMPLES:  # a regular subsample: deterministic, and plenty for ~20 terms
        step = int(np.ceil(idx[0].size / MAX_SAMPLES))
        idx = tuple(i[::step] for i in idx)
    axes = _axis_coordinates(log_ratio.shape)
    coords = [axes[d][idx[d]] for d in range(log_ratio.ndim)]
    design = np.stack([np.prod([c ** k for c, k in zip(coords, e)], axis=0) for e in exps], axis=1)
    coef, *_ = np.linalg.lstsq(design, log_ratio[idx].astype(np.float64), rcond=None)
    return coef


def fit_log_ratio(image: np.ndarray, reference: np.ndarray, region: np.ndarray, degree: int = 3,
                  passes: int = 2) -> np.ndarray | None:
    """Multiplicative field ``F`` (same shape) with ``image / F ~ reference`` inside ``region`` (it
    carries the overall gain too: no normalisation);
    None when the region is too small to fit.

    After each fit, voxels whose ratio departs from the field by more than 3 robust standard
    deviations (3 x 1.4826 x MAD), and their direct neighbours (partial volume of the same
    change), are taken out and the field is refitted, ``passes`` times: voxels an edit or
    atrophy did change inside the region do not bend the field. The ratio is not smoothed
    first, so changed voxels stay sharp outliers.
    """
    from scipy import ndimage

    img = np.asarray(image, dtype=np.float32)
    ref = np.asarray(reference, dtype=np.float32)
    region = np.asarray(region, dtype=bool)
    scale = max(float(np.median(ref[region])) if region.any() else 1.0, 1e-6)
    mask = region & (img > 0.05 * scale) & (ref > 0.05 * scale)
    exps = _exponents(img.ndim, degree)
    if mask.sum() < 4 * len(exps):
        return None
    log_ratio = np.zeros(img.shape, dtype=np.float32)
    log_ratio[mask] = np.log(img[mask] / ref[mask])
    coef = _fit(log_ratio, mask, exps)
    structure = ndimage.generate_binary_structure(img.ndim, 1)
    for _ in range(passes):
        resid = np.abs(log_ratio - _evaluate(img.shape, exps, coef, degree))
        limit = 3.0 * 1.4826 * float(np.median(resid[mask])) + 1e-12
        changed = ndimage.binary_dilation(mask & (resid > limit), structure)
        kept = mask & ~changed
        if kept.sum() < 4 * len(exps):
            break
        coef = _fit(log_ratio, kept, exps)
    return np.exp(_evaluate(img.shape, exps, coef, degree)).astype(np.float32)


def correct(image: np.ndarray, reference: np.ndarray, region: np.ndarray, degree: int = 3) -> np.ndarray:
    """``image`` divided by its differential bias field relative to ``reference`` (unchanged when
    the region is too small to fit a field)."""
    field = fit_log_ratio(image, reference, region, degree)
    img = np.asarray(image, dtype=np.float32)
    return img if field is None else (img / np.clip(field, 0.25, 4.0)).astype(np.float32)
