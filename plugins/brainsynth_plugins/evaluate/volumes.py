"""The rows of a 3D evaluation: a pair's volumes, the model's edit of the prior volume, the baselines,
and the measurement by a segmenter's longitudinal mode.

Every volume is read in its closest RAS orientation (axis 2 axial), as ``brainsynth edit`` reads a
NIfTI input. The model's edit goes through ``edit``'s own code (:mod:`brainsynth_cli.edit_io`:
the whole volume for a 3D model, axial slice by slice for a 2D model, then the shared edit path).
Rates are volume change rates: each image is labelled by ``segment_followup(image, prior, prior
labels)`` (the prior labels stored with the pair), and the voxels of each label are counted;
:func:`engine.score_row` scores them exactly as 2D rows. The segmenter gives label maps, not
partial-volume maps, so the structure change error is not computed (NaN). Each row also gets the
through-plane consistency of the model, deform and target changes (:mod:`.through_plane`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from brainsynth_cli.errors import InputError
from brainsynth_cli.pairs_folder import PairRow
from brainsynth_cli.structures import Rules
from brainsynth_plugins.evaluate import engine, through_plane
from brainsynth_plugins.evaluate.measures import label_counts
from brainsynth_plugins.evaluate.rows import SharedContext, context_parts

#: ``EvalSettings.measure`` of a 3D evaluation: this prefix and the segmenter's name.
FOLLOWUP = "followup:"


def segmenter_name(measure: str) -> str:
    return measure.removeprefix(FOLLOWUP)


def followup_segmenter(name: str) -> Any:
    """The segmenter plugin ``name``, which must have a longitudinal mode (``segment_followup``):
    an unknown name gives the registry's one-line error, one without the mode one line too."""
    from brainsynth_cli.plugin_manager import registry

    segmenter = registry("segmenter").create(name)
    if not hasattr(segmenter, "segment_followup"):
        raise InputError(None, f"segmenter {name!r} has no longitudinal mode (segment_followup)", "measure 3D pairs with --segmenter atlas")
    return segmenter


def canonical(path: Path, labels: bool = False) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A volume in its closest RAS orientation: (data, affine of that view, voxel size in mm)."""
    import nibabel as nib

    from brainsynth_cli import slices as sl
    from brainsynth_cli.images import read_labels, read_volume

    vol = read_labels(path) if labels else read_volume(path)
    data, ornt = sl.to_canonical(vol.data, vol.affine)
    affine = np.asarray(vol.affine) @ nib.orientations.inv_ornt_aff(ornt, vol.data.shape)
    spacing = tuple(float(vol.voxel_size[int(ax)]) for ax in ornt[:, 0])
    return data, affine, spacing  # type: ignore[return-value]


class FollowupMeasure:
    """:func:`engine.score_row`'s measurement over a segmenter's longitudinal mode: the size (voxels)
    of each label of ``segment_followup(image, prior, prior_labels)``. The prior's own labelling (its
    registration is the identity) is computed once per row and reused for the identity row."""

    def __init__(self, segmenter: Any, affine: np.ndarray) -> None:
        self.segmenter, self.affine = segmenter, affine
        self._volumes: dict[int, Any] = {}
        self._prior_sizes: tuple[Any, dict[int, float]] | None = None

    def _volume(self, data: np.ndarray, labels: bool = False) -> Any:
        from brainsynth_cli.images import Volume

        key = id(data)  # one Volume per array: the segmenter caches its model of the prior by object
        if key not in self._volumes:
            arr = np.asarray(data, np.int32 if labels else np.float32)
            self._volumes[key] = (data, Volume(arr, self.affine))
        return self._volumes[key][1]

    def measure(self, prior: np.ndarray, prior_labels: np.ndarray, image: np.ndarray) -> dict[int, float]:
        if image is prior and self._prior_sizes is not None and self._prior_sizes[0] is prior:
            return dict(self._prior_sizes[1])
        out = self.segmenter.segment_followup(self._volume(image), self._volume(prior), self._volume(prior_labels, labels=True))
        sizes = {i: c for i, c in label_counts(out.data).items() if i != 0}
        if image is prior:
            self._prior_sizes = (prior, sizes)
        return sizes


@dataclass
class VolumeInputs:
    prior: np.ndarray
    target: np.ndarray
    prior_labels: np.ndarray
    target_labels: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    requested: dict[str, Any] | None
    structures: list[Any]


@dataclass
class VolumeContext(SharedContext):
    """What scoring a 3D row needs, built once per process (:meth:`build`): the shared parts and the
    segmenter whose longitudinal mode measures the volumes."""

    segmenter: Any = None

    @classmethod
    def build(cls, pairs_dir: Path, settings: engine.EvalSettings, out_dir: Path, device: str = "cpu",
              pairs: Any = None) -> VolumeContext:
        segmenter = followup_segmenter(segmenter_name(settings.measure))
        return cls(**context_parts(pairs_dir, settings, device, pairs), segmenter=segmenter, settings=settings, out_dir=Path(out_dir))

    def inputs(self, row: PairRow) -> VolumeInputs:
        """The row's volumes and label volumes (RAS view), requested intervals and named structures."""
        a, b = row.path("input_labels_file_name"), row.path("edited_labels_file_name")
        if a is None or b is None:
            raise InputError(row.root / "metadata.jsonl", f"line {row.number} has no label volumes (input_labels_file_name, edited_labels_file_name)",
                             "re-run `brainsynth make-pairs --dim 3d` with this version, which writes them")
        for p in (row.prior, row.target, a, b):
            if not p.is_file():
                raise InputError(p, f"is listed on line {row.number} of metadata.jsonl but missing", "re-run make-pairs")
        prior, affine, spacing = canonical(row.prior)
        target = canonical(row.target)[0]
        prior_labels, target_labels = canonical(a, labels=True)[0], canonical(b, labels=True)[0]
        if not prior.shape == target.shape == prior_labels.shape == target_labels.shape:
            raise InputError(row.target, f"is not on the grid of its prior (line {row.number} of metadata.jsonl)", "re-run make-pairs")
        requested = engine.requested_intervals(self.parser, row.prompt)
        structures = [self.rules[name] for name in (requested or {})]
        return VolumeInputs(prior, target, prior_labels, target_labels, affine, spacing, requested, structures)


def model_edit(ctx: VolumeContext, model: Any, info: dict[str, Any], row: PairRow, x: VolumeInputs,
               options: dict[str, Any]) -> np.ndarray:
    """The prior volume edited with the row's prompt as ``brainsynth edit MODEL prior.nii.gz --labels
    prior_dseg.nii.gz`` edits it (the whole volume with a 3D model, every non-empty axial slice with a
    2D model), on the RAS view, clipped to [0, 1] as the pair's volumes are."""
    from brainsynth_cli import edit_io
    from brainsynth_cli.edit_path import apply

    canvas = edit_io.read_canvas(row.prior, "nifti", 1.0)
    canvas.labels = edit_io.read_canvas_labels(canvas, row.path("input_labels_file_name"))
    within = None
    if "3d" in tuple(getattr(model, "dims", ("2d",))):
        edit_io.edit_whole_volume(model, canvas, row.prompt, options)
    else:
        resolution = getattr(model, "resolution", None)
        convention = str((info.get("intensity_normalisation") or {}).get("slice_convention") or "brainsynth_cli.slices v1")
        jobs = edit_io.slice_jobs(canvas, int(resolution) if resolution else None, edit_io.chosen_slices(canvas, "all"), convention)
        if not jobs.squares:
            raise InputError(row.prior, "has no non-empty axial slice", "re-run make-pairs")
        within = edit_io.edit_slice_by_slice(model, canvas, jobs, row.prompt, options)
    out, _ = apply(canvas.data, canvas.change, canvas.labels, x.structures, canvas.spacing, ctx.path_settings, within,
                   edit_io.intensity_window(canvas))
    return np.clip(out, 0, 1).astype(np.float32)


def write_edit(path: Path, image: np.ndarray, row: PairRow) -> None:
    """An edited volume on its prior's grid, affine and header (float32 NIfTI)."""
    from brainsynth_cli import slices as sl
    from brainsynth_cli.images import read_volume, write_volume

    vol = read_volume(row.prior)
    ornt = sl.to_canonical(vol.data, vol.affine)[1]
    write_volume(path, sl.from_canonical(np.asarray(image, np.float32), ornt), vol.affine, vol.header)


def score(ctx: VolumeContext, row: PairRow, model_image: np.ndarray | None, inputs: VolumeInputs | None = None) -> dict[str, Any]:
    """One 3D row's record: the deform and chance volumes (with baselines), every method measured by
    the segmenter's longitudinal mode and scored by :func:`engine.score_row`, and the through-plane
    consistency of the model, deform and target changes."""
    from brainsynth_plugins.evaluate.rows import method_images

    x = inputs if inputs is not None else ctx.inputs(row)
    images = method_images(ctx, row, x, model_image)
    if "deform" in images:
        write_edit(ctx.out_dir / "edits" / f"deform-{row.number:05d}.nii.gz", images["deform"], row)
    measure = FollowupMeasure(ctx.segmenter, x.affine)
    result = engine.score_row(row, x.prior, x.target, images, x.prior_labels, x.target_labels, x.requested, measure, ctx.rules)
    result["requested_known"] = x.requested is not None
    ids = [i for s in x.structures for i in s.labels]
    band = through_plane.border_band(x.prior_labels, ids)
    changed = {m: img for m, img in {**images, "target": x.target}.items() if m in ("model", "deform", "target")}
    for method, value in through_plane.ratios({m: through_plane.roughness(img, x.prior, band, x.spacing)
                                               for m, img in changed.items()}).items():
        result["methods"][method]["through_plane"] = value
    return result


def montage_views(out_dir: Path, rules: Rules) -> Callable[[PairRow, dict[str, Any], str], tuple[np.ndarray, ...]]:
    """For the report's montage: (prior, edited, target, named-structure outline) of a 3D row at the
    axial slice where its named structures are largest, in the radiological view."""
    from brainsynth_cli import slices as sl

    def views(row: PairRow, res: dict[str, Any], method: str) -> tuple[np.ndarray, ...]:
        prior, target = canonical(row.prior)[0], canonical(row.target)[0]
        labels = canonical(row.path("input_labels_file_name"), labels=True)[0]
        named = [s for s, v in res["methods"].get(method, res["methods"]["identity"])["structures"].items() if "interval" in v]
        inside = np.isin(labels, [i for s in named for i in rules[s].labels])
        k = int(np.argmax(inside.sum(axis=(0, 1))))
        edited = prior
        if method in ("model", "deform"):
            name = f"row-{row.number:05d}.nii.gz" if method == "model" else f"deform-{row.number:05d}.nii.gz"
            edited = canonical(out_dir / "edits" / name)[0]
        convention = "brainsynth_cli.slices v2"
        return tuple(sl.to_view(a[:, :, k], convention) for a in (prior, edited, target, inside))

    return views
