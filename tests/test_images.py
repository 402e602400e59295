"""Kernel image I/O: round trips keep affine and header; every broken input is one clear error."""

import gzip
import os

import nibabel as nib
import numpy as np
import pytest

from brainsynth_cli.errors import InputError
from brainsynth_cli.images import (
    Volume, atomic_output, check_same_grid, read_labels, read_png, read_volume, write_labels, write_png, write_volume,
)

AFFINE = np.array([[-2.0, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]])


def save(path, data, affine=AFFINE, descrip=b"test scan"):
    img = nib.Nifti1Image(np.asarray(data), affine)
    img.header["descrip"] = descrip
    nib.save(img, str(path))
    return path


def test_nifti_round_trip_keeps_affine_header_and_values(tmp_path):
    data = np.random.default_rng(0).normal(100, 10, (10, 12, 8)).astype(np.float32)
    src = save(tmp_path / "in.nii.gz", data)
    vol = read_volume(src)
    assert vol.data.dtype == np.float32 and vol.shape == (10, 12, 8)
    assert vol.voxel_size == (2.0, 2.0, 2.0) and vol.voxel_volume == 8.0
    out = write_volume(tmp_path / "out.nii.gz", vol.data * 2, vol.affine, vol.header)
    back = nib.load(str(out))
    np.testing.assert_array_equal(back.affine, AFFINE)
    assert back.header["descrip"].tobytes().rstrip(b"\0") == b"test scan"
    np.testing.assert_allclose(np.asarray(back.dataobj), data * 2)
    assert int(back.header["sform_code"]) > 0 and int(back.header["qform_code"]) > 0


def test_same_data_gives_same_bytes(tmp_path):
    data = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    a = write_volume(tmp_path / "a.nii.gz", data, AFFINE)
    b = write_volume(tmp_path / "b.nii.gz", data, AFFINE)
    assert a.read_bytes() == b.read_bytes()


def test_labels_round_trip_as_integers(tmp_path):
    lab = np.zeros((6, 6, 6), np.int32)
    lab[1:3, 1:3, 1:3] = 43
    src = write_labels(tmp_path / "lab.nii.gz", lab, AFFINE)
    assert nib.load(str(src)).get_data_dtype() == np.int16
    back = read_labels(src)
    assert back.data.dtype == np.int32 and np.array_equal(back.data, lab)


def test_float_coded_integer_labels_are_accepted(tmp_path):
    lab = np.zeros((4, 4, 4), np.float32)
    lab[0, 0, 0] = 4.0
    assert read_labels(save(tmp_path / "f.nii.gz", lab)).data[0, 0, 0] == 4


def one_line(exc: InputError, path) -> str:
    msg = str(exc)
    assert "\n" not in msg and str(path) in msg
    return msg


@pytest.mark.parametrize(
    "maker, needle",
    [
        (lambda p: p.write_bytes(b"\x1f\x8b" + os.urandom(200)), "corrupt"),
        (lambda p: p.write_bytes(gzip.compress(b"not a nifti header at all" * 20)), "cannot be read"),
        (lambda p: save(p, np.zeros((4, 4, 4, 3), np.float32)), "4D with 3 volumes"),
        (lambda p: save(p, np.full((4, 4, 4), np.nan, np.float32)), "64 non-finite"),
        (lambda p: save(p, np.zeros((4, 4), np.float32)), "is 2D"),
    ],
)
def test_bad_images_give_one_line_errors(tmp_path, maker, needle):
    path = tmp_path / "bad.nii.gz"
    maker(path)
    with pytest.raises(InputError) as exc:
        read_volume(path)
    assert needle in one_line(exc.value, path)


def test_truncated_gzip_is_reported(tmp_path):
    good = save(tmp_path / "good.nii.gz", np.ones((20, 20, 20), np.float32))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(InputError) as exc:
        read_volume(bad)
    assert "corrupt or truncated" in one_line(exc.value, bad)


def test_not_nifti_missing_and_folder(tmp_path):
    (tmp_path / "scan.png").write_bytes(b"x")
    for path, needle in ((tmp_path / "scan.png", "not a NIfTI"), (tmp_path / "nope.nii.gz", "no such file"), (tmp_path, "folder")):
        with pytest.raises(InputError) as exc:
            read_volume(path)
        assert needle in one_line(exc.value, path)


def test_single_volume_4d_is_squeezed(tmp_path):
    assert read_volume(save(tmp_path / "a.nii", np.ones((3, 4, 5, 1), np.float32))).shape == (3, 4, 5)


def test_non_integer_labels_are_refused(tmp_path):
    path = save(tmp_path / "lab.nii.gz", np.full((4, 4, 4), 0.5, np.float32))
    with pytest.raises(InputError) as exc:
        read_labels(path)
    assert "not a label map" in one_line(exc.value, path)


def test_grid_mismatch_shape_and_affine():
    img = Volume(np.zeros((4, 4, 4)), AFFINE)
    with pytest.raises(InputError, match="shape"):
        check_same_grid(img, Volume(np.zeros((4, 4, 5)), AFFINE))
    shifted = AFFINE.copy()
    shifted[0, 3] += 1.0
    with pytest.raises(InputError, match="affine differs"):
        check_same_grid(img, Volume(np.zeros((4, 4, 4)), shifted))
    check_same_grid(img, Volume(np.zeros((4, 4, 4)), AFFINE + 1e-6))


def test_failed_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.nii.gz"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert list(tmp_path.iterdir()) == []


def test_written_files_have_normal_permissions(tmp_path):
    out = write_volume(tmp_path / "o.nii", np.zeros((2, 2, 2)), AFFINE)
    assert out.stat().st_mode & 0o044 == 0o044


def test_output_suffix_is_checked(tmp_path):
    with pytest.raises(InputError, match=r"\.nii"):
        write_volume(tmp_path / "o.img", np.zeros((2, 2, 2)), AFFINE)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bits, dtype, top", [(8, np.uint8, 255), (16, np.uint16, 65535)])
def test_png_round_trip(tmp_path, bits, dtype, top):
    arr = (np.linspace(0, top, 35 * 47).reshape(35, 47)).astype(dtype)
    write_png(tmp_path / "s.png", arr, bits=bits)
    back, depth = read_png(tmp_path / "s.png")
    assert depth == bits and back.dtype == dtype and np.array_equal(back, arr)


def test_png_rejects_out_of_range_and_colour(tmp_path):
    with pytest.raises(ValueError):
        write_png(tmp_path / "x.png", np.full((3, 3), 300), bits=8)
    from PIL import Image

    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "c.png")
    with pytest.raises(InputError, match="colour"):
        read_png(tmp_path / "c.png")
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="cannot be read as PNG"):
        read_png(tmp_path / "junk.png")
