"""A small generator of bad inputs (imported by the tests; not a test file itself).

``make_corpus(root)`` writes, under ``root``, a valid brain-sized volume and label map, a valid
2D PNG and pairs folder, and one broken file per case:

- NIfTI: ``empty`` (0 bytes), ``text`` (text named .nii.gz), ``truncated`` (a gzip cut in half),
  ``nan`` (NaN and Inf voxels), ``4d`` (two volumes), ``huge`` (a header claiming 1200^3 voxels
  and no data), ``float_labels`` (label ids 0.5), ``offgrid_labels`` (labels on another grid);
- PNG: ``empty``, ``text``, ``truncated``, ``huge`` (a header claiming 100000^2 pixels);
- ids: a CSV manifest whose subject is ``x/../../../escaped`` (path traversal), a BIDS subject
  folder ``sub-a_b`` (not a BIDS label);
- model folders: an ldm folder with a pickled (``.bin``) weight file that would write
  ``root/PWNED`` if it were ever unpickled.

``tree_state(path)`` is what a test compares before and after a command: every file's SHA-256
and every folder, so a changed, added (partial output) or removed file shows.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: A brain-sized grid small enough to be cheap: 4 mm voxels, 160 x 192 x 160 mm.
SHAPE = (40, 48, 40)
AFFINE = np.diag([4.0, 4.0, 4.0, 1.0])
AFFINE[:3, 3] = [-80.0, -96.0, -80.0]

NIFTI_CASES = ("empty", "text", "truncated", "nan", "4d", "huge")
LABEL_CASES = ("float_labels", "offgrid_labels")
PNG_CASES = ("empty", "text", "truncated", "huge")


@dataclass
class Corpus:
    root: Path
    image: Path  # a valid brain-sized T1w-like volume
    labels: Path  # a valid label map on its grid
    nifti: dict[str, Path] = field(default_factory=dict)  # bad NIfTI files by case
    label_maps: dict[str, Path] = field(default_factory=dict)  # bad label maps by case
    png: dict[str, Path] = field(default_factory=dict)  # bad PNG files by case
    good_png: Path | None = None
    pickled_model: Path | None = None  # an ldm model folder holding a malicious pickle
    marker: Path | None = None  # the file the malicious pickle would create


def tree_state(path: Path) -> dict[str, str]:
    """Every file (SHA-256), link (target) and folder under ``path``, by relative path."""
    out: dict[str, str] = {}
    path = Path(path)
    for dirpath, dirnames, filenames in os.walk(path):
        d = Path(dirpath)
        for name in dirnames:
            p = d / name
            out[str(p.relative_to(path))] = f"link:{os.readlink(p)}" if p.is_symlink() else "dir"
        for name in filenames:
            p = d / name
            if p.is_symlink():
                out[str(p.relative_to(path))] = f"link:{os.readlink(p)}"
            else:
                out[str(p.relative_to(path))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def brain(shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """A brain-like ellipsoid (image float32, labels int16: cortex 3/42, white matter 2/41, ventricles 4/43)."""
    idx = np.indices(shape).astype(np.float64)
    c = [(n - 1) / 2 for n in shape]
    r = np.sqrt(sum(((idx[i] - c[i]) / (0.42 * shape[i])) ** 2 for i in range(3)))
    left = idx[0] < c[0]
    lab = np.zeros(shape, np.int16)
    lab[r <= 1.0] = np.where(left, 3, 42)[r <= 1.0]
    lab[r <= 0.8] = np.where(left, 2, 41)[r <= 0.8]
    lab[r <= 0.25] = np.where(left, 4, 43)[r <= 0.25]
    img = np.select([lab == 0, np.isin(lab, (3, 42)), np.isin(lab, (2, 41))], [0.0, 70.0, 110.0], 25.0).astype(np.float32)
    return img, lab


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def huge_nifti(path: Path, shape=(1200, 1200, 1200)) -> Path:
    """A header that claims ``shape`` int16 voxels, with no data behind it."""
    import nibabel as nib

    hdr = nib.Nifti1Header() if max(shape) <= 32767 else nib.Nifti2Header()  # NIfTI-2 for sizes past int16
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    hdr.set_qform(AFFINE, 1)
    hdr.set_sform(AFFINE, 1)
    hdr["vox_offset"] = len(hdr.binaryblock) + 4
    raw = hdr.binaryblock + b"\0\0\0\0"
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A PNG header claiming ``width`` x ``height`` 16-bit grey pixels, with no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b""))
    return path


def write_png16(path: Path, arr: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(arr.astype(np.uint16))).save(path, format="PNG")
    return path


class _Pwn:
    """Unpickling this creates ``path``: the proof that a loader ran a pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def malicious_pickle(path: Path, marker: Path) -> Path:
    import pickle

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(_Pwn(str(marker))))
    return path


def make_corpus(root: Path) -> Corpus:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    img, lab = brain()
    c = Corpus(root=root, image=save_nifti(root / "good" / "t1.nii.gz", img),
               labels=save_nifti(root / "good" / "labels.nii.gz", lab))
    bad = root / "bad"
    bad.mkdir()
    # NIfTI
    (bad / "empty.nii.gz").write_bytes(b"")
    (bad / "text.nii.gz").write_text("this is a text file, not an image\n")
    whole = c.image.read_bytes()
    (bad / "truncated.nii.gz").write_bytes(whole[: len(whole) // 2])
    nan = img.copy()
    nan[20, 24, 20], nan[21, 24, 20] = np.nan, np.inf
    save_nifti(bad / "nan.nii.gz", nan)
    save_nifti(bad / "4d.nii.gz", np.stack([img, img], axis=-1))
    huge_nifti(bad / "huge.nii.gz")
    c.nifti = {k: bad / f"{k}.nii.gz" for k in NIFTI_CASES}
    # label maps
    save_nifti(bad / "float_labels.nii.gz", lab.astype(np.float32) + 0.5)
    shifted = AFFINE.copy()
    shifted[:3, 3] += 9.0
    save_nifti(bad / "offgrid_labels.nii.gz", lab, shifted)
    c.label_maps = {k: bad / f"{k}.nii.gz" for k in LABEL_CASES}
    # PNG
    c.good_png = write_png16(root / "good" / "slice.png", img[:, :, 20] / 110.0 * 60000)
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.png").write_text("not a picture\n")
    png = c.good_png.read_bytes()
    (bad / "truncated.png").write_bytes(png[: len(png) // 2])
    huge_png(bad / "huge.png")
    c.png = {k: bad / f"{k}.png" for k in PNG_CASES}
    # a model folder whose weights are a malicious pickle
    c.marker = root / "PWNED"
    model = root / "pickled-model"
    (model / "vae").mkdir(parents=True)
    (model / "unet").mkdir(parents=True)
    (model / "brainsynth.json").write_text(json.dumps({"format": "brainsynth-model", "generator": "ldm", "dim": "2d"}))
    for part in ("vae", "unet"):
        (model / part / "config.json").write_text("{}")
        malicious_pickle(model / part / "diffusion_pytorch_model.bin", c.marker)
    c.pickled_model = model
    return c


# -- datasets built from corpus files ------------------------------------------------------------
def bids(root: Path, sessions: dict[tuple[str, str], Path], labels: dict[tuple[str, str], Path] | None = None) -> tuple[Path, Path]:
    """A BIDS tree (copies of the given images) and a labels derivatives folder."""
    import shutil

    ds, der = root / "bids", root / "bids" / "derivatives" / "labels"
    for (sub, ses), image in sessions.items():
        anat = ds / sub / ses / "anat"
        anat.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, anat / f"{sub}_{ses}_T1w.nii.gz")
        if labels is not None:
            lanat = der / sub / ses / "anat"
            lanat.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(labels[(sub, ses)], lanat / f"{sub}_{ses}_dseg.nii.gz")
    rows = {}
    for sub, ses in sessions:
        rows.setdefault(sub, []).append(ses)
    for sub, ses_list in rows.items():
        (ds / sub / f"{sub}_sessions.tsv").write_text("session_id\tage\n" + "".join(f"{s}\t{70 + i}\n" for i, s in enumerate(ses_list)))
    return ds, der


def traversal_manifest(path: Path, image: Path, labels: Path | None = None, subject: str = "x/../../../escaped") -> Path:
    """A CSV manifest whose subject id climbs out of any output folder."""
    lines = ["subject,session,image" + (",labels" if labels else "")]
    for ses in ("01", "02"):
        lines.append(f"{subject},{ses},{image}" + (f",{labels}" if labels else ""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def pairs_folder(root: Path, png: Path, rows: list[tuple[str, str]] | None = None) -> Path:
    """A pairs folder in the make-pairs layout whose rows name ``(input, edited)`` paths as given
    (default: two good slices)."""
    import shutil

    from brainsynth_cli.structures import default_rules

    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    shutil.copyfile(png, root / "images" / "a.png")
    shutil.copyfile(png, root / "images" / "b.png")
    rows = rows or [("images/a.png", "images/b.png")]
    meta = [{"input_image_file_name": a, "edited_image_file_name": b, "edit_prompt": "mild ventricle enlargement",
             "subject": "sub-01", "kind": "real", "split": "train"} for a, b in rows]
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in meta))
    (root / "pairs.json").write_text(json.dumps({"format": "brainsynth-pairs", "version": 1, "dim": "2d",
                                                 "rules": default_rules().to_toml()}))
    return root
