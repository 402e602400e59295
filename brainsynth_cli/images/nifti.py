"""Reading and writing NIfTI volumes (and FreeSurfer .mgz) with nibabel, validated."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from brainsynth_cli.errors import InputError
from brainsynth_cli.images.atomic import atomic_output
from brainsynth_cli.images.volume import Volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
READ_SUFFIXES = NIFTI_SUFFIXES + (".mgz", ".mgh")


def has_suffix(path: str | os.PathLike[str], suffixes: tuple[str, ...]) -> bool:
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in suffixes)


def _load(path: Path, ndims: tuple[int, ...]) -> tuple[Any, Any]:
    """Load header and data, turning every way a file can be broken into an InputError."""
    import gzip
    import zlib

    import nibabel as nib
    import numpy as np

    if not path.exists():
        raise InputError(path, "no such file", "check the path")
    if path.is_dir():
        raise InputError(path, "is a folder, not an image file", "give a .nii or .nii.gz file")
    if not has_suffix(path, READ_SUFFIXES):
        raise InputError(path, "not a NIfTI file (expected .nii or .nii.gz)", "convert it to NIfTI, e.g. with dcm2niix or mri_convert")
    broken = (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, gzip.BadGzipFile, EOFError, zlib.error,
              OSError, ValueError, TypeError)

    def refuse(exc: BaseException) -> InputError:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return InputError(path, f"cannot be read as NIfTI ({reason[:160]})", "the file is corrupt or truncated; re-export or re-download it")

    try:
        img = nib.load(str(path))
        shape = tuple(int(s) for s in img.shape)
        itemsize = int(img.get_data_dtype().itemsize)
    except broken as exc:
        raise refuse(exc) from None
    check_header_shape(path, shape, itemsize, ndims)  # from the header alone, before any data is read
    try:
        data = np.asanyarray(img.dataobj)
    except broken as exc:
        raise refuse(exc) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        raise InputError(path, f"is 4D with {data.shape[3]} volumes", "extract one volume first (e.g. fslroi IMG OUT 0 1)")
    if data.ndim not in ndims:
        want = " or ".join(f"{n}D" for n in ndims)
        raise InputError(path, f"is {data.ndim}D with shape {tuple(data.shape)}", f"a {want} image is needed")
    if data.size == 0:
        raise InputError(path, "has no voxels", "re-export the image")
    return img, data


def check_header_shape(path: Path, shape: tuple[int, ...], itemsize: int, ndims: tuple[int, ...]) -> None:
    """Refuse, from the header, an image too large to read or with the wrong number of dimensions."""
    from brainsynth_cli.limits import check_image_size

    check_image_size(path, shape, itemsize)
    dims = shape[:3] if len(shape) == 4 and shape[3] == 1 else shape
    if len(dims) == 4:
        raise InputError(path, f"is 4D with {dims[3]} volumes", "extract one volume first (e.g. fslroi IMG OUT 0 1)")
    if len(dims) not in ndims:
        want = " or ".join(f"{n}D" for n in ndims)
        raise InputError(path, f"is {len(dims)}D with shape {tuple(dims)}", f"a {want} image is needed")
    if any(s == 0 for s in dims):
        raise InputError(path, "has no voxels", "re-export the image")


def _affine(img: Any) -> Any:
    import numpy as np

    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(img.get_filename(), "has an invalid (singular or non-finite) affine", "fix the header (qform/sform)")
    return affine


def read_volume(path: str | os.PathLike[str], *, ndims: tuple[int, ...] = (3,)) -> Volume:
    """Read an intensity image as float32. Refuses non-finite values, 4D series and corrupt files."""
    import numpy as np

    p = Path(path)
    img, raw = _load(p, ndims)
    data = np.asarray(raw, dtype=np.float32)
    bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise InputError(p, f"contains {bad} non-finite values (NaN or Inf)", "replace them (e.g. with 0) before using this image")
    return Volume(data=data, affine=_affine(img), header=img.header.copy(), path=p)


def read_labels(path: str | os.PathLike[str], *, ndims: tuple[int, ...] = (3,)) -> Volume:
    """Read an integer label map (FreeSurfer aseg ids) as int32. Refuses non-integer values."""
    import numpy as np

    p = Path(path)
    img, raw = _load(p, ndims)
    arr = np.asarray(raw)
    if not np.issubdtype(arr.dtype, np.integer):
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise InputError(p, "label map contains non-finite values", "a label map holds integer label ids")
        if not np.array_equal(arr, np.round(arr)):
            raise InputError(p, "is not a label map (it has non-integer values)", "give an integer label image (dseg/aseg), not an intensity image")
    if arr.size and (arr.min() < 0 or arr.max() > 2**31 - 1):
        raise InputError(p, "label map has negative or out-of-range label ids", "label ids must be FreeSurfer aseg ids (0 = background)")
    return Volume(data=arr.astype(np.int32), affine=_affine(img), header=img.header.copy(), path=p)


def _check_out(path: Path) -> None:
    if not has_suffix(path, NIFTI_SUFFIXES):
        raise InputError(path, "output must end in .nii or .nii.gz", "rename the output")


def write_volume(path: str | os.PathLike[str], data: Any, affine: Any, header: Any = None, *, dtype: Any = "float32",
                 keep_codes: bool = False) -> Path:
    """Write ``data`` as NIfTI atomically, keeping ``header`` fields (descrip, units, codes). A
    header's sform or qform code of 0 (unknown) becomes 2 (aligned), unless ``keep_codes``: then
    both codes and the qform are the header's own (an edit's output keeps its input's header)."""
    import nibabel as nib
    import numpy as np

    p = Path(path)
    _check_out(p)
    arr = np.asarray(data).astype(dtype, copy=False)
    hdr = header.copy() if isinstance(header, nib.Nifti1Header) else None
    img = nib.Nifti1Image(arr, np.asarray(affine, dtype=np.float64), header=hdr)
    img.set_data_dtype(arr.dtype)
    if hdr is not None:
        img.header.set_slope_inter(1.0, 0.0)
        code = hdr.get_sform(coded=True)[1]
        qcode = int(hdr.get_qform(coded=True)[1])
        if keep_codes:
            img.set_sform(np.asarray(affine, dtype=np.float64), int(code))
            img.set_qform(hdr.get_qform() if qcode == 0 else np.asarray(affine, dtype=np.float64), qcode)
        else:
            img.set_sform(np.asarray(affine, dtype=np.float64), int(code) or 2)
            img.set_qform(np.asarray(affine, dtype=np.float64), qcode or 2)
    else:
        img.set_sform(np.asarray(affine, dtype=np.float64), 2)
        img.set_qform(np.asarray(affine, dtype=np.float64), 2)
    with atomic_output(p) as tmp:
        nib.save(img, str(tmp))
    return p


def write_labels(path: str | os.PathLike[str], data: Any, affine: Any, header: Any = None) -> Path:
    """Write a label map (int16 when ids fit, else int32)."""
    import numpy as np

    arr = np.asarray(data)
    dtype = np.int16 if arr.size == 0 or (arr.min() >= -32768 and arr.max() <= 32767) else np.int32
    return write_volume(path, arr, affine, header, dtype=dtype)
