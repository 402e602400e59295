"""`brainsynth blend`: NIfTI (3D and 2D) and PNG inputs, blenders by name, one-line errors,
no partial output."""

from __future__ import annotations

import numpy as np
import pytest


def _images(shape, seed=0):
    rng = np.random.default_rng(seed)
    g = np.indices(shape, dtype=np.float64)
    c = [(s - 1) / 2 for s in shape]
    r2 = sum(((g[i] - c[i]) / (0.4 * shape[i])) ** 2 for i in range(len(shape)))
    prior = np.where(r2 < 1, 600.0, 50.0) + rng.normal(0, 10, shape)
    target = 1.3 * prior + 100 + rng.normal(0, 10, shape)
    labels = np.where(r2 < 0.2, 4, np.where(r2 < 1, 2, 0)).astype(np.int16)
    return prior.astype(np.float32), target.astype(np.float32), labels


@pytest.fixture(scope="module")
def nifti_case(tmp_path_factory):
    import nibabel as nib

    d = tmp_path_factory.mktemp("blend_cli")
    prior, target, labels = _images((18, 20, 16))
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-27, -30, -24]
    paths = {}
    for name, arr in (("prior", prior), ("target", target), ("labels", labels)):
        img = nib.Nifti1Image(arr, affine)
        img.header["descrip"] = b"test " + name.encode()
        paths[name] = d / f"{name}.nii.gz"
        nib.save(img, paths[name])
    return d, paths, prior, target, labels, affine


def test_blend_nifti_poisson(cli, nifti_case):
    import nibabel as nib
    from brainsynth_plugins.blend.reference import direct_solution

    d, p, prior, target, labels, affine = nifti_case
    out = d / "out" / "blended.nii.gz"
    res = cli("blend", p["prior"], p["target"], p["labels"], "-o", out)
    assert res.exit_code == 0, res.stderr
    assert "wrote" in res.stdout and "poisson" in res.stdout and "iterations, relative residual" in res.stdout
    img = nib.load(out)
    data = np.asarray(img.dataobj)
    assert data.dtype == np.float32
    assert np.allclose(img.affine, affine)
    assert img.header["descrip"].tobytes().startswith(b"test prior")
    mask = labels != 0
    assert np.array_equal(data[~mask], prior[~mask])
    exact = direct_solution(prior, target, mask)
    assert np.abs(data - exact).max() <= 1e-5 * float(target.max() - prior.min())
    assert not list(out.parent.glob(".*tmp*"))


@pytest.mark.parametrize("blender", ["copy-paste", "none"])
def test_blend_nifti_other_blenders(cli, nifti_case, blender):
    import nibabel as nib

    d, p, prior, target, labels, _ = nifti_case
    out = d / f"{blender}.nii"
    res = cli("blend", p["prior"], p["target"], p["labels"], "-o", out, "--blender", blender)
    assert res.exit_code == 0, res.stderr
    data = np.asarray(nib.load(out).dataobj)
    expect = np.where(labels != 0, target, prior) if blender == "copy-paste" else prior
    assert np.array_equal(data, expect)


def test_blend_png_2d(cli, tmp_path):
    from PIL import Image

    from brainsynth_cli.images import read_png

    prior, target, labels = _images((40, 44), seed=3)
    files = {}
    for name, arr in (("prior", prior), ("target", target), ("mask", (labels == 4) * 255)):
        files[name] = tmp_path / f"{name}.png"
        bits = 8 if name == "mask" else 16
        Image.fromarray(np.clip(np.rint(arr), 0, 65535).astype(np.uint8 if bits == 8 else np.uint16)).save(files[name])
    out = tmp_path / "out.png"
    res = cli("blend", files["prior"], files["target"], files["mask"], "-o", out)
    assert res.exit_code == 0, res.stderr
    arr, bits = read_png(out)
    p16, _ = read_png(files["prior"])
    assert bits == 16 and arr.shape == (40, 44)
    mask = labels == 4
    assert np.array_equal(arr[~mask], p16[~mask])
    assert np.abs(arr[mask].astype(float) - p16[mask]).mean() > 1  # the region changed


def test_blend_errors(cli, nifti_case, tmp_path):
    import nibabel as nib

    _, p, _, target, labels, affine = nifti_case
    out = tmp_path / "never.nii.gz"
    # mask on another grid
    other = tmp_path / "shifted.nii.gz"
    moved = affine.copy()
    moved[0, 3] += 5
    nib.save(nib.Nifti1Image(labels, moved), other)
    res = cli("blend", p["prior"], p["target"], other, "-o", out)
    assert res.exit_code == 2 and "shifted.nii.gz" in res.stderr and "resample" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    # target of another shape
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(target[:-1], affine), small)
    res = cli("blend", p["prior"], small, p["labels"], "-o", out)
    assert res.exit_code == 2 and "small.nii.gz" in res.stderr and "shape" in res.stderr
    # empty mask
    empty = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros_like(labels), affine), empty)
    res = cli("blend", p["prior"], p["target"], empty, "-o", out)
    assert res.exit_code == 2 and "nothing to blend" in res.stderr
    # unknown blender, with a suggestion
    res = cli("blend", p["prior"], p["target"], p["labels"], "-o", out, "--blender", "poison")
    assert res.exit_code == 2 and "did you mean 'poisson'" in res.stderr
    # wrong output suffix; mixed formats
    res = cli("blend", p["prior"], p["target"], p["labels"], "-o", tmp_path / "x.png")
    assert res.exit_code == 2 and "x.png" in res.stderr
    png = tmp_path / "m.png"
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(png)
    res = cli("blend", p["prior"], p["target"], png, "-o", out)
    assert res.exit_code == 2 and "same format" in res.stderr
    # solver cap reached: one line with the fix, no output written
    res = cli("blend", p["prior"], p["target"], p["labels"], "-o", out, "--rtol", "1e-12", "--maxiter", "1")
    assert res.exit_code == 2 and "raise maxiter" in res.stderr
    res = cli("blend", p["prior"], p["target"], p["labels"], "-o", out, "--blender", "none", "--rtol", "1e-3")
    assert res.exit_code == 2 and "--rtol" in res.stderr
    assert not out.exists() and not list(tmp_path.glob(".never*"))
