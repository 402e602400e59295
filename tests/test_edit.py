"""brainsynth edit: NIfTI and PNG inputs on the input grid, same seed same bytes, the input kept bit for
bit outside the restricted region, residual decoding, equality with diffusers'
StableDiffusionInstructPix2PixPipeline for a 3-channel model, trained intervals only, one-line errors."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest

pytest.importorskip("diffusers")

from test_train_pairs import FAST, cached, make_pairs, one_thread, phantom, phantom_labels, tiny_model, train_cli

PROMPT = "moderate ventricle enlargement"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory):
    """A 3-channel model (grey replicated to RGB), as one starting from Stable Diffusion would be."""

    def build(d):
        pairs = make_pairs(d / "pairs", size=32, subjects=2, slices=1)
        code, err = train_cli([pairs, "-o", d / "model", *FAST, "--channels", "3", "--steps", "2", "--set", "validation_count=0",
                               "--set", "prediction_type=epsilon"])  # the classic InstructPix2Pix objective
        assert code == 0, err
        return d / "model"

    return cached("rgb", tmp_path_factory, build)


def edit_cli(*args):
    from brainsynth_cli.main import run

    err, out = io.StringIO(), io.StringIO()
    with one_thread(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = run(["edit", *map(str, args)])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def volume(tmp_path_factory):
    """A small NIfTI volume in LAS orientation (x flipped), int16, with an empty first slice, and its labels."""
    import nibabel as nib

    d = tmp_path_factory.mktemp("vol")
    data = np.stack([phantom(40, 0.09 + 0.005 * k, seed=k) * 900 for k in range(5)], axis=2)[::-1]
    labels = np.stack([phantom_labels(40, 0.09 + 0.005 * k) for k in range(5)], axis=2)[::-1]
    data[:, :, 0] = 0
    labels[:, :, 0] = 0
    affine = np.array([[-2.0, 0, 0, 40], [0, 2.0, 0.1, -40], [0, 0, 3.0, -6], [0, 0, 0, 1]])
    img = nib.Nifti1Image(data.astype(np.int16), affine)
    img.header["descrip"] = b"phantom"
    nib.save(img, d / "t1.nii.gz")
    nib.save(nib.Nifti1Image(labels.astype(np.int16), affine), d / "t1_dseg.nii.gz")
    return d / "t1.nii.gz"


def labels_of(volume):
    return volume.with_name("t1_dseg.nii.gz")


def test_edit_nifti_keeps_grid_and_is_seeded(tiny, volume, tmp_path):
    import nibabel as nib

    _, model = tiny
    outs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        code, _, err = edit_cli(model, volume, "--prompt", PROMPT, "-o", tmp_path / f"{name}.nii.gz", "--steps", "4",
                                "--seed", seed, "--device", "cpu", "--labels", labels_of(volume))
        assert code == 0, err
        outs.append(nib.load(tmp_path / f"{name}.nii.gz"))
    src = nib.load(volume)
    a = outs[0].get_fdata(dtype=np.float32)
    assert outs[0].shape == src.shape and np.allclose(outs[0].affine, src.affine)
    assert outs[0].header["descrip"].item().startswith(b"phantom")
    assert outs[0].get_data_dtype() == np.int16  # the input's data type
    assert np.isfinite(a).all()
    assert np.array_equal(a[:, :, 0], src.get_fdata()[:, :, 0])  # the empty slice is left alone
    assert not np.array_equal(a[:, :, 2], src.get_fdata()[:, :, 2])  # edited slices changed
    assert np.array_equal(a, outs[1].get_fdata(dtype=np.float32))  # same seed, same bytes
    assert not np.array_equal(a, outs[2].get_fdata(dtype=np.float32))  # another seed, another sample
    assert (tmp_path / "a_before_after.png").is_file()
    side = json.loads((tmp_path / "a.json").read_text())
    assert side["prompt"] == PROMPT and side["structures"] == ["ventricle"] and side["edit_path"]["blender"] == "warp"  # the tiny preset's
    assert side["edit_path"]["residual"] is True and side["edit_path"]["region_voxels"] > 0
    # sampling: --steps as given, the rest as the model folder recommends (its preset's, from a sweep)
    recommended = json.loads((model / "brainsynth.json").read_text())["sampling"]
    assert side["sampling"]["steps"] == 4 and side["sampling_from"]["steps"] == "option"
    assert side["sampling"]["guidance_scale"] == recommended["guidance_scale"] and side["sampling_from"]["guidance_scale"] == "model"
    assert side["sampling"]["scheduler"] == recommended["scheduler"]
    assert side["sampling"]["guidance_reference"] == recommended["guidance_reference"] == "input"
    # only the chosen slices change
    code, _, err = edit_cli(model, volume, "--prompt", PROMPT, "-o", tmp_path / "d.nii.gz", "--steps", "2", "--slices", "3:4",
                            "--labels", labels_of(volume))
    assert code == 0, err
    d = nib.load(tmp_path / "d.nii.gz").get_fdata(dtype=np.float32)
    s = src.get_fdata(dtype=np.float32)
    assert np.array_equal(np.delete(d, 3, axis=2), np.delete(s, 3, axis=2)) and not np.array_equal(d[:, :, 3], s[:, :, 3])


@pytest.mark.parametrize("margin", ["0", "3"])
def test_outside_the_region_the_input_is_kept_bit_for_bit(tiny, volume, tmp_path, margin):
    """The edit changes only the named structures (ventricles) dilated by --margin; every other voxel,
    on disk, is the input's."""
    import nibabel as nib
    from scipy import ndimage

    _, model = tiny
    out = tmp_path / "e.nii.gz"
    code, _, err = edit_cli(model, volume, "--prompt", PROMPT, "-o", out, "--steps", "3", "--labels", labels_of(volume),
                            "--margin", margin)
    assert code == 0, err
    raw_in = np.asarray(nib.load(volume).dataobj)
    raw_out = np.asarray(nib.load(out).dataobj)
    labels = np.asarray(nib.load(labels_of(volume)).dataobj)
    vent = np.isin(labels, [4, 5, 43, 44])
    # margin 3 mm on 2 x 2 x 3 mm voxels: one voxel in-plane and through-plane
    region = vent if margin == "0" else ndimage.binary_dilation(vent, structure=_ball())
    region[:, :, 0] = False  # the empty first slice is not edited, so the region stops at it
    assert raw_out.dtype == raw_in.dtype
    assert np.array_equal(raw_out[~region], raw_in[~region])
    assert not np.array_equal(raw_out[region], raw_in[region])
    side = json.loads((tmp_path / "e.json").read_text())
    assert side["edit_path"]["region_voxels"] == int(region.sum())


def test_change_floor_drops_faint_changes_and_shrinks_the_rest():
    """The change floor soft-thresholds the decoded change, in units of the image's intensity window."""
    from brainsynth_cli.edit_path import EditSettings, apply, floor_change

    c = np.array([-0.03, -0.004, 0.0, 0.003, 0.02], np.float32)
    assert np.allclose(floor_change(c, 0.005), [-0.025, 0, 0, 0, 0.015])
    assert np.array_equal(floor_change(c, 0.0), c)
    image = np.full(5, 0.5, np.float32)
    out, region = apply(image, c * 900, None, [], None, EditSettings(restrict=False, change_floor=0.005), window=900.0)
    assert region is None and np.allclose(out, image + np.array([-22.5, 0, 0, 0, 13.5], np.float32), atol=1e-3)


def test_edit_change_floor_keeps_more_of_the_input(tiny, volume, tmp_path):
    """--change-floor: voxels whose change is below the floor keep the input's value; the floor and where it
    came from are recorded; a floor outside [0, 0.1] is refused in one line."""
    import nibabel as nib

    _, model = tiny
    args = [model, volume, "--prompt", PROMPT, "--steps", "3", "--labels", labels_of(volume), "--margin", "0", "--blender", "copy-paste"]
    code, _, err = edit_cli(*args, "-o", tmp_path / "a.nii.gz", "--change-floor", "0")
    assert code == 0, err
    code, _, err = edit_cli(*args, "-o", tmp_path / "b.nii.gz", "--change-floor", "0.02")
    assert code == 0, err
    src = np.asarray(nib.load(volume).dataobj).astype(np.float32)
    a = np.asarray(nib.load(tmp_path / "a.nii.gz").dataobj).astype(np.float32)
    b = np.asarray(nib.load(tmp_path / "b.nii.gz").dataobj).astype(np.float32)
    assert (b != src).sum() < (a != src).sum()  # fewer voxels changed
    assert np.abs(b - src).sum() < np.abs(a - src).sum()
    side = json.loads((tmp_path / "b.json").read_text())
    assert side["edit_path"]["change_floor"] == 0.02 and side["sampling_from"]["change_floor"] == "option"
    assert "soft threshold" in side["edit_path"]["description"]
    code, _, err = edit_cli(*args, "-o", tmp_path / "c.nii.gz", "--change-floor", "0.5")
    assert code == 2 and "--change-floor 0.5" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c.nii.gz").exists()


def test_feather_halves_the_change_in_the_regions_outer_layer():
    """The feather multiplies the change by FEATHER_WEIGHT in the region's outermost voxel layer
    (face neighbours of the outside; the array's border is not an edge), keeps it inside, and the
    input stays bit for bit outside; in 3D the layer is the region's own, before the edited slices cut it."""
    from scipy import ndimage

    from brainsynth_cli.edit_path import FEATHER_WEIGHT, EditSettings, apply, feathered, region
    from brainsynth_cli.structures import default_rules

    vent = default_rules()["ventricle"]
    labels = np.zeros((9, 9), np.int32)
    labels[3:6, 3:6] = 4
    mask = region(labels, [vent], (1.0, 1.0), 1.0)  # the 3x3 block dilated by two voxels (the minimum)
    inner = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(2, 1), border_value=1)
    outer = mask & ~inner
    assert outer.sum() == 16 and inner.sum() == mask.sum() - 16 and inner[3:6, 3:6].all()
    image = np.full((9, 9), 0.5, np.float32)
    change = np.full((9, 9), 0.2, np.float32)
    out, used = apply(image, change, labels, [vent], (1.0, 1.0), EditSettings(margin_mm=1.0, blender="copy-paste", feather=True))
    assert np.array_equal(used, mask)
    assert np.allclose(out[inner], 0.7) and np.allclose(out[outer], 0.5 + 0.2 * FEATHER_WEIGHT)
    assert np.array_equal(out[~mask], image[~mask])
    plain, _ = apply(image, change, labels, [vent], (1.0, 1.0), EditSettings(margin_mm=1.0, blender="copy-paste"))
    assert np.allclose(plain[mask], 0.7)
    edge = np.ones((4, 4), bool)  # a region filling the array has no outer layer
    assert np.array_equal(feathered(np.ones((4, 4), np.float32), edge), np.ones((4, 4), np.float32))
    vol = np.zeros((9, 9, 5), np.int32)
    vol[3:6, 3:6, 1:4] = 4
    within = np.zeros(vol.shape, bool)
    within[:, :, 2] = True  # one edited slice: its in-plane layer only, not the cut through-plane
    out3, _ = apply(np.full(vol.shape, 0.5, np.float32), np.full(vol.shape, 0.2, np.float32), vol, [vent], (1.0, 1.0, 1.0),
                        EditSettings(margin_mm=1.0, blender="copy-paste", feather=True), within=within)
    assert np.allclose(out3[4, 4, 2], 0.7) and np.allclose(out3[:, :, [0, 1, 3, 4]], 0.5)


def test_change_kept_measures_what_the_merge_left_at_the_structures():
    """change_kept: the least-squares share of the model's change left at the named structures and
    the two voxels around them: 1 pasted, 0 dropped, -1 reversed, None for no change; a Poisson
    merge of a change that still has its full size on the region's border takes most of it back
    (its border is held at the input), and a margin the change fits in keeps it."""
    from brainsynth_cli.edit_path import EditSettings, apply, change_kept
    from brainsynth_cli.structures import default_rules

    vent = default_rules()["ventricle"]
    labels = np.zeros((40, 40, 40), np.int32)
    labels[16:24, 16:24, 16:24] = 4
    image = np.full(labels.shape, 0.5, np.float32)
    zz = np.linalg.norm(np.indices(labels.shape) - 19.5, axis=0)
    change = np.where(zz < 14, -0.1, 0.0).astype(np.float32)  # a flat darkening wider than ventricles + 3 mm
    args = (labels, [vent], (1.0, 1.0, 1.0))
    assert change_kept(image, change, image + change, *args) == pytest.approx(1.0)
    assert change_kept(image, change, image, *args) == pytest.approx(0.0)
    assert change_kept(image, change, image - change, *args) == pytest.approx(-1.0)
    assert change_kept(image, np.zeros_like(change), image, *args) is None
    pasted, _ = apply(image, change, *args, EditSettings(margin_mm=3.0, blender="copy-paste"))
    narrow, _ = apply(image, change, *args, EditSettings(margin_mm=3.0, blender="poisson"))
    wide, _ = apply(image, change, *args, EditSettings(margin_mm=15.0, blender="poisson"))
    assert change_kept(image, change, pasted, *args) == pytest.approx(1.0)
    assert change_kept(image, change, narrow, *args) < 0.1
    assert change_kept(image, change, wide, *args) == pytest.approx(1.0, abs=1e-3)


def test_edit_feather_comes_from_the_model_and_can_be_turned_off(tiny, volume, tmp_path):
    """The tiny preset recommends the feather: `edit` takes it from the model folder, --no-feather
    turns it off, both recorded in the sidecar; the two edits differ only in the region's outer layer."""
    import nibabel as nib
    from scipy import ndimage

    _, model = tiny
    assert json.loads((model / "brainsynth.json").read_text())["sampling"]["feather"] is True
    args = [model, volume, "--prompt", PROMPT, "--steps", "3", "--labels", labels_of(volume), "--blender", "copy-paste"]
    code, _, err = edit_cli(*args, "-o", tmp_path / "a.nii.gz")
    assert code == 0, err
    code, _, err = edit_cli(*args, "-o", tmp_path / "b.nii.gz", "--no-feather")
    assert code == 0, err
    a_side, b_side = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a_side["edit_path"]["feather"] is True and a_side["sampling_from"]["feather"] == "model"
    assert "outermost voxel layer" in a_side["edit_path"]["description"]
    assert b_side["edit_path"]["feather"] is False and b_side["sampling_from"]["feather"] == "option"
    src = np.asarray(nib.load(volume).dataobj).astype(np.float32)
    a = np.asarray(nib.load(tmp_path / "a.nii.gz").dataobj).astype(np.float32)
    b = np.asarray(nib.load(tmp_path / "b.nii.gz").dataobj).astype(np.float32)
    labels = np.asarray(nib.load(labels_of(volume)).dataobj)
    region = ndimage.binary_dilation(np.isin(labels, [4, 5, 43, 44]), structure=_ball())
    region[:, :, 0] = False
    inner = ndimage.binary_erosion(region, structure=ndimage.generate_binary_structure(3, 1), border_value=1)
    differ = a != b
    assert differ.any() and not (differ & inner).any() and not (differ & ~region).any()
    assert np.abs(a - src)[differ].sum() < np.abs(b - src)[differ].sum()  # half the change there


def test_edit_blender_comes_from_the_model_and_can_be_overridden(tiny, volume, tmp_path):
    """The tiny preset recommends the `warp` blender: `edit` takes it from the model folder,
    --blender poisson overrides it; both recorded; the two edits differ only inside the region."""
    import nibabel as nib
    from scipy import ndimage

    _, model = tiny
    assert json.loads((model / "brainsynth.json").read_text())["sampling"]["blender"] == "warp"
    args = [model, volume, "--prompt", PROMPT, "--steps", "3", "--labels", labels_of(volume)]
    code, _, err = edit_cli(*args, "-o", tmp_path / "a.nii.gz")
    assert code == 0, err
    code, _, err = edit_cli(*args, "-o", tmp_path / "b.nii.gz", "--blender", "poisson")
    assert code == 0, err
    a_side, b_side = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "ab")
    assert a_side["edit_path"]["blender"] == "warp" and a_side["sampling_from"]["blender"] == "model"
    assert "merged by warp" in a_side["edit_path"]["description"]
    assert b_side["edit_path"]["blender"] == "poisson" and b_side["sampling_from"]["blender"] == "option"
    a = np.asarray(nib.load(tmp_path / "a.nii.gz").dataobj).astype(np.float32)
    b = np.asarray(nib.load(tmp_path / "b.nii.gz").dataobj).astype(np.float32)
    labels = np.asarray(nib.load(labels_of(volume)).dataobj)
    region = ndimage.binary_dilation(np.isin(labels, [4, 5, 43, 44]), structure=_ball())
    differ = a != b
    assert differ.any() and not (differ & ~region).any()


def _ball():
    from brainsynth_cli.edit_path import ball

    return ball(3.0, (2.0, 2.0, 3.0))


def test_residual_decoding_adds_the_decoded_change(tiny):
    """edit = x + (D(z_edit) - D(E(x))) / 2, where z_edit is what the diffusers pipeline denoises to."""
    import torch
    from brainsynth_plugins.ip2p.model import IP2PModel

    _, model = tiny
    m = IP2PModel(model, "cpu")
    x = phantom(32, 0.1)
    with one_thread():
        res = m.edit([x], PROMPT, steps=3, seed=4)[0]
        whole = m.edit([x], PROMPT, steps=3, seed=4, residual=False)[0]
        from brainsynth_plugins.ip2p.model import scheduler_for

        m.pipe.scheduler = scheduler_for("ddim", m._scheduler_config)
        t = torch.from_numpy(x)[None, None]
        torch.use_deterministic_algorithms(True)
        try:
            lat = m.pipe(prompt=[PROMPT], image=t, num_inference_steps=3, guidance_scale=7.5, image_guidance_scale=1.5,
                         generator=torch.Generator().manual_seed(4), output_type="latent").images
        finally:
            torch.use_deterministic_algorithms(False)
        with torch.no_grad():
            dec = m.pipe.vae.decode(lat / m.pipe.vae.config.scaling_factor).sample[0, 0].numpy()
            base = m.pipe.vae.decode(m.pipe.vae.encode(t * 2 - 1).latent_dist.mode()).sample[0, 0].numpy()
    assert np.allclose(res, x + (dec - base) / 2, atol=1e-5)
    assert np.allclose(whole, np.clip((dec + 1) / 2, 0, 1), atol=1e-5)


def test_image_guidance_one_runs_two_branches_and_matches_the_pipeline(tiny):
    """At image guidance 1 the sampler drops the unconditional UNet branch (it cancels): the
    latents equal diffusers' three-branch pipeline's to float rounding, for a third less UNet work."""
    import torch
    from brainsynth_plugins.ip2p.model import IP2PModel, image_conditioning, scheduler_for
    from brainsynth_plugins.ip2p.sampling import denoise, guidance_branches

    assert [guidance_branches(g, s) for g, s in ((3.0, 1.0), (7.5, 1.5), (1.0, 1.0), (3.0, 0.5))] == [2, 3, 1, 1]
    _, model = tiny
    m = IP2PModel(model, "cpu")
    t = torch.from_numpy(np.stack([phantom(32, 0.1), phantom(32, 0.14)]))[:, None]
    calls = []
    unet_forward = m.pipe.unet.forward
    m.pipe.unet.forward = lambda x, *a, **k: (calls.append(len(x)), unet_forward(x, *a, **k))[1]
    with one_thread():
        torch.use_deterministic_algorithms(True)
        try:
            m.pipe.scheduler = scheduler_for("ddim", m._scheduler_config)
            with torch.no_grad():
                ours = denoise(m.pipe, image_conditioning(m.pipe.vae, t * 2 - 1), [PROMPT] * 2, steps=3, guidance_scale=3.0,
                               image_guidance_scale=1.0, generator=torch.Generator().manual_seed(4))
            assert calls == [4, 4, 4]  # two branches of two images, three steps
            calls.clear()
            theirs = m.pipe(prompt=[PROMPT] * 2, image=t, num_inference_steps=3, guidance_scale=3.0, image_guidance_scale=1.0,
                            generator=torch.Generator().manual_seed(4), output_type="latent").images
            assert calls == [6, 6, 6]
        finally:
            torch.use_deterministic_algorithms(False)
            m.pipe.unet.forward = unet_forward
    assert ours.shape == theirs.shape and float((ours - theirs).abs().max()) < 1e-4
    assert float((ours - theirs).abs().max()) < 1e-2 * float(theirs.abs().max())


def test_training_and_edit_condition_the_unet_identically(tiny):
    """The prior latent the trainer feeds the UNet is the one the pipeline builds at inference."""
    import torch
    from brainsynth_plugins.ip2p.model import IP2PModel, image_conditioning

    _, model = tiny
    m = IP2PModel(model, "cpu")
    x = torch.from_numpy(phantom(32, 0.12))[None, None]
    with torch.no_grad():
        ours = image_conditioning(m.pipe.vae, x * 2 - 1)
        pre = m.pipe.image_processor.preprocess(x)
        theirs = m.pipe.prepare_image_latents(pre, 1, 1, pre.dtype, torch.device("cpu"), False)
    assert torch.allclose(ours, theirs)
    assert m.pipe.vae.config.scaling_factor != 1.0  # the conditioning is not the scaled latent the targets are diffused on


def test_edit_png_16bit_and_schedulers(tiny, tmp_path):
    from brainsynth_cli.images import read_png

    pairs, model = tiny
    src = next((pairs / "images").glob("*_prior.png"))  # its label slice *_prior_dseg.png lies beside it
    results = {}
    for sched in ("ddim", "dpm++"):
        for rep in (0, 1):
            out = tmp_path / f"{sched}-{rep}.png"
            code, _, err = edit_cli(model, src, "--prompt", PROMPT, "-o", out, "--steps", "3", "--scheduler", sched, "--seed", 5)
            assert code == 0, err
            results[sched, rep] = out.read_bytes()
        arr, bits = read_png(tmp_path / f"{sched}-0.png")
        assert bits == 16 and arr.shape == (32, 32)
        assert results[sched, 0] == results[sched, 1]
    assert results["ddim", 0] != results["dpm++", 0]
    # the tiny preset predicts the clean latent, which Euler ancestral cannot run: one line
    code, _, err = edit_cli(model, src, "--prompt", PROMPT, "-o", tmp_path / "e.png", "--scheduler", "euler-a")
    _one_line(code, err, "euler-a cannot run", "ddim or dpm++")


def test_diffusers_pipeline_gives_the_same_image(rgb_model, tmp_path):
    """A 3-channel model folder loads in StableDiffusionInstructPix2PixPipeline and gives what `edit` gives."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline
    from PIL import Image

    from brainsynth_cli.images import read_png, write_png

    src = tmp_path / "slice.png"
    write_png(src, np.round(phantom(32, 0.1) * 255).astype(np.uint8), bits=8)
    for sched, cls in (("ddim", None), ("euler-a", EulerAncestralDiscreteScheduler)):
        out = tmp_path / f"edit-{sched}.png"
        code, _, err = edit_cli(rgb_model, src, "--prompt", PROMPT, "-o", out, "--steps", "4", "--seed", 11, "--scheduler", sched,
                                "--guidance-scale", "5", "--image-guidance-scale", "1.3", "--device", "cpu", "--no-residual", "--no-restrict",
                                "--change-floor", "0", "--guidance-reference", "empty-prompt")
        assert code == 0, err
        ours, bits = read_png(out)
        with one_thread():
            pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(rgb_model, safety_checker=None, requires_safety_checker=False)
            if cls is not None:
                pipe.scheduler = cls.from_config(pipe.scheduler.config)
            pipe.set_progress_bar_config(disable=True)
            was = torch.are_deterministic_algorithms_enabled()
            torch.use_deterministic_algorithms(True)
            try:
                image = pipe(PROMPT, image=Image.open(src).convert("RGB"), num_inference_steps=4, guidance_scale=5,
                             image_guidance_scale=1.3, generator=torch.Generator().manual_seed(11), output_type="np").images[0]
            finally:
                torch.use_deterministic_algorithms(was)
        theirs = np.round(image.astype(np.float64).mean(axis=2) * 255).astype(np.uint8)
        assert bits == 8 and ours.shape == theirs.shape == (32, 32)
        assert np.array_equal(ours, theirs), np.abs(ours.astype(int) - theirs).max()


def _one_line(code, err, *words):
    lines = [line for line in err.strip().splitlines() if line.startswith("brainsynth: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], lines[0]


def test_edit_errors(tiny, volume, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")  # a usage error's message on one row of its box
    _, model = tiny
    lab = ["--labels", labels_of(volume)]
    # a prompt the model cannot read, and one it was not trained on: one line listing what it knows; --free-prompt passes
    code, _, err = edit_cli(model, volume, "--prompt", "hippocampus growth", "-o", tmp_path / "x.nii.gz", *lab)
    _one_line(code, err, "cannot read the prompt", "mild ventricle enlargement", "--free-prompt")
    code, _, err = edit_cli(model, volume, "--prompt", "cortex atrophy", "-o", tmp_path / "x.nii.gz", *lab)
    _one_line(code, err, "not trained on cortex atrophy", "'severe ventricle enlargement'", "--free-prompt")
    assert not (tmp_path / "x.nii.gz").exists()
    code, _, err = edit_cli(model, volume, "--prompt", "hippocampus growth", "-o", tmp_path / "x.nii.gz", "--free-prompt",
                            "--steps", "1", "--slices", "center:1", "--no-restrict")
    assert code == 0 and (tmp_path / "x.nii.gz").is_file(), err
    # a free prompt names no structure: a restricted edit is refused
    _one_line(*edit_cli(model, volume, "--prompt", "hippocampus growth", "-o", tmp_path / "w.nii.gz", "--free-prompt", *lab)[::2],
              "names no structure", "--no-restrict")
    # output = input (also through a symlink) is refused before anything is written
    before = volume.read_bytes()
    _one_line(*edit_cli(model, volume, "--prompt", PROMPT, "-o", volume, *lab)[::2], "brainsynth never writes over its inputs")
    link = tmp_path / "link.nii.gz"
    link.symlink_to(volume)
    _one_line(*edit_cli(model, volume, "--prompt", PROMPT, "-o", link, *lab)[::2], "brainsynth never writes over its inputs")
    assert volume.read_bytes() == before
    # a figure that cannot be written: refused before the edit, nothing written
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line(*edit_cli(model, volume, "--prompt", PROMPT, "-o", tmp_path / "f.nii.gz", "--figure", blocker / "f.png", *lab)[::2],
              "cannot be written")
    assert not (tmp_path / "f.nii.gz").exists()
    # labels that do not match the input
    _one_line(*edit_cli(model, volume, "--prompt", PROMPT, "-o", tmp_path / "g.nii.gz", "--labels", tmp_path / "none.nii.gz")[::2],
              "no such file")
    # a model folder missing parts
    broken = tmp_path / "broken"
    shutil.copytree(model, broken, ignore=shutil.ignore_patterns("checkpoints", "validation"))
    shutil.rmtree(broken / "unet")
    _one_line(*edit_cli(broken, volume, "--prompt", PROMPT, "-o", tmp_path / "z.nii.gz", *lab)[::2], "missing unet")
    (broken / "brainsynth.json").unlink()
    _one_line(*edit_cli(broken, volume, "--prompt", PROMPT, "-o", tmp_path / "z.nii.gz", *lab)[::2], "brainsynth.json")
    # not a model folder nor a training-free generator
    _one_line(*edit_cli(tmp_path / "nothing", volume, "--prompt", PROMPT, "-o", tmp_path / "z.nii.gz", *lab)[::2], "is not a model folder")
    # wrong output type, bad slices, missing input, bad numbers
    _one_line(*edit_cli(model, volume, "--prompt", PROMPT, "-o", tmp_path / "z.png")[::2], ".nii.gz")
    _one_line(*edit_cli(model, volume, "--prompt", PROMPT, "-o", tmp_path / "z.nii.gz", "--slices", "3:99", *lab)[::2], "--slices")
    _one_line(*edit_cli(model, tmp_path / "none.nii.gz", "--prompt", PROMPT, "-o", tmp_path / "z.nii.gz")[::2], "no such file")
    code, _, err = edit_cli(model, volume, "--prompt", PROMPT, "-o", tmp_path / "z.nii.gz", "--scheduler", "plms", *lab)
    assert code == 2 and "'plms' is not one of 'ddim', 'dpm++', 'euler-a'" in err and not (tmp_path / "z.nii.gz").exists()
    _one_line(*edit_cli(model, volume, "--prompt", PROMPT, "-o", tmp_path / "z.nii.gz", "--image-guidance-scale", "nan")[::2], "--image-guidance-scale")
    _one_line(*edit_cli(model, volume, "--prompt", PROMPT, "-o", tmp_path / "z.nii.gz", "--margin", "-1")[::2], "--margin")
    _one_line(*edit_cli(model, volume, "--prompt", PROMPT, "-o", tmp_path / "z.nii.gz", "--blender", "posson")[::2], "did you mean 'poisson'")
    assert not (tmp_path / "z.nii.gz").exists()


def test_edit_with_the_training_free_deform_generator(volume, tmp_path):
    """`brainsynth edit deform ...` needs no model folder: the whole volume is deformed at once, the
    ventricles grow, and outside the ventricles (+ margin) the input is kept bit for bit."""
    import nibabel as nib
    from scipy import ndimage

    out = tmp_path / "deformed.nii.gz"
    code, stdout, err = edit_cli("deform", volume, "--prompt", "severe ventricle enlargement", "-o", out, "--labels", labels_of(volume))
    assert code == 0, err
    raw_in = np.asarray(nib.load(volume).dataobj)
    raw_out = np.asarray(nib.load(out).dataobj)
    labels = np.asarray(nib.load(labels_of(volume)).dataobj)
    vent = np.isin(labels, [4, 5, 43, 44])
    region = ndimage.binary_dilation(vent, structure=_ball())
    assert np.array_equal(raw_out[~region], raw_in[~region]) and not np.array_equal(raw_out, raw_in)
    # the ventricles (dark) grow: fewer bright voxels just outside them
    rim = region & ~vent
    assert raw_out[rim].astype(float).mean() < raw_in[rim].astype(float).mean()
    side = json.loads((tmp_path / "deformed.json").read_text())
    assert side["generator"] == "deform" and side["model"] is None and side["structures"] == ["ventricle"]
    kept = side["edit_path"]["change_kept"]  # a deformation's change sits at the walls: the merge keeps most of it
    assert 0.5 < kept < 1.5 and f"kept: {kept:.0%} of the model's change" in stdout
    # a generator that needs training is not a model
    _one_line(*edit_cli("instruct-pix2pix", volume, "--prompt", PROMPT, "-o", tmp_path / "x.nii.gz")[::2], "needs a trained model folder")
