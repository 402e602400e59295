"""Blenders: the poisson blender against scipy's direct solution, exactness outside the mask,
no seam, border handling, convergence control; copy-paste and none; plugin registration."""

from __future__ import annotations

import numpy as np
import pytest
from brainsynth_plugins.blend.poisson import PoissonBlender, PoissonNotConverged, poisson_blend
from brainsynth_plugins.blend.reference import assemble, direct_solution


def _pair(shape, seed):
    """Prior and target that differ in contrast, bias and noise, and a blob mask."""
    rng = np.random.default_rng(seed)
    g = np.indices(shape, dtype=np.float64)
    c = [(s - 1) / 2 for s in shape]
    r2 = sum(((g[i] - c[i]) / (0.45 * shape[i])) ** 2 for i in range(len(shape)))
    anat = np.where(r2 < 1, 700.0, 60.0) + np.where(r2 < 0.4, 250.0, 0.0) + 80 * np.sin(g[-1] / 3)
    prior = anat + rng.normal(0, 15, shape)
    bias = 1 + 0.2 * g[0] / shape[0]
    target = (1.25 * anat + 120) * bias + rng.normal(0, 25, shape)
    blob = sum(((g[i] - c[i] - 1.5) / (0.22 * shape[i])) ** 2 for i in range(len(shape))) < 1
    return prior.astype(np.float32), target.astype(np.float32), blob


def _boundary_jump(img, mask):
    """Mean |f_i - f_j| over face-neighbour pairs with i in the mask and j outside it."""
    total, count = 0.0, 0
    img = img.astype(np.float64)
    for axis in range(img.ndim):
        a = np.moveaxis(img, axis, 0)
        m = np.moveaxis(mask, axis, 0)
        edge = m[1:] != m[:-1]
        total += np.abs(a[1:] - a[:-1])[edge].sum()
        count += int(edge.sum())
    return total / count


CASES = {
    "2d": ((40, 52), 1),
    "3d": ((22, 26, 20), 2),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    shape, seed = CASES[request.param]
    prior, target, mask = _pair(shape, seed)
    exact = direct_solution(prior, target, mask)
    return prior, target, mask, exact


def test_poisson_matches_direct_solution(case):
    prior, target, mask, exact = case
    out, info = poisson_blend(prior, target, mask, return_info=True)
    assert out.dtype == np.float32 and out.shape == prior.shape
    span = float(max(prior.max(), target.max()) - min(prior.min(), target.min()))
    assert np.abs(out - exact).max() <= 1e-5 * span
    assert info.unknowns == int(mask.sum())
    assert info.relative_residual <= 1e-6
    # independent check of the residual on scipy's assembled system
    A, b, idx = assemble(prior, target, mask)
    f = out.astype(np.float64).ravel()[idx]
    assert np.linalg.norm(b - A @ f) / np.linalg.norm(b) <= 2e-6


def test_poisson_equals_prior_outside_and_has_no_seam(case):
    prior, target, mask, _ = case
    out = PoissonBlender().blend(prior, target, mask)
    assert np.array_equal(out[~mask], prior[~mask])
    pasted = np.where(mask, target, prior)
    assert _boundary_jump(out, mask) < 0.5 * _boundary_jump(pasted, mask)
    # the structure comes from the target: inside, gradients follow the target's
    inner = mask.copy()
    for axis in range(mask.ndim):
        inner &= np.roll(mask, 1, axis) & np.roll(mask, -1, axis)
    d_out = np.diff(out.astype(np.float64), axis=-1)[inner[..., :-1]]
    d_tgt = np.diff(target.astype(np.float64), axis=-1)[inner[..., :-1]]
    d_pri = np.diff(prior.astype(np.float64), axis=-1)[inner[..., :-1]]
    assert np.abs(d_out - d_tgt).mean() < 0.5 * np.abs(d_out - d_pri).mean()


def test_poisson_is_deterministic(case):
    prior, target, mask, _ = case
    a = poisson_blend(prior, target, mask)
    b = poisson_blend(prior.copy(), target.copy(), mask.copy())
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("shape", [(30, 34), (14, 16, 12)])
def test_poisson_mask_touching_the_array_border(shape):
    prior, target, _ = _pair(shape, 7)
    mask = np.zeros(shape, bool)
    # a region cut by two faces of the array, and a second piece that touches no prior voxel
    sl = tuple(slice(0, s // 2) for s in shape)
    mask[sl] = True
    exact = direct_solution(prior, target, mask)
    out = poisson_blend(prior, target, mask)
    span = float(target.max() - prior.min())
    assert np.abs(out - exact).max() <= 1e-5 * span
    assert np.array_equal(out[~mask], prior[~mask])


def test_poisson_whole_array_keeps_the_target():
    prior, target, _ = _pair((12, 14), 3)
    out = poisson_blend(prior, target, np.ones(prior.shape, bool))
    assert np.array_equal(out, target)


def test_poisson_empty_mask_and_thin_mask():
    prior, target, _ = _pair((20, 22, 18), 4)
    assert np.array_equal(poisson_blend(prior, target, np.zeros(prior.shape, bool)), prior)
    thin = np.zeros(prior.shape, bool)
    thin[10, 3:18, 4] = True  # a one-voxel line: coarsening stalls
    thin[5, 5, 5] = True  # an isolated voxel
    exact = direct_solution(prior, target, thin)
    out, info = poisson_blend(prior, target, thin, return_info=True)
    assert np.abs(out - exact).max() <= 1e-5 * float(target.max() - prior.min())
    assert info.unknowns == 16


def test_poisson_iteration_cap_raises(case):
    prior, target, mask, _ = case
    with pytest.raises(PoissonNotConverged, match=r"stopped after 1 iterations .*raise maxiter"):
        poisson_blend(prior, target, mask, rtol=1e-12, maxiter=1)
    blender = PoissonBlender(rtol=1e-3)
    loose = blender.blend(prior, target, mask)
    assert blender.last_info.relative_residual <= 1e-3
    assert np.array_equal(loose[~mask], prior[~mask])


def test_poisson_rejects_bad_input():
    prior, target, mask = _pair((10, 12), 0)
    with pytest.raises(ValueError, match="same shape"):
        poisson_blend(prior, target[:, :-1], mask)
    bad = target.copy()
    bad[mask] = np.nan
    with pytest.raises(ValueError, match="finite"):
        poisson_blend(prior, bad, mask)
    with pytest.raises(ValueError, match="rtol"):
        PoissonBlender(rtol=2.0)


def test_blenders_from_the_registry():
    from brainsynth_cli.plugin_manager import get_manager

    reg = get_manager().registry("blender")
    assert {"poisson", "copy-paste", "none"} <= set(reg.names())
    assert reg.plugin_of("poisson") == "blend"
    prior, target, mask = _pair((16, 18), 5)
    pasted = reg.create("copy-paste").blend(prior, target, mask)
    assert np.array_equal(pasted[mask], target[mask]) and np.array_equal(pasted[~mask], prior[~mask])
    same = reg.create("none").blend(prior.astype(np.float64), target, mask)
    assert same.dtype == np.float32 and np.array_equal(same, prior)
    poisson = reg.create("poisson", rtol=1e-7)
    assert poisson.rtol == 1e-7
    out = poisson.blend(prior, target, mask.astype(np.uint8))
    assert np.array_equal(out[~mask], prior[~mask])


def test_plugin_module_imports_no_algorithm():
    import subprocess
    import sys

    from tests.conftest import subprocess_env

    code = "import sys, brainsynth_plugins.blend; print('numba' in sys.modules, 'numpy' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), check=True)
    assert res.stdout.split() == ["False", "False"]


def test_poisson_fortran_order_input(case):
    """Volumes from nibabel are Fortran-ordered: solved on transposed views, same result."""
    prior, target, mask, exact = case
    out = poisson_blend(np.asfortranarray(prior), np.asfortranarray(target), np.asfortranarray(mask))
    span = float(max(prior.max(), target.max()) - min(prior.min(), target.min()))
    assert out.shape == prior.shape
    assert np.abs(out - exact).max() <= 1e-5 * span
    assert np.array_equal(out[~mask], prior[~mask])


def test_poisson_zero_right_hand_side():
    """A zero prior around a constant target: b = 0, so the exact blend is 0 in the region."""
    prior = np.zeros((20, 22), np.float32)
    target = np.full((20, 22), 5.0, np.float32)
    mask = np.zeros((20, 22), bool)
    mask[5:15, 4:16] = True
    out, info = poisson_blend(prior, target, mask, return_info=True)
    assert np.abs(out).max() < 1e-4 and info.relative_residual <= 1e-6
    same, info = poisson_blend(prior, prior, mask, return_info=True)
    assert info.iterations == 0 and not same.any()
