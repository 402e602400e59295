"""The freesurfer segmenter: a fake mri_synthseg on PATH, aseg import and resampling, and the
one-line error when FreeSurfer is absent."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from brainsynth_cli.images import read_labels, write_volume

GRID2 = np.array([[-2.0, 0, 0, 90.0], [0, 2.0, 0, -126.0], [0, 0, 2.0, -72.0], [0, 0, 0, 1]])

FAKE_SYNTHSEG = '''#!{python}
"""Fake mri_synthseg: writes a 1 mm label map over the input's field of view (left half
ventricle 4, right half aparc parcel 2024, a slab of wmparc 3001)."""
import sys
import nibabel as nib
import numpy as np
args = sys.argv[1:]
src, dst = args[args.index("--i") + 1], args[args.index("--o") + 1]
img = nib.load(src)
shape = tuple(2 * n for n in img.shape)
aff = img.affine.copy()
aff[:3, :3] = aff[:3, :3] / 2.0
aff[:3, 3] = img.affine[:3, 3] - (img.affine[:3, :3] @ np.array([0.25, 0.25, 0.25]))
lab = np.zeros(shape, np.int32)
lab[: shape[0] // 2] = 4
lab[shape[0] // 2 :] = 2024
lab[:, :, :4] = 3001
nib.save(nib.Nifti1Image(lab, aff), dst)
with open(dst + ".args", "w") as fh:
    fh.write(" ".join(args))
'''


@pytest.fixture
def image(tmp_path) -> Path:
    path = tmp_path / "t1.nii.gz"
    data = np.random.default_rng(0).uniform(100, 1000, (40, 50, 40)).astype(np.float32)
    write_volume(path, data, GRID2)
    return path


@pytest.fixture
def fake_freesurfer(tmp_path, monkeypatch):
    home = tmp_path / "freesurfer"
    (home / "bin").mkdir(parents=True)
    prog = home / "bin" / "mri_synthseg"
    prog.write_text(FAKE_SYNTHSEG.format(python=sys.executable))
    prog.chmod(prog.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("FREESURFER_HOME", str(home))
    monkeypatch.setenv("PATH", str(home / "bin") + os.pathsep + os.environ.get("PATH", ""))
    return home


def test_synthseg_output_resampled_and_folded(image, fake_freesurfer, cli, tmp_path):
    out = tmp_path / "labels.nii.gz"
    r = cli("segment", image, "-o", out, "--segmenter", "freesurfer", "-O", "threads=2", "-O", "robust=true")
    assert r.exit_code == 0, r.stderr
    lab = read_labels(out)
    assert lab.shape == (40, 50, 40)
    np.testing.assert_allclose(lab.affine, GRID2)
    # x axis runs right-to-left (affine[0,0] < 0): voxel halves map to the same halves
    assert np.all(lab.data[:20, :, 2:] == 4) and np.all(lab.data[20:, :, 2:] == 42)  # 2024 folded into cortex
    assert np.all(lab.data[:, :, :2] == 2)  # wmparc 3001 -> left cerebral white matter
    assert set(np.unique(lab.data)) == {2, 4, 42}


def test_freesurfer_missing_is_one_line(image, cli, tmp_path, monkeypatch):
    monkeypatch.delenv("FREESURFER_HOME", raising=False)
    out = tmp_path / "labels.nii.gz"
    r = cli("segment", image, "-o", out, "--segmenter", "freesurfer")
    assert r.exit_code == 2
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and "FREESURFER_HOME" in line and "-O aseg=FILE" in line
    assert not out.exists()
    # FREESURFER_HOME set but no mri_synthseg anywhere
    monkeypatch.setenv("FREESURFER_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", "/nonexistent")
    r = cli("segment", image, "-o", out, "--segmenter", "freesurfer")
    assert r.exit_code == 2 and "mri_synthseg not found" in r.stderr and not out.exists()


def test_import_aseg_mgz_from_subject_dir(image, cli, tmp_path, monkeypatch):
    import nibabel as nib

    monkeypatch.delenv("FREESURFER_HOME", raising=False)
    subj = tmp_path / "bert"
    (subj / "mri").mkdir(parents=True)
    # a conformed-like 1 mm volume with a different orientation (LIA) over the same space
    lia = np.array([[-1.0, 0, 0, 92.5], [0, 0, 1, -130.5], [0, -1, 0, 30.5], [0, 0, 0, 1]])
    shape = (90, 110, 110)
    ijk = np.indices(shape).reshape(3, -1)
    world = (lia[:3, :3] @ ijk + lia[:3, 3:4]).T
    lab = np.where(world[:, 2] > -20, 17, 53).reshape(shape).astype(np.int32)  # split at z = -20 mm
    nib.save(nib.MGHImage(lab, lia), str(subj / "mri" / "aseg.mgz"))
    out = tmp_path / "labels.nii.gz"
    r = cli("segment", image, "-o", out, "--segmenter", "freesurfer", "-O", f"subject_dir={subj}")
    assert r.exit_code == 0, r.stderr
    got = read_labels(out).data
    z = GRID2[2, 2] * np.arange(40) + GRID2[2, 3]
    assert np.all(got[:, :, z > -19] == 17) and np.all(got[:, :, z < -21] == 53)
    # a subject folder without aseg is a one-line error
    r = cli("segment", image, "-o", out.with_name("x.nii.gz"), "--segmenter", "freesurfer", "-O", f"subject_dir={tmp_path}")
    assert r.exit_code == 2 and "mri/aseg.mgz" in r.stderr
    assert not out.with_name("x.nii.gz").exists()
