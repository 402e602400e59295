"""brainsynth edit: NIfTI and PNG inputs on the input grid, same seed same bytes, equality with
diffusers' StableDiffusionInstructPix2PixPipeline for a 3-channel model, one-line errors."""

from __future__ import annotations

import contextlib
import io
import shutil

import numpy as np
import pytest

pytest.importorskip("diffusers")

from test_train_pairs import FAST, cached, make_pairs, one_thread, phantom, tiny_model, train_cli

PROMPT = "moderate ventricle enlargement"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def rgb_model(tmp_path_factory):
    """A 3-channel model (grey replicated to RGB), as one starting from Stable Diffusion would be."""

    def build(d):
        pairs = make_pairs(d / "pairs", size=32, subjects=2, slices=1)
        code, err = train_cli([pairs, "-o", d / "model", *FAST, "--channels", "3", "--steps", "2", "--set", "validation_count=0"])
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
    """A small NIfTI volume in LAS orientation (x flipped), int16, with an empty first slice."""
    import nibabel as nib

    d = tmp_path_factory.mktemp("vol")
    data = np.stack([phantom(40, 0.09 + 0.005 * k, seed=k) * 900 for k in range(5)], axis=2)[::-1]
    data[:, :, 0] = 0
    affine = np.array([[-2.0, 0, 0, 40], [0, 2.0, 0.1, -40], [0, 0, 3.0, -6], [0, 0, 0, 1]])
    img = nib.Nifti1Image(data.astype(np.int16), affine)
    img.header["descrip"] = b"phantom"
    nib.save(img, d / "t1.nii.gz")
    return d / "t1.nii.gz"


def test_edit_nifti_keeps_grid_and_is_seeded(tiny, volume, tmp_path):
    import nibabel as nib

    _, model = tiny
    outs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        code, _, err = edit_cli(model, volume, "--prompt", PROMPT, "-o", tmp_path / f"{name}.nii.gz", "--steps", "4",
                                  "--seed", seed, "--device", "cpu")
        assert code == 0, err
        outs.append(nib.load(tmp_path / f"{name}.nii.gz"))
    src = nib.load(volume)
    a = outs[0].get_fdata(dtype=np.float32)
    assert outs[0].shape == src.shape and np.allclose(outs[0].affine, src.affine)
    assert outs[0].header["descrip"].item().startswith(b"phantom")
    assert np.isfinite(a).all()
    assert np.array_equal(a[:, :, 0], src.get_fdata()[:, :, 0])  # the empty slice is left alone
    assert not np.array_equal(a[:, :, 2], src.get_fdata()[:, :, 2])  # edited slices changed
    assert np.array_equal(a, outs[1].get_fdata(dtype=np.float32))  # same seed, same bytes
    assert not np.array_equal(a, outs[2].get_fdata(dtype=np.float32))  # another seed, another sample
    assert (tmp_path / "a_before_after.png").is_file()
    # only the chosen slices change
    code, _, err = edit_cli(model, volume, "--prompt", PROMPT, "-o", tmp_path / "d.nii.gz", "--steps", "2", "--slices", "3:4")
    assert code == 0, err
    d = nib.load(tmp_path / "d.nii.gz").get_fdata(dtype=np.float32)
    s = src.get_fdata(dtype=np.float32)
    assert np.array_equal(np.delete(d, 3, axis=2), np.delete(s, 3, axis=2)) and not np.array_equal(d[:, :, 3], s[:, :, 3])


def test_edit_png_16bit_and_schedulers(tiny, tmp_path):
    from brainsynth_cli.images import read_png

    pairs, model = tiny
    src = next((pairs / "images").glob("*_prior.png"))
    results = {}
    for sched in ("ddim", "dpm++", "euler-a"):
        for rep in (0, 1):
            out = tmp_path / f"{sched}-{rep}.png"
            code, _, err = edit_cli(model, src, "--prompt", PROMPT, "-o", out, "--steps", "3", "--scheduler", sched, "--seed", 5)
            assert code == 0, err
            results[sched, rep] = out.read_bytes()
        arr, bits = read_png(tmp_path / f"{sched}-0.png")
        assert bits == 16 and arr.shape == (32, 32)
        assert results[sched, 0] == results[sched, 1]
    assert results["ddim", 0] != results["euler-a", 0]


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
                                "--guidance-scale", "5", "--image-guidance-scale", "1.3", "--device", "cpu")
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


def test_edit_errors(tiny, volume, tmp_path):
    _, model = tiny
    # a prompt the model does not know: one line listing what it knows; --free-prompt passes
    code, _, err = edit_cli(model, volume, "--prompt", "hippocampus growth", "-o", tmp_path / "x.nii.gz")
    _one_line(code, err, "does not know", "mild ventricle enlargement", "cortex atrophy", "--free-prompt")
    assert not (tmp_path / "x.nii.gz").exists()
    code, _, err = edit_cli(model, volume, "--prompt", "hippocampus growth", "-o", tmp_path / "x.nii.gz", "--free-prompt",
                            "--steps", "1", "--slices", "center:1")
    assert code == 0 and (tmp_path / "x.nii.gz").is_file(), err
    # phrases of the rules combine
    code, _, err = edit_cli(model, volume, "--prompt", "cortex atrophy and mild ventricle enlargement", "-o", tmp_path / "y.nii.gz",
                            "--steps", "1", "--slices", "center:1")
    assert code == 0, err
    # a model folder missing parts
    broken = tmp_path / "broken"
    shutil.copytree(model, broken, ignore=shutil.ignore_patterns("checkpoints", "validation"))
    shutil.rmtree(broken / "unet")
    _one_line(*edit_cli(broken, volume, "--prompt", PROMPT, "-o", tmp_path / "z.nii.gz")[::2], "missing unet")
    (broken / "brainsynth.json").unlink()
    _one_line(*edit_cli(broken, volume, "--prompt", PROMPT, "-o", tmp_path / "z.nii.gz")[::2], "brainsynth.json")
    # wrong output type, bad slices, missing input
    _one_line(*edit_cli(model, volume, "--prompt", PROMPT, "-o", tmp_path / "z.png")[::2], ".nii.gz")
    _one_line(*edit_cli(model, volume, "--prompt", PROMPT, "-o", tmp_path / "z.nii.gz", "--slices", "3:99")[::2], "--slices")
    _one_line(*edit_cli(model, tmp_path / "none.nii.gz", "--prompt", PROMPT, "-o", tmp_path / "z.nii.gz")[::2], "no such file")
    _one_line(*edit_cli(model, volume, "--prompt", PROMPT, "-o", tmp_path / "z.nii.gz", "--scheduler", "plms")[::2], "unknown scheduler")
    assert not (tmp_path / "z.nii.gz").exists()
