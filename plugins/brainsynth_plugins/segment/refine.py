"""Refinement of propagated labels by the subject's own intensities.

A three-class Gaussian mixture (CSF, grey matter, white matter) is fitted inside the propagated
brain by EM, with the propagated labels, blurred, as spatial priors (the classic "warped tissue
probability map" scheme) and a smooth multiplicative bias field estimated between EM rounds.
Each voxel takes, among the classes its prior allows, the class whose mean is nearest to its
bias-corrected intensity (or, with ``decision="posterior"``, the most probable class); a voxel
whose class changes takes the label of the nearest propagated voxel of its new class (so left stays left, a ventricle grows into a
ventricle label, cortex into cortex). Labels outside the three classes are kept as propagated.

Deterministic: no random initialisation (means start from the propagated labels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi

#: aseg ids per tissue class (0 CSF, 1 grey matter, 2 white matter).
CSF_IDS = (4, 5, 14, 15, 24, 43, 44, 72)
GM_IDS = (3, 8, 10, 11, 12, 13, 17, 18, 26, 42, 47, 49, 50, 51, 52, 53, 54, 58)
WM_IDS = (2, 7, 16, 28, 41, 46, 60)


@dataclass(frozen=True)
class RefineOptions:
    prior_sigma_mm: float = 2.0  # how far (blur) a class may move from where the atlas put it
    floor: float = 1e-4  # prior floor, so a strong likelihood can still win
    em_iterations: int = 8
    bias_rounds: int = 5
    bias_sigma_mm: float = 10.0  # the bias field varies over ~5-10 cm; wider blurs would flatten it
    #: "nearest": among the classes the priors allow (prior >= ``gate``), the class whose mean
    #: is nearest to the bias-corrected intensity (midpoint thresholds: independent of the
    #: noise level, so two scans of one brain are labelled alike); "posterior": the mixture's
    #: most probable class.
    decision: str = "nearest"
    gate: float = 0.02


def tissue_classes(labels: np.ndarray) -> np.ndarray:
    """-1 outside the three classes, else 0 CSF, 1 GM, 2 WM."""
    lut = np.full(int(max(int(labels.max()), 255)) + 1, -1, dtype=np.int8)
    lut[list(CSF_IDS)] = 0
    lut[list(GM_IDS)] = 1
    lut[list(WM_IDS)] = 2
    return lut[labels]


def _gauss(x: np.ndarray, mu: float, var: float) -> np.ndarray:
    return np.exp(-0.5 * (x - mu) ** 2 / var) / np.sqrt(2 * np.pi * var)


def fit(image: np.ndarray, labels: np.ndarray, voxel_size: tuple[float, ...],
        options: RefineOptions | None = None,
        means: np.ndarray | None = None,
        bias_field: np.ndarray | None = None) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray] | None:
    """Fit the mixture: ``(idx, cls, post)`` with ``idx`` the voxel indices of the three-class
    region, ``cls`` the propagated class of every voxel and ``post`` (3, len(idx[0])) the class
    posteriors; ``None`` when the labels hold (almost) no tissue.

    ``means`` (CSF, GM, WM in image units, as :func:`class_model` returns them) fixes the class
    means instead of estimating them (NaN: that class's mean is estimated; variances are always
    fitted). ``bias_field`` (same grid as ``image``, multiplicative, as :func:`class_model`
    returns it) fixes the bias field instead of estimating it."""
    fitted = _fit(image, labels, voxel_size, options, means, bias_field)
    return None if fitted is None else fitted[:3]


def class_model(image: np.ndarray, labels: np.ndarray, voxel_size: tuple[float, ...],
                options: RefineOptions | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """``(means, bias_field)`` of the refinement of ``labels`` on ``image``: the CSF, GM and WM
    means (bias-corrected, image units) and the multiplicative bias field (``image``'s grid, 1
    where it was not estimated) it decides with; ``None`` when the labels hold (almost) no
    tissue."""
    fitted = _fit(image, labels, voxel_size, options, None, None)
    return None if fitted is None else (fitted[3], fitted[4])


def _fit(image: np.ndarray, labels: np.ndarray, voxel_size: tuple[float, ...], options: RefineOptions | None,
         means: np.ndarray | None, bias_field: np.ndarray | None = None
         ) -> tuple[tuple[np.ndarray, ...], np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    opt = options or RefineOptions()
    labels = np.asarray(labels, dtype=np.int32)
    cls = tissue_classes(labels)
    region = cls >= 0
    if region.sum() < 100:
        return None
    vox = np.asarray(voxel_size, dtype=np.float64)
    # Spatial priors: blurred one-hot of the propagated classes (a class may only appear near
    # where the atlas put it).
    sig = opt.prior_sigma_mm / vox
    idx = np.nonzero(region)
    priors = np.empty((3, idx[0].size), dtype=np.float64)
    for c in range(3):
        priors[c] = ndi.gaussian_filter((cls == c).astype(np.float32), sig, mode="constant")[idx]
    priors += opt.floor
    priors /= priors.sum(axis=0, keepdims=True)
    y = np.asarray(image, dtype=np.float64)[idx]
    y = np.maximum(y, 0.0)
    scale = float(np.percentile(y, 99)) or 1.0
    y = y / scale
    full_bias = np.ones(labels.shape, dtype=np.float32) if bias_field is None else np.asarray(bias_field, dtype=np.float32)
    bias = np.clip(full_bias[idx].astype(np.float64), 0.5, 2.0)
    bias /= np.median(bias)
    own = cls[idx]
    # Start: class statistics of the propagated labels.
    mu = np.array([np.median(y[own == c]) if np.any(own == c) else 0.0 for c in range(3)])
    fixed = np.zeros(3, dtype=bool) if means is None else np.isfinite(np.asarray(means, dtype=np.float64))
    if fixed.any():
        mu[fixed] = np.asarray(means, dtype=np.float64)[fixed] / scale
    var = np.array([max(np.var(y[own == c]), 1e-4) if np.any(own == c) else 1e-2 for c in range(3)])
    post = priors
    for round_ in range(max(1, opt.bias_rounds)):
        yc = y / bias
        for _ in range(opt.em_iterations):
            like = np.stack([_gauss(yc, mu[c], var[c]) for c in range(3)])
            post = priors * like
            post /= np.maximum(post.sum(axis=0, keepdims=True), 1e-300)
            w = post.sum(axis=1)
            mu = np.where(fixed, mu, (post * yc).sum(axis=1) / np.maximum(w, 1e-12))
            var = np.maximum((post * (yc - mu[:, None]) ** 2).sum(axis=1) / np.maximum(w, 1e-12), 1e-5)
        if round_ == opt.bias_rounds - 1 or bias_field is not None:
            break
        # Bias: smooth the ratio observed / expected, weighted by confidence (mostly WM and GM).
        expected = (post * mu[:, None]).sum(axis=0)
        weight = post.max(axis=0) * (expected > 0.3 * mu.max())
        num = np.zeros(labels.shape, dtype=np.float32)
        den = np.zeros(labels.shape, dtype=np.float32)
        num[idx] = weight * y / np.maximum(expected, 1e-6)
        den[idx] = weight
        bs = opt.bias_sigma_mm / vox
        sm_num = ndi.gaussian_filter(num, bs, mode="constant")
        sm_den = ndi.gaussian_filter(den, bs, mode="constant")
        full_bias = np.where(sm_den > 1e-6, sm_num / np.maximum(sm_den, 1e-6), 1.0).astype(np.float32)
        bias = np.clip(full_bias[idx], 0.5, 2.0)
        bias /= np.median(bias)
    if opt.decision == "nearest":
        allowed = priors >= opt.gate
        dist = np.abs(yc[None, :] - mu[:, None])
        dist[~allowed] = np.inf
        hard = np.zeros_like(post)
        hard[np.argmin(dist, axis=0), np.arange(yc.size)] = 1.0
        post = hard
    return idx, cls, post, mu * scale, full_bias


def refine(image: np.ndarray, labels: np.ndarray, voxel_size: tuple[float, ...],
           options: RefineOptions | None = None, *, rounds: int = 1, tolerance: float = 1e-3,
           means: np.ndarray | None = None, bias_field: np.ndarray | None = None) -> np.ndarray:
    """Propagated ``labels`` adjusted to the intensities of ``image`` (same grid).

    With ``rounds`` > 1 the refinement is repeated until fewer than ``tolerance`` of the labelled
    voxels change (boundaries may then travel further than the 2 mm prior blur). ``means`` fixes
    the class means (see :func:`fit`): a later scan put on an earlier scan's intensity scale is
    then decided with the earlier scan's thresholds; ``bias_field`` fixes the bias field (see
    :func:`fit`), e.g. the earlier scan's, carried onto this grid."""
    out = np.asarray(labels, dtype=np.int32)
    for _ in range(max(1, rounds)):
        new = refine_once(image, out, voxel_size, options, means=means, bias_field=bias_field)
        changed = int(np.count_nonzero(new != out))
        out = new
        if changed <= tolerance * max(1, int(np.count_nonzero(out))):
            break
    return out


def refine_once(image: np.ndarray, labels: np.ndarray, voxel_size: tuple[float, ...],
                options: RefineOptions | None = None, means: np.ndarray | None = None,
                bias_field: np.ndarray | None = None) -> np.ndarray:
    """One refinement pass (see :func:`refine`)."""
    labels = np.asarray(labels, dtype=np.int32)
    fitted = fit(image, labels, voxel_size, options, means, bias_field)
    if fitted is None:
        return labels.copy()
    idx, cls, post = fitted
    vox = np.asarray(voxel_size, dtype=np.float64)
    new = np.argmax(post, axis=0).astype(np.int8)
    out = labels.copy()
    changed = new != cls[idx]
    if not np.any(changed):
        return out
    # A voxel that changes class takes the label of the nearest propagated voxel of that class.
    for c in range(3):
        sel = changed & (new == c)
        if not np.any(sel) or not np.any(cls == c):
            continue
        _, nearest = ndi.distance_transform_edt(cls != c, sampling=vox, return_indices=True)
        pts = tuple(a[sel] for a in idx)
        out[pts] = labels[tuple(n[pts] for n in nearest)]
    return out
