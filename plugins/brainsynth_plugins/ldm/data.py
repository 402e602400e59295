"""Training images and their conditions, from a longitudinal dataset or a pairs folder.

Every session of a dataset is one training image, conditioned on

- **covariates** (Brain LDM): age (sessions.tsv / participants.tsv / manifest), sex, ventricle
  volume and brain volume (mm^3, measured on the session's label map with the structure rules:
  ventricle = lateral + inferior lateral ventricles, brain = every labelled brain structure);
- **captions** (DALL-E Brain): ``captions_per_image`` sentences from the ``template`` prompt
  builder (20 sentence templates, one per seed) filled with the same volumes, age, sex and
  modality.

3D images are put on the template grid at ``voxel_mm`` (:func:`brainsynth_plugins.simulate.template.reference`;
a no-op for data already on it, such as a simulated cohort; other images are resampled
world-to-world, so they must already be in MNI space, as Brain LDM's registered inputs are).
2D images are the canonical axial slice through the largest extent of the lateral ventricles
(``brainsynth_cli.slices``: RAS orientation, 0.5-99.5 percentile window, centred square).

A pairs folder (``make-pairs``) gives the edited images of its ``real`` training rows with their
prompts as captions. Their covariates are the rows' own fields (``target_age``, ``sex``,
``target_volumes_mm3``), which make-pairs writes whatever the prompt builder; for folders made
before rows carried them, a ``template`` caption's stated volumes, age and sex are read back.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from brainsynth_cli.errors import InputError, UserError

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: Covariate names, in the order of the conditioning vector.
COVARIATES = ("age", "sex", "ventricle_volume", "brain_volume")
TRUTH_DERIVATIVE = "brainsynth-truth"


@dataclass
class Item:
    """One training image (float32 in [0, 1]) and its conditions."""

    image: "np.ndarray"
    source: str
    subject: str
    session: str
    age: float | None
    sex: str | None
    volumes: dict[str, float]
    captions: list[str]
    labels: "np.ndarray | None" = None  # 2D only: the slice's label map (for evaluation)
    pixel_mm: float | None = None  # 2D only: pixel edge after the square resize

    def covariates(self) -> list[float]:
        """Raw covariate values (NaN where unknown); sex F = 0, M = 1."""
        sex = {"F": 0.0, "M": 1.0}.get((self.sex or "").strip().upper()[:1], math.nan)
        return [_num(self.age), sex, _num(self.volumes.get("ventricle")), _num(self.volumes.get("brain"))]


@dataclass
class TrainingSet:
    items: list[Item]
    dim: str  # "2d" | "3d"
    kind: str  # "dataset" | "pairs"
    root: Path
    grid_shape: tuple[int, ...]  # 3D: the grid; 2D: (resolution, resolution)
    affine: "np.ndarray | None" = None  # 3D: the grid's affine
    info: dict[str, Any] = field(default_factory=dict)


def _num(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return f if math.isfinite(f) else math.nan


def caption_builder(seed: int) -> Any:
    from brainsynth_cli.plugin_manager import get_manager
    from brainsynth_cli.structures import default_rules

    return get_manager().registry("prompt-builder").create("template", rules=default_rules(), seed=seed)


def captions_for(volumes: dict[str, float], age: float | None, sex: str | None, count: int) -> list[str]:
    """Up to ``count`` different DALL-E-Brain captions (template seeds 0..count-1) of one image."""
    from brainsynth_cli.interfaces import Change

    stated = {g: float(v) for g, v in volumes.items() if v is not None and math.isfinite(float(v)) and float(v) > 0}
    change = Change(rates={}, volumes=stated, age=age, sex=sex, modality="T1w")
    out: list[str] = []
    for s in range(max(1, count)):
        text = caption_builder(s).build(change)
        if text and text not in out:
            out.append(text)
    return out


# ---------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------
def template_grid(voxel_mm: float) -> tuple[tuple[int, ...], "np.ndarray"]:
    from brainsynth_plugins.simulate.template import reference

    t1, _ = reference(voxel_mm)
    return tuple(t1.shape), t1.affine.copy()


def to_grid(data: "np.ndarray", affine: "np.ndarray", shape: tuple[int, ...], target: "np.ndarray", order: int) -> "np.ndarray":
    """``data`` (on ``affine``) sampled on the grid ``shape``/``target`` (world-to-world)."""
    import numpy as np
    from scipy import ndimage

    if tuple(data.shape) == tuple(shape) and np.allclose(affine, target, atol=1e-3):
        return np.asarray(data)
    vox = np.linalg.inv(affine) @ target  # target voxel -> source voxel
    src = np.asarray(data, dtype=np.float32 if order else data.dtype)
    if order:  # anti-aliasing before going to coarser voxels
        ratio = np.sqrt((vox[:3, :3] ** 2).sum(axis=0))
        sigma = [0.5 * max(r - 1.0, 0.0) for r in ratio]
        if any(s > 0 for s in sigma):
            src = ndimage.gaussian_filter(src, sigma)
    return ndimage.affine_transform(src, vox[:3, :3], vox[:3, 3],
                                    output_shape=tuple(shape), order=order, mode="constant", cval=0)


def square_labels(labels2d: "np.ndarray", size: int) -> "np.ndarray":
    """Label slice padded to a centred square and resized to ``size`` (nearest neighbour), like
    :func:`brainsynth_cli.slices.to_square` does for images."""
    import numpy as np
    from scipy import ndimage

    a = np.asarray(labels2d)
    side = max(a.shape)
    px, py = side - a.shape[0], side - a.shape[1]
    a = np.pad(a, ((px // 2, px - px // 2), (py // 2, py - py // 2)))
    if a.shape == (size, size):
        return a.astype(np.int32)
    return ndimage.zoom(a, (size / side, size / side), order=0, mode="nearest", grid_mode=True).astype(np.int32)


def ventricle_slice(labels: "np.ndarray") -> int:
    """Canonical axial index with the largest lateral-ventricle area (the middle slice if none)."""
    import numpy as np

    from brainsynth_cli.structures import default_rules

    area = np.isin(labels, list(default_rules()["ventricle"].labels)).sum(axis=(0, 1))
    return int(np.argmax(area)) if area.any() else labels.shape[2] // 2


def slice_2d(image: "np.ndarray", labels: "np.ndarray", affine: "np.ndarray", size: int) -> tuple["np.ndarray", "np.ndarray", float]:
    """(image slice in [0, 1], label slice, pixel mm) of a volume, at the ventricles' largest extent."""
    import numpy as np

    from brainsynth_cli.slices import normalisation, normalise, to_canonical, to_square

    norm = normalisation(image)
    img, ornt = to_canonical(normalise(image, norm), affine)
    lab, _ = to_canonical(labels, affine)
    k = ventricle_slice(lab)
    vox = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    canonical = np.empty(3)
    for axis, (out_axis, _flip) in enumerate(ornt):
        canonical[int(out_axis)] = vox[axis]
    side = max(img.shape[0], img.shape[1])
    pixel = float(np.mean(canonical[:2])) * side / size
    x = np.clip(to_square(img[:, :, k], size), 0, 1).astype(np.float32)
    return x, square_labels(lab[:, :, k], size), pixel


# ---------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------
def default_labels_dir(data: Path) -> Path | None:
    d = data / "derivatives" / TRUTH_DERIVATIVE
    return d if d.is_dir() else None


def read_training_set(data: str | os.PathLike[str], *, dim: str, resolution: int, voxel_mm: float,
                      labels_dir: str | os.PathLike[str] | None = None, captions_per_image: int = 4,
                      progress: Callable[[float, float, str], None] | None = None, run: str | None = None) -> TrainingSet:
    """A dataset (BIDS folder or CSV manifest) or a pairs folder (has ``metadata.jsonl``).
    ``run``: the T1w run of a BIDS session with several (default: the last, said on stderr)."""
    p = Path(data)
    if dim not in ("2d", "3d"):
        raise UserError(f"--dim must be 2d or 3d, got {dim!r}")
    if p.is_dir() and (p / "metadata.jsonl").is_file():
        if run is not None:
            raise InputError(p, "is a pairs folder; --run picks T1w runs of a dataset", "leave --run out (make-pairs --run picks the runs of pairs)")
        return _read_pairs(p, dim=dim, resolution=resolution, progress=progress)
    return _read_dataset(p, dim=dim, resolution=resolution, voxel_mm=voxel_mm, labels_dir=labels_dir,
                         captions_per_image=captions_per_image, progress=progress, run=run)


def _read_dataset(root: Path, *, dim: str, resolution: int, voxel_mm: float, labels_dir: Any, captions_per_image: int,
                  progress: Any, run: str | None = None) -> TrainingSet:
    import numpy as np

    from brainsynth_cli.datasets import read_dataset, runs_note
    from brainsynth_cli.images import check_same_grid, read_labels, read_volume
    from brainsynth_cli.slices import normalisation, normalise
    from brainsynth_cli.structures import group_volumes, label_volumes

    lab_dir = Path(labels_dir) if labels_dir else (default_labels_dir(root) if root.is_dir() else None)
    ds = read_dataset(root, lab_dir, run=run)
    if runs_note(ds):  # several runs in a session: say which was taken
        log.info("%s", runs_note(ds))
    sessions = [s for subj in ds.subjects().values() for s in subj]
    missing = [s for s in sessions if s.labels is None]
    if missing:
        s = missing[0]
        raise InputError(s.image, f"has no label map ({len(missing)} of {len(sessions)} sessions lack one); covariates and "
                         "captions need structure volumes", "give --labels DERIVATIVES_FOLDER (sub-*/ses-*/anat/*_dseg.nii.gz, "
                         "e.g. from `brainsynth segment`)")
    if dim == "3d":
        shape, affine = template_grid(voxel_mm)
    else:
        shape, affine = (resolution, resolution), None
    items: list[Item] = []
    for i, s in enumerate(sessions):
        if progress:
            progress(i, len(sessions), f"reading {s.key}")
        img, lab = read_volume(s.image), read_labels(s.labels)
        check_same_grid(img, lab)
        vols = group_volumes(label_volumes(lab.data, img.voxel_volume))
        caps = captions_for(vols, s.age, s.sex, captions_per_image)
        if dim == "3d":
            data = to_grid(normalise(img.data, normalisation(img.data)), img.affine, shape, affine, order=1)
            items.append(Item(np.clip(data, 0, 1).astype(np.float32), str(s.image), s.subject, s.session, s.age, s.sex, vols, caps))
        else:
            x, lab2, pixel = slice_2d(img.data, lab.data, img.affine, resolution)
            items.append(Item(x, str(s.image), s.subject, s.session, s.age, s.sex, vols, caps, labels=lab2, pixel_mm=pixel))
    if progress:
        progress(len(sessions), len(sessions), "read")
    return TrainingSet(items, dim, "dataset", root, tuple(shape), affine,
                       {"labels": str(lab_dir) if lab_dir else None, "sessions": len(items)})


def _read_pairs(root: Path, *, dim: str, resolution: int, progress: Any) -> TrainingSet:
    import numpy as np

    from brainsynth_cli.images import read_png, read_volume
    from brainsynth_cli.pairs_folder import read_pairs_folder
    from brainsynth_cli.slices import Normalisation, normalisation, normalise

    from brainsynth_plugins.ip2p.data import load_slice

    folder = read_pairs_folder(root)
    if folder.dim != dim:
        raise InputError(root / "pairs.json", f"holds {folder.dim} pairs but --dim is {dim}", f"use --dim {folder.dim}")
    rows = [r for r in folder.split("train") if r.kind == "real"] or folder.split("train")
    if not rows:
        raise InputError(root / "metadata.jsonl", "has no training rows", "re-run make-pairs with a split that leaves training subjects")
    builder_name = folder.info.get("prompt_builder")
    parse = caption_builder(0) if builder_name == "template" else None
    seen: dict[Path, Item] = {}
    shape: tuple[int, ...] = (resolution, resolution)
    affine = None
    for i, r in enumerate(rows):
        if progress:
            progress(i, len(rows), r.target.name)
        if r.target in seen:
            if r.prompt not in seen[r.target].captions:
                seen[r.target].captions.append(r.prompt)
            continue
        # covariates: the row's own fields (make-pairs writes them whatever the prompt builder),
        # then what a `template` caption states (folders made before rows carried covariates)
        recorded = r.data.get("target_volumes_mm3")
        vols = {k: float(v) for k, v in recorded.items() if v is not None} if isinstance(recorded, dict) else {}
        age, sex = r.data.get("target_age"), r.data.get("sex")
        if parse is not None and (age is None or sex is None or not vols):
            if not vols:
                try:
                    vols = dict(parse.volumes(r.prompt))
                except UserError:
                    vols = {}
            ctx = parse.context(r.prompt)
            age = age if age is not None else ctx.get("age")
            sex = sex if sex is not None else ctx.get("sex")
        sessions = r.data.get("sessions") or ["", ""]
        labels = None
        if dim == "2d":
            x = load_slice(r.target, resolution)
            lab_path = r.path("edited_labels_file_name")
            if lab_path is not None and lab_path.is_file():  # aseg ids, 16-bit PNG on the slice's square grid
                labels = square_labels(read_png(lab_path)[0].astype(np.int32), resolution)
        else:
            vol = read_volume(r.target)
            norm = r.data.get("target_normalisation")
            data = vol.data
            if not (np.nanmin(data) >= 0 and np.nanmax(data) <= 1):
                data = normalise(data, Normalisation.from_dict(norm) if isinstance(norm, dict) else normalisation(data))
            if affine is None:
                shape, affine = tuple(vol.shape), vol.affine.copy()
            elif tuple(vol.shape) != shape or not np.allclose(vol.affine, affine, atol=1e-3):
                raise InputError(r.target, "is not on the grid of the other pair images", "make the pairs from one grid (re-run make-pairs)")
            x = np.clip(data, 0, 1).astype(np.float32)
        seen[r.target] = Item(x, str(r.target), r.subject, str(sessions[-1]), age, sex, vols, [r.prompt], labels=labels)
    return TrainingSet(list(seen.values()), dim, "pairs", root, tuple(shape), affine,
                       {"prompt_builder": builder_name, "rows": len(rows),
                        "slice_convention": folder.info.get("slice_convention", "brainsynth_cli.slices v1")})


def covariate_matrix(ts: TrainingSet) -> "np.ndarray":
    import numpy as np

    return np.asarray([it.covariates() for it in ts.items], dtype=np.float64).reshape(len(ts.items), len(COVARIATES))


def check_covariates(ts: TrainingSet) -> None:
    """Every covariate must be known for every image (one-line error naming the first gap)."""
    import numpy as np

    cov = covariate_matrix(ts)
    for j, name in enumerate(COVARIATES):
        bad = np.flatnonzero(~np.isfinite(cov[:, j]))
        if bad.size:
            item = ts.items[int(bad[0])]
            where = ("participants.tsv / sessions.tsv (age, sex)" if ts.kind == "dataset" else
                     "the dataset's participants.tsv / sessions.tsv (age, sex) and make the pairs again (rows carry target_age, sex, "
                     "target_volumes_mm3)")
            raise InputError(item.source, f"has no {name.replace('_', ' ')} ({bad.size} of {len(ts.items)} images lack it)",
                             f"add it to {where}, or train with --condition text")
