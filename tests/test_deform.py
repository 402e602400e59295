"""The `deform` editor: a smooth, invertible deformation to requested change rates (2D and 3D),
its errors, and the generator that wraps it."""

from __future__ import annotations

import numpy as np
import pytest
from brainsynth_plugins.deform import deform
from test_make_pairs import grid, phantom

from brainsynth_cli.errors import UserError

VENT, CORTEX = (4, 43), (3, 42)


def rate(before, after, ids):
    a, b = np.isin(before, ids).sum(), np.isin(after, ids).sum()
    return (b - a) / a * 100.0


@pytest.fixture(scope="module")
def volume():
    """A 3 mm brain phantom (46 x 54 x 44): CSF, cortex ribbon, white matter, ventricles."""
    return phantom(grid(), (46, 54, 44))


@pytest.fixture(scope="module")
def slice64():
    """A 64 x 64 axial slice through the phantom's ventricles at 3 mm."""
    img, lab = phantom(grid((64, 64, 1), shift=(0.0, 0.0, 9.0)), (64, 64, 1))
    return img[:, :, 0], lab[:, :, 0]


@pytest.mark.parametrize("targets", [{"ventricle": 15.0}, {"ventricle": 15.0, "cortex": -3.0}, {"cortex": -3.0}])
def test_2d_slice_reaches_targets(slice64, targets):
    img, lab = slice64
    assert np.isin(lab, VENT).sum() > 50
    d = deform(img, lab, targets, spacing=(3.0, 3.0))
    assert d.image.shape == img.shape and d.image.dtype == np.float32 and d.labels.dtype == lab.dtype
    for name, target in targets.items():
        assert abs(d.rates_pv[name] - target) <= 0.25
        assert abs(d.rates[name] - target) <= 1.5  # counted on the warped label map (a pixel is ~1 %)
        assert d.rates[name] == pytest.approx(rate(lab, d.labels, VENT if name == "ventricle" else CORTEX))
    assert d.min_jacobian > 0


@pytest.mark.parametrize("targets, spacing", [
    ({"ventricle": 5.0}, (3.0, 3.0, 3.0)),
    ({"ventricle": 25.0}, (3.0, 3.0, 3.0)),
    ({"cortex": -3.0}, (3.0, 3.0, 3.0)),
    ({"ventricle": 15.0, "cortex": -3.0}, (3.0, 3.0, 3.0)),
    ({"ventricle": -10.0}, (2.0, 3.0, 3.5)),
])
def test_3d_volume_reaches_targets_invertibly(volume, targets, spacing):
    img, lab = volume
    d = deform(img, lab, targets, spacing=spacing)
    for name, target in targets.items():
        assert abs(d.rates_pv[name] - target) <= 0.25
        assert abs(d.rates[name] - target) <= 0.5
        assert np.sign(d.magnitudes[name]) == np.sign(target)
    assert d.min_jacobian > 0
    assert set(d.rates) == {"cortex", "ventricle", "white-matter", "hippocampus", "csf", "brain"}


def test_ventricle_edit_leaves_the_cortex_and_the_rest_of_the_image(volume):
    img, lab = volume
    d = deform(img, lab, {"ventricle": 25.0}, spacing=(3.0, 3.0, 3.0))
    assert abs(d.rates_pv["cortex"]) <= 0.5 and abs(d.rates["cortex"]) <= 0.5
    outside = ~d.support
    assert 0 < d.moved == int(d.support.sum()) < lab.size // 4
    assert np.array_equal(d.image[outside].view(np.uint32), img[outside].view(np.uint32))  # bit for bit
    assert np.array_equal(d.labels[outside], lab[outside])
    assert np.abs(d.image - img).max() > 1.0  # the walls did move
    grown = np.isin(d.labels, VENT) & ~np.isin(lab, VENT)
    assert grown.sum() > 0 and not (np.isin(lab, CORTEX) & grown).any()  # the ventricles grew into white matter


def test_same_input_same_bytes(volume, slice64):
    for img, lab, sp in ((*volume, (3.0, 3.0, 3.0)), (*slice64, (3.0, 3.0))):
        a = deform(img, lab, {"ventricle": 12.0, "cortex": -2.0}, spacing=sp)
        b = deform(img.copy(), lab.copy(), {"ventricle": 12.0, "cortex": -2.0}, spacing=sp)
        assert a.image.tobytes() == b.image.tobytes() and a.labels.tobytes() == b.labels.tobytes()


def test_zero_target_changes_nothing_and_one_plane_volumes_are_slices(slice64):
    img, lab = slice64
    d = deform(img, lab, {"ventricle": 0.0}, spacing=(3.0, 3.0))
    assert np.array_equal(d.image, img) and np.array_equal(d.labels, lab) and d.moved == 0
    flat = deform(img, lab, {"ventricle": 10.0}, spacing=(3.0, 3.0))
    plane = deform(img[:, :, None], lab[:, :, None], {"ventricle": 10.0}, spacing=(3.0, 3.0, 3.0))
    assert plane.image.shape == img.shape + (1,) and np.array_equal(plane.image[:, :, 0], flat.image)


def test_unreachable_and_impossible_targets_are_one_line_errors(volume):
    img, lab = volume
    with pytest.raises(UserError) as exc:
        deform(img, lab, {"ventricle": 300.0}, spacing=(3.0, 3.0, 3.0))
    msg = str(exc.value)
    assert msg.startswith("ventricle: a change of +300 % is out of reach") and "it reaches" in msg and "\n" not in msg
    no_vent = np.where(np.isin(lab, VENT), 2, lab).astype(lab.dtype)
    with pytest.raises(UserError, match=r"ventricle: the structure is absent from the label map \(no voxel with label 4, 5, 43, 44\)"):
        deform(img, no_vent, {"ventricle": 5.0})
    with pytest.raises(UserError, match="cannot change structure group 'hippocampus'; it deforms ventricle and cortex"):
        deform(img, lab, {"hippocampus": -2.0})
    with pytest.raises(UserError, match="label map has shape"):
        deform(img, lab[:-1], {"ventricle": 5.0})


def test_generator_registered_edits_slices_and_volumes(volume, slice64):
    from brainsynth_cli.plugin_manager import get_manager

    spec = get_manager().registry("generator").get("deform")
    gen = spec.create()
    assert (gen.name, gen.kind, gen.needs_training) == ("deform", "editing", False)
    with pytest.raises(UserError, match=r"deform needs no training: use `brainsynth edit deform INPUT \.\.\.`"):
        gen.train(None)
    editor = gen.load()
    assert editor.resolution is None and editor.dims == ("2d", "3d") and editor.prompts == []
    assert editor.targets("moderate ventricle enlargement and cortex atrophy") == {"ventricle": 15.0, "cortex": -2.0}
    seen = []
    img2, lab2 = slice64
    img3, lab3 = volume
    out = editor.edit([img2, img3], "Severe ventricle enlargement", labels=[lab2, lab3], spacing=[(3.0, 3.0), (3.0, 3.0, 3.0)],
                      seed=5, steps=20, progress=lambda d, t, m: seen.append((d, t, m)))
    assert [o.shape for o in out] == [img2.shape, img3.shape] and all(o.dtype == np.float32 for o in out)
    assert seen[-1] == (2, 2, "slices")
    assert [r.rates_pv["ventricle"] for r in editor.last_results] == pytest.approx([25.0, 25.0], abs=0.25)
    assert rate(lab3, editor.last_labels[1], VENT) == pytest.approx(25.0, abs=0.5)
    # a slice without ventricles: refused by default, left as it is with strict=False
    empty = np.where(np.isin(lab2, VENT), 2, lab2)
    with pytest.raises(UserError, match="absent"):
        editor.edit([img2], "mild ventricle enlargement", labels=[empty], spacing=(3.0, 3.0))
    same = editor.edit([img2], "mild ventricle enlargement", labels=[empty], spacing=(3.0, 3.0), strict=False)
    assert np.array_equal(same[0], img2) and len(editor.last_notes) == 1
    with pytest.raises(UserError, match="label map per image"):
        editor.edit([img2], "mild ventricle enlargement")
