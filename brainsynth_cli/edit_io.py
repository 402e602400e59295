"""What ``brainsynth edit`` reads and writes around the edit path: the input (NIfTI volume or PNG
slice) and its labels, the model's view of it (axial slices at the model's resolution, or the
whole volume), the change brought back to the input grid, and the output in the input's format.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainsynth_cli.errors import InputError, UserError

NIFTI = (".nii", ".nii.gz")


def kind_of(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(NIFTI):
        return "nifti"
    if name.endswith(".png"):
        return "png"
    return None


def sidecar_path(output: Path) -> Path:
    """The JSON sidecar of an output image (BIDS style: same name, ``.json``)."""
    name = output.name
    for suffix in (".nii.gz", ".nii", ".png"):
        if name.lower().endswith(suffix):
            return output.with_name(name[: -len(suffix)] + ".json")
    return output.with_name(name + ".json")


def png_label_sibling(path: Path) -> Path | None:
    """The label slice stored beside a PNG slice by make-pairs' convention (``X_z045.png`` ->
    ``X_dseg_z045.png``; ``X.png`` -> ``X_dseg.png``), when it exists."""
    import re

    m = re.fullmatch(r"(.*)_z(\d+)\.png", path.name, flags=re.IGNORECASE)
    name = f"{m.group(1)}_dseg_z{m.group(2)}.png" if m else path.name[:-4] + "_dseg.png"
    candidate = path.with_name(name)
    return candidate if candidate.is_file() else None


@dataclass
class Canvas:
    """The input on the grid where the merge happens, with what is needed to write it back.

    ``data`` is float32 (NIfTI: the canonical RAS volume in scanner units; PNG: [0, 1]),
    ``spacing`` its voxel size in mm, ``labels`` the label map on the same grid (or None).
    ``change`` starts at zero and receives the model's change.
    """

    kind: str
    data: Any
    spacing: tuple[float, ...]
    labels: Any = None
    change: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


def read_canvas(path: Path, kind: str, pixel_mm: float) -> Canvas:
    import numpy as np

    from brainsynth_cli import slices as sl
    from brainsynth_cli.images import read_png, read_volume

    if kind == "png":
        arr, bits = read_png(path)
        top = float(65535 if bits == 16 else 255)
        x = (arr.astype(np.float32) / np.float32(top)).astype(np.float32)
        return Canvas("png", x, (pixel_mm, pixel_mm), change=np.zeros_like(x), meta={"bits": bits, "top": top, "raw": arr})
    vol = read_volume(path)
    canon, ornt = sl.to_canonical(vol.data, vol.affine)
    spacing = tuple(float(vol.voxel_size[int(ax)]) for ax in ornt[:, 0])
    return Canvas("nifti", canon.astype(np.float32), spacing, change=np.zeros(canon.shape, np.float32),
                  meta={"volume": vol, "ornt": ornt, "norm": sl.normalisation(canon)})


def read_canvas_labels(canvas: Canvas, labels: Path) -> Any:
    """A label map given by the user, on the canvas grid (one-line error otherwise)."""
    import numpy as np

    from brainsynth_cli import slices as sl
    from brainsynth_cli.images import check_same_grid, read_labels, read_png

    if canvas.kind == "png":
        if kind_of(labels) != "png":
            raise InputError(labels, "labels of a PNG slice must be a PNG label slice", "give the label PNG of the slice (aseg ids)")
        lab = read_png(labels)[0].astype(np.int32)
        if lab.shape != canvas.data.shape:
            raise InputError(labels, f"label slice has shape {lab.shape} but the input has {canvas.data.shape}", "give the labels of this slice")
        return lab
    if kind_of(labels) != "nifti":
        raise InputError(labels, "labels of a NIfTI volume must be a NIfTI label map", "give a .nii or .nii.gz label map on the input's grid")
    lab = read_labels(labels)
    check_same_grid(canvas.meta["volume"], lab)
    return sl.to_canonical(lab.data, lab.affine)[0]


def segment_canvas(canvas: Canvas, segmenter: str, progress: Callable[..., None] | None = None) -> Any:
    """Labels of a NIfTI input from a segmenter plugin, on the canvas grid."""
    from brainsynth_cli import slices as sl
    from brainsynth_cli.plugin_manager import registry

    vol = canvas.meta["volume"]
    seg = registry("segmenter").create(segmenter).segment(vol, progress=progress)
    return sl.to_canonical(seg.data, seg.affine)[0]


@dataclass
class SliceJobs:
    """Axial slices of a volume (or one PNG slice) at a 2D model's resolution."""

    squares: list[Any]
    labels: list[Any]
    indices: list[int]
    convention: str


def slice_jobs(canvas: Canvas, resolution: int | None, chosen: list[int], convention: str) -> SliceJobs:
    """Model-ready [0, 1] squares (and label squares) of the chosen axial slices."""
    import numpy as np

    from brainsynth_cli import slices as sl

    def square(a: Any) -> Any:
        return a if resolution is None or a.shape == (resolution, resolution) else np.clip(sl.to_square(a, resolution), 0, 1)

    def square_labels(lab: Any) -> Any:
        if lab is None or resolution is None or lab.shape == (resolution, resolution):
            return lab
        from brainsynth_cli.slices import labels_to_square

        return labels_to_square(lab, resolution)

    if canvas.kind == "png":
        return SliceJobs([square(canvas.data)], [square_labels(canvas.labels)], [0], convention)
    norm = canvas.meta["norm"]
    squares, labs = [], []
    for k in chosen:
        squares.append(square(sl.to_view(sl.normalise(canvas.data[:, :, k], norm), convention)))
        lab = None if canvas.labels is None else sl.to_view(canvas.labels[:, :, k], convention)
        labs.append(square_labels(lab))
    return SliceJobs(squares, labs, list(chosen), convention)


def put_back(canvas: Canvas, jobs: SliceJobs, edited: list[Any]) -> None:
    """Add the change of each edited square (edited - square) to ``canvas.change`` on the input grid."""
    import numpy as np

    from brainsynth_cli import slices as sl

    for k, square, out in zip(jobs.indices, jobs.squares, edited):
        delta = np.asarray(out, np.float32) - np.asarray(square, np.float32)
        if canvas.kind == "png":
            canvas.change = delta if delta.shape == canvas.data.shape else sl.from_square(delta, canvas.data.shape)
            continue
        shape = canvas.data.shape[:2]
        view_shape = sl.to_view(np.zeros(shape, np.float32), jobs.convention).shape
        delta = delta if delta.shape == view_shape else sl.from_square(delta, view_shape)
        norm = canvas.meta["norm"]
        canvas.change[:, :, k] = sl.from_view(delta, jobs.convention) * np.float32(norm.high - norm.low)


def intensity_window(canvas: Canvas) -> float:
    """The width of the canvas's intensity window in its own units, which a change floor is a
    fraction of: the NIfTI normalisation's high - low; 1 for a PNG slice (already on [0, 1])."""
    if canvas.kind != "nifti":
        return 1.0
    norm = canvas.meta["norm"]
    return float(norm.high - norm.low)


def edit_whole_volume(model: Any, canvas: Canvas, prompt: str, options: dict[str, Any], progress: Any = None) -> None:
    """A 3D model's change of the whole NIfTI canvas, put into ``canvas.change`` (scanner units): the
    volume goes to the model on [0, 1] by the canvas's window and the change comes back on its scale."""
    import numpy as np

    norm = canvas.meta["norm"]
    volume01 = (canvas.data - np.float32(norm.low)) / np.float32(norm.high - norm.low)
    out = model.edit([volume01], prompt, labels=[canvas.labels], spacing=canvas.spacing, progress=progress, **options)[0]
    canvas.change = (np.asarray(out, np.float32) - volume01) * np.float32(norm.high - norm.low)


def edit_slice_by_slice(model: Any, canvas: Canvas, jobs: SliceJobs, prompt: str, options: dict[str, Any],
                        progress: Any = None) -> Any:
    """A 2D model's change of the chosen slices (``jobs``), put into ``canvas.change``; returns the
    voxels the edit may reach (the edited axial slices of a volume; None for a PNG slice)."""
    import numpy as np

    edited = model.edit(jobs.squares, prompt, labels=jobs.labels, progress=progress, **options)
    put_back(canvas, jobs, edited)
    if canvas.kind != "nifti":
        return None
    within = np.zeros(canvas.data.shape, bool)  # a slice-wise edit changes only the slices the model edited
    within[:, :, jobs.indices] = True
    return within


def write_output(canvas: Canvas, result: Any, output: Path) -> None:
    """The edited canvas in the input's format: NIfTI on the input grid, affine and header (the
    input's integer data type when it had one and no scaling), PNG at the input's bit depth."""
    import numpy as np

    from brainsynth_cli import slices as sl
    from brainsynth_cli.images import write_png, write_volume

    if canvas.kind == "png":
        top = canvas.meta["top"]
        raw = canvas.meta["raw"]
        q = np.round(np.clip(np.asarray(result, np.float64), 0, 1) * top).astype(raw.dtype)
        same = np.asarray(result, np.float32) == canvas.data
        q[same] = raw[same]  # untouched pixels: the input's own values
        write_png(output, q, bits=canvas.meta["bits"])
        return
    vol = canvas.meta["volume"]
    data = sl.from_canonical(np.asarray(result, np.float32), canvas.meta["ornt"])
    dtype = np.float32
    hdr = vol.header
    on_disk = np.dtype(hdr.get_data_dtype()) if hdr is not None and hasattr(hdr, "get_data_dtype") else np.dtype(np.float32)
    slope, inter = (hdr.get_slope_inter() if hdr is not None and hasattr(hdr, "get_slope_inter") else (None, None))
    unscaled = slope in (None, 1.0) and inter in (None, 0.0)
    if np.issubdtype(on_disk, np.integer) and unscaled:
        info = np.iinfo(on_disk)
        data = np.clip(np.round(data), info.min, info.max)
        dtype = on_disk
    write_volume(output, data, vol.affine, vol.header, dtype=dtype, keep_codes=True)


def write_sidecar(path: Path, record: dict[str, Any]) -> None:
    from brainsynth_cli.images import atomic_write_text

    atomic_write_text(path, json.dumps(record, indent=1, default=str) + "\n")


def chosen_slices(canvas: Canvas, spec: str) -> list[int]:
    """Axial slices of a volume to edit: ``all`` | ``center:N`` | ``A:B``, non-empty ones only."""
    import numpy as np

    if canvas.kind == "png":
        return [0]
    depth = canvas.data.shape[2]
    s = spec.strip().lower()
    head, sep, tail = s.partition(":")
    ks: list[int] | None = None
    try:
        if s == "all":
            ks = list(range(depth))
        elif head == "center" and sep and int(tail) > 0:
            n = int(tail)
            start = max(0, depth // 2 - n // 2)
            ks = list(range(start, min(depth, start + n)))
        elif sep:
            a, b = int(head), int(tail)
            if not 0 <= a < b <= depth:
                raise UserError(f"--slices {spec}: the volume has axial slices 0..{depth - 1}; give A:B with 0 <= A < B <= {depth}")
            ks = list(range(a, b))
    except ValueError:
        ks = None
    if ks is None:
        raise UserError(f"--slices {spec!r}: use all, center:N or A:B")
    return [k for k in ks if np.any(canvas.data[:, :, k] != 0)]
