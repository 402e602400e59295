"""The ``warp`` blender: a wall that moves in the target moves in the result, the prior's own
voxels are kept (no intensity is copied from the target), the prior outside the mask bit for bit,
2D and 3D, deterministic, through the registry."""

from __future__ import annotations

import numpy as np
import pytest
from brainsynth_plugins.blend.warp import WarpBlender, warp_blend
from scipy import ndimage


def _ball(shape, radius, seed=0, noise=0.01):
    """A dark ball (0.2) of ``radius`` voxels in brighter tissue (0.7), partial-volume edge, faint texture."""
    g = np.indices(shape, dtype=np.float64)
    c = [(s - 1) / 2 for s in shape]
    r = np.sqrt(sum((g[i] - c[i]) ** 2 for i in range(len(shape))))
    inside = np.clip(radius + 0.5 - r, 0, 1)  # fraction of the voxel inside the ball
    texture = np.random.default_rng(seed).normal(0, noise, shape)
    return (0.7 - 0.5 * inside + texture).astype(np.float32), r


def _dark_area(img):
    """The ball's size in voxels, read from intensities (0.2 inside, 0.7 outside)."""
    return float(np.clip((0.7 - img) / 0.5, 0, 1).sum())


@pytest.mark.parametrize("shape, radius", [((64, 64), 6.0), ((40, 40, 40), 6.0)])
def test_warp_moves_the_wall_and_keeps_the_prior_outside(shape, radius):
    prior, r = _ball(shape, radius, seed=1)
    target, _ = _ball(shape, radius + 1.0, seed=2)  # enlarged, with other texture
    mask = r <= radius + 4
    out = warp_blend(prior, target, mask)
    grown = _dark_area(out) - _dark_area(prior)
    wanted = _dark_area(target) - _dark_area(prior)
    assert 0.6 * wanted < grown < 1.1 * wanted, (grown, wanted)
    assert np.array_equal(out[~mask], prior[~mask])
    assert out.dtype == np.float32 and out.shape == prior.shape


def test_warp_keeps_the_priors_texture_not_the_targets():
    """An edit = the prior plus a change (as a model decodes it): the wall moves, but an intensity
    change that no deformation explains (a darker core) is not carried over, and the prior's own
    texture is kept."""
    prior, r = _ball((64, 64), 8.0, seed=1, noise=0.03)
    clean_before, _ = _ball((64, 64), 8.0, noise=0.0)
    clean_after, _ = _ball((64, 64), 9.0, noise=0.0)
    target = prior + (clean_after - clean_before) - np.where(r <= 4, 0.05, 0.0).astype(np.float32)
    mask = r <= 12
    out = warp_blend(prior, target, mask)
    core = r <= 3
    assert np.abs(out[core] - prior[core]).mean() < 0.02  # most of the target's 0.05 darkening is not copied
    assert _dark_area(out) - _dark_area(prior) > 0.6 * (_dark_area(clean_after) - _dark_area(clean_before))


def test_warp_of_an_unchanged_target_is_the_prior_and_is_deterministic():
    prior, r = _ball((48, 48), 6.0, seed=3)
    mask = r <= 9
    assert np.array_equal(warp_blend(prior, prior, mask), prior)
    assert np.array_equal(warp_blend(prior, prior + 0.3, np.zeros_like(mask)), prior)
    target, _ = _ball((48, 48), 7.0, seed=4)
    a, b = warp_blend(prior, target, mask), warp_blend(prior.copy(), target.copy(), mask.copy())
    assert a.tobytes() == b.tobytes()


def test_warp_ignores_the_target_outside_the_mask():
    """Only the target inside the mask is registered: a change elsewhere moves nothing."""
    prior, r = _ball((64, 64), 6.0, seed=5)
    target, _ = _ball((64, 64), 7.0, seed=5)
    mask = r <= 10
    far = target.copy()
    far[:5, :5] = 0.0  # outside the mask
    assert np.array_equal(warp_blend(prior, target, mask), warp_blend(prior, far, mask))


def test_warp_fades_at_the_edge_of_the_mask():
    """No seam: next to the mask's border the result stays close to the prior."""
    prior, r = _ball((64, 64), 6.0, seed=6)
    target, _ = _ball((64, 64), 8.0, seed=7)
    mask = r <= 9
    out = warp_blend(prior, target, mask)
    outer = mask & ~ndimage.binary_erosion(mask)
    inner_ring = mask & (r > 6.5) & (r <= 7.5)
    assert np.abs(out[outer] - prior[outer]).mean() < 0.5 * np.abs(out[inner_ring] - prior[inner_ring]).mean()


def test_warp_refuses_bad_input():
    prior, r = _ball((32, 32), 5.0)
    target = prior.copy()
    target[16, 16] = np.nan
    with pytest.raises(ValueError, match="finite"):
        warp_blend(prior, target, r <= 8)
    with pytest.raises(ValueError, match="same shape"):
        warp_blend(prior, target[:10], r <= 8)


def test_warp_from_the_registry():
    from brainsynth_cli.plugin_manager import get_manager

    reg = get_manager().registry("blender")
    assert reg.plugin_of("warp") == "blend"
    blender = reg.create("warp")
    assert isinstance(blender, WarpBlender)
    prior, r = _ball((32, 32), 5.0, seed=8)
    target, _ = _ball((32, 32), 6.0, seed=9)
    mask = r <= 8
    assert np.array_equal(blender.blend(prior, target, mask), warp_blend(prior, target, mask))
