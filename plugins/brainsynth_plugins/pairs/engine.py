"""The make-pairs engine: longitudinal prior/target pairs, prompts, structure-disentangled pairs.

Work is cut into *pairs* (one subject, one prior session, one later target session). Each pair
is made on its own (in a worker process with ``--jobs``), written into a temporary folder that
is renamed into place when complete, and then recorded by a *part file*
``OUT/.parts/<pair>.json`` (its rows, its files, or why it was skipped). A pair with a part
file whose files all exist is finished: re-running skips it. The last step (``merge``) reads
the part files of every planned pair in dataset order and writes ``metadata.jsonl``, the
montages and ``summary.json``; with ``--shard K/N`` or ``--participant-label`` a run only makes
its pairs, and a final ``--merge`` (or a run without either) merges them. See
docs/commands/make-pairs.md.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from brainsynth_cli.errors import InputError, UserError
from brainsynth_cli.slices import CONVENTION

FORMAT = "brainsynth-pairs"
VERSION = 1
PARTS = ".parts"
#: Part files record it; a part without it was made before rows carried covariates (redone).
COVARIATES_VERSION = 1
SPLITS = ("train", "validation", "test")

#: Words that make ``datasets``' imagefolder guess splits from paths (see datasets.data_files).
_SPLIT_WORDS = ("train", "training", "validation", "valid", "dev", "val", "test", "testing", "eval", "evaluation")
_SEP = r"[-._ 0-9]"
_SPLIT_RE = re.compile(rf"(?:^|{_SEP})(?:{'|'.join(_SPLIT_WORDS)})(?:{_SEP}|$)")


@dataclass(frozen=True)
class Options:
    """Everything a make-pairs run depends on (what is not in ``pairs.json`` does not change rows)."""

    dataset: Path
    out: Path
    labels: Path | None = None
    rules: Path | None = None
    prompt_builder: str = "quantized"
    blender: str = "poisson"
    dim: str = "2d"
    slices: int = 30
    size: int = 256
    pairing: str = "consecutive"
    split: str = "8:1:1"
    seed: int = 0
    jobs: int = 1
    shard: tuple[int, int] | None = None
    participants: tuple[str, ...] = ()  # --participant-label: make only these subjects' pairs ("sub-X")
    margin: float = 2.0
    min_psnr: float | None = None
    merge_only: bool = False
    montage: int = 3
    deformed: bool = False  # add rows whose target is the prior deformed to a drawn rate per interval
    deformed_splits: tuple[str, ...] = SPLITS  # ... for the subjects of these splits
    match_intensities: bool = True  # targets put on their prior's intensity scale (bias field, tissue medians)
    run: str | None = None  # the T1w run of sessions with several (default: the last)


@dataclass
class Pair:
    subject: str
    prior: Any  # brainsynth_cli.datasets.Session
    target: Any
    index: int  # subject index among subjects with >= 2 sessions (for sharding)
    split: str | None = None

    @property
    def key(self) -> str:
        return safe_name(f"{self.subject}__{self.prior.session}__{self.target.session}")

    @property
    def folder(self) -> str:
        return f"pairs/{safe_component(self.subject)}/{safe_component(self.prior.session)}_to_{safe_component(self.target.session)}"


@dataclass
class Summary:
    pairs_total: int = 0
    pairs_made: int = 0
    pairs_resumed: int = 0
    pairs_skipped: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    merged: bool = False


# -- names ---------------------------------------------------------------------------------
def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def safe_component(text: str) -> str:
    """A path component that ``datasets`` will not read as a split name ("sub-test01")."""
    import hashlib

    name = safe_name(text)
    if _SPLIT_RE.search(name.lower()):
        return "x" + hashlib.sha1(text.encode()).hexdigest()[:10]
    return name


# -- planning ------------------------------------------------------------------------------
def parse_split(text: str) -> tuple[float, float, float]:
    parts = text.split(":")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or any(v < 0 or not math.isfinite(v) for v in values) or sum(values) <= 0:
        raise UserError(f"--split {text!r}: give three non-negative ratios train:validation:test, e.g. 8:1:1")
    return values  # type: ignore[return-value]


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not (1 <= int(m.group(1)) <= int(m.group(2))):
        raise UserError(f"--shard {text!r}: give K/N with 1 <= K <= N, e.g. --shard 2/8")
    return int(m.group(1)), int(m.group(2))


def split_counts(n: int, ratios: tuple[float, float, float]) -> list[int]:
    """Subjects per split: largest remainders of ``n * ratio``, then every split with a
    non-zero ratio gets at least one subject while a bigger split can give one (4 subjects at
    8:1:1 -> 2/1/1, not 3/1/0: a test split must not come out empty by rounding)."""
    total = sum(ratios)
    exact = [n * r / total for r in ratios]
    counts = [int(math.floor(x)) for x in exact]
    for i in sorted(range(3), key=lambda i: (-(exact[i] - counts[i]), i))[: n - sum(counts)]:
        counts[i] += 1
    for i in range(3):
        if ratios[i] > 0 and counts[i] == 0:
            donor = max(range(3), key=lambda j: (counts[j], -j))
            if counts[donor] > 1:
                counts[donor] -= 1
                counts[i] += 1
    return counts


def assign_splits(subjects: list[str], ratios: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Subjects -> split: a seeded permutation of the sorted subject list, cut by
    :func:`split_counts`."""
    import numpy as np

    n = len(subjects)
    order = np.random.default_rng(seed).permutation(n)
    counts = split_counts(n, ratios)
    out = {}
    for rank, i in enumerate(order):
        out[subjects[int(i)]] = "train" if rank < counts[0] else ("validation" if rank < counts[0] + counts[1] else "test")
    return out


def plan(options: Options, warn=lambda msg: None, echo=lambda msg: None) -> tuple[list[Pair], dict[str, str]]:
    """All pairs of the dataset in order, and the subject splits."""
    from brainsynth_cli.datasets import read_dataset, runs_note
    from brainsynth_cli.participants import select_participants

    ds = read_dataset(options.dataset, options.labels, run=options.run)
    if runs_note(ds):  # several runs in a session: say which was taken
        echo(runs_note(ds))
    subjects = ds.subjects()
    chosen = set(select_participants(options.dataset, subjects, options.participants)) if options.participants else set(subjects)
    eligible = [subject for subject, sessions in subjects.items() if len(sessions) >= 2]
    if not eligible:
        if all(s.session == "" for s in ds.sessions):
            raise InputError(options.dataset, "has no session level (sub-*/anat/*_T1w only): one scan per subject, so no pairs",
                             "make-pairs needs two or more sessions per subject: sub-X/ses-Y/anat/..., or a CSV manifest "
                             "with a session column")
        raise InputError(options.dataset, "has no subject with two or more sessions", "make-pairs needs longitudinal data")
    for subject, sessions in subjects.items():
        if len(sessions) < 2 and subject in chosen:
            only = sessions[0]
            what = (f"has no session level (one scan, {only.image.parent.relative_to(ds.root).as_posix()})"
                    if not only.session and ds.kind == "bids" else f"has one session ({only.session})")
            warn(f"brainsynth: warning: {subject} {what}; skipped (a pair needs two sessions)")
    pairs = []
    for index, subject in enumerate(eligible):
        sessions = subjects[subject]
        if options.pairing == "consecutive":
            combos = [(sessions[i], sessions[i + 1]) for i in range(len(sessions) - 1)]
        else:
            combos = [(sessions[i], sessions[j]) for i in range(len(sessions)) for j in range(i + 1, len(sessions))]
        pairs += [Pair(subject, p, t, index) for p, t in combos]
    splits = assign_splits(eligible, parse_split(options.split), options.seed)
    for pair in pairs:
        pair.split = splits[pair.subject]
    return pairs, splits


def in_shard(pair: Pair, shard: tuple[int, int] | None) -> bool:
    return shard is None or pair.index % shard[1] == shard[0] - 1


def in_participants(pair: Pair, participants: tuple[str, ...]) -> bool:
    return not participants or pair.subject in participants


def check_inputs(pairs: Iterable[Pair]) -> None:
    """Cheap checks before any work: every session has a label map on its image's grid."""
    import nibabel as nib
    import numpy as np

    from brainsynth_cli.images.nifti import READ_SUFFIXES, has_suffix
    from brainsynth_cli.limits import check_image_size

    seen = set()
    for pair in pairs:
        for ses in (pair.prior, pair.target):
            if ses.key in seen:
                continue
            seen.add(ses.key)
            where = f"{ses.subject} {ses.session}"
            if ses.labels is None:
                raise InputError(ses.image, f"{where}: no label map for this session",
                                 "give --labels DERIVATIVES_DIR (sub-*/ses-*/anat/*_dseg.nii.gz) or a labels column, e.g. from `brainsynth segment`")
            if not Path(ses.labels).is_file():
                raise InputError(ses.labels, f"{where}: label map not found", "check the labels path of this session")
            for f in (ses.image, ses.labels):
                if not Path(f).is_file():
                    raise InputError(f, f"{where}: no such file", "check the dataset")
                if not has_suffix(f, READ_SUFFIXES):
                    raise InputError(f, f"{where}: not a NIfTI file (expected .nii or .nii.gz)", "convert it to NIfTI")
            try:
                img = nib.load(str(ses.image))
                lab = nib.load(str(ses.labels))
                ishape, lshape = tuple(img.shape), tuple(lab.shape)
                iaff, laff = np.asarray(img.affine), np.asarray(lab.affine)
                sizes = [(ses.image, ishape, img.get_data_dtype().itemsize), (ses.labels, lshape, lab.get_data_dtype().itemsize)]
            except Exception as exc:  # unreadable headers: read_volume later gives the precise message
                raise InputError(ses.labels, f"{where}: cannot read the image or label header ({type(exc).__name__})",
                                 "check that both files are NIfTI") from None
            for f, shape, itemsize in sizes:
                check_image_size(f, shape, itemsize)  # from the header, before anything is read or written
                if len(shape) != 3 and not (len(shape) == 4 and shape[3] == 1):
                    raise InputError(f, f"{where}: is {len(shape)}D with shape {shape}", "give 3D volumes (one per session)")
            ishape, lshape = ishape[:3], lshape[:3]
            if ishape != lshape:
                raise InputError(ses.labels, f"{where}: label map has shape {lshape} but the image has shape {ishape}",
                                 "resample the labels to the image grid (or segment this image again)")
            if not np.allclose(iaff, laff, atol=1e-3):
                delta = float(np.abs(iaff - laff).max())
                raise InputError(ses.labels, f"{where}: label map affine differs from the image's by up to {delta:.3g} mm",
                                 "resample the labels to the image grid (or segment this image again)")


# -- pairs.json ----------------------------------------------------------------------------
def config(options: Options, rules) -> dict[str, Any]:
    from brainsynth_cli import __version__

    cfg = {
        "format": FORMAT, "version": VERSION, "dim": options.dim, "size": options.size if options.dim == "2d" else None,
        "slices": options.slices if options.dim == "2d" else None, "prompt_builder": options.prompt_builder,
        "blender": options.blender, "rules": rules.to_toml(), "seed": options.seed, "split": options.split,
        "slice_convention": CONVENTION, "pairing": options.pairing, "margin_mm": options.margin,
        "min_psnr": options.min_psnr, "slice_centre": "lateral-ventricle centroid" if options.dim == "2d" else None,
        "intensity": ("targets matched to their prior (differential bias, tissue medians), both windowed by the prior's "
                      "[0,1] window" if options.match_intensities else "each volume windowed to [0,1]") + " (brainsynth_cli.slices.normalisation)",
        "brainsynth": __version__,
    }
    if options.run is not None:  # recorded only when given, so folders made without it compare equal
        cfg["run"] = options.run.removeprefix("run-")
    if options.deformed:  # recorded only when on, so folders made without it compare equal
        cfg["deformed"] = True
        cfg["deformed_combinations"] = True  # every combination of the deformable groups' intervals too
        if tuple(options.deformed_splits) != SPLITS:
            cfg["deformed_splits"] = list(options.deformed_splits)
    return cfg


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in ("brainsynth",)}


def _same_rules(old: Any, new: Any, targets: bool = True) -> bool:
    """Whether two rules texts mean the same rules (a folder written before a format addition,
    such as interval targets, stays resumable when its rules are unchanged). ``targets``: whether
    the intervals' targets count (they decide only the deformed rows' rates)."""
    import dataclasses

    from brainsynth_cli.structures import rules_from_text

    if not (isinstance(old, str) and isinstance(new, str)):
        return False
    try:
        a, b = rules_from_text(old), rules_from_text(new)
    except UserError:
        return False

    def meaning(rules: Any) -> Any:
        if targets:
            return rules.structures
        return [dataclasses.replace(s, intervals=tuple(dataclasses.replace(iv, target=0.0) for iv in s.intervals))
                for s in rules.structures]

    return meaning(a) == meaning(b) and dict(a.labels) == dict(b.labels)


def check_or_write_config(out: Path, cfg: dict[str, Any], merge_only: bool) -> None:
    """Refuse a folder made with other options; write ``pairs.json`` into a new one (once: runs
    side by side never rewrite it)."""
    from brainsynth_cli.images import write_text_once

    path = out / "pairs.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise InputError(path, "is not a readable pairs.json", "remove it or choose another -o folder") from None
        if old.get("format") != FORMAT:
            raise InputError(path, "is not a brainsynth pairs folder", "choose another -o folder")
        a, b = _comparable(old), _comparable(cfg)
        diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        if "rules" in diff and _same_rules(a.get("rules"), b.get("rules"), targets=bool(a.get("deformed") or b.get("deformed"))):
            diff.remove("rules")
        if diff:
            shown = ", ".join(f"{k}: {b.get(k)!r} now, {a.get(k)!r} there" if k != "rules" else "rules differ" for k in diff[:3])
            raise InputError(out, f"holds pairs made with other options ({shown})",
                             "use the same options to resume, or another -o folder")
        return
    if merge_only:
        raise InputError(out, "holds no pairs.json", "run make-pairs (with --shard K/N or --participant-label) before --merge")
    out.mkdir(parents=True, exist_ok=True)
    if not write_text_once(path, json.dumps(cfg, indent=2) + "\n"):  # a shard running beside this one wrote it
        check_or_write_config(out, cfg, merge_only)


# -- one pair ------------------------------------------------------------------------------
_components: dict[tuple[str, str, str, int], tuple[Any, Any]] = {}


def components(builder: str, blender: str, rules, seed: int) -> tuple[Any, Any]:
    import inspect

    from brainsynth_cli.plugin_manager import get_manager

    key = (builder, blender, rules.to_toml(), seed)
    if key not in _components:
        manager = get_manager()
        spec = manager.registry("prompt-builder").get(builder)
        factory = spec.resolve()
        try:
            accepts_seed = "seed" in inspect.signature(factory).parameters
        except (TypeError, ValueError):
            accepts_seed = False
        b = factory(rules=rules, seed=seed) if accepts_seed else factory(rules=rules)
        _components[key] = (b, manager.registry("blender").create(blender))
    return _components[key]


def _rate(vp: float, vt: float) -> float | None:
    from brainsynth_cli.structures import change_rate

    r = change_rate(vp, vt)
    return None if math.isnan(r) else round(r, 6)


def group_vols(labels, voxel_volume: float, rules) -> dict[str, float]:
    from brainsynth_cli.structures import group_volumes, label_volumes

    return group_volumes(label_volumes(labels, voxel_volume), rules)


def covariate_volumes(measured: dict[str, float], recorded: tuple[dict[str, Any], Any] | None, rules) -> dict[str, float | None]:
    """Structure group volumes (mm^3) of a session for its rows: what the derivatives record
    (``recorded``, from :func:`brainsynth_cli.datasets.recorded_volumes`; None where the
    segmenter does not label a group), else what the label map measures."""
    table = recorded[0] if recorded else {}
    out: dict[str, float | None] = {}
    for g in rules.names():
        v = table[g] if g in table else measured.get(g)
        out[g] = None if v is None else round(float(v), 4)
    return out


def volumes_after(prior: dict[str, float | None], rates: dict[str, float | None], measured: dict[str, float]) -> dict[str, float | None]:
    """Target volumes of a made (disentangled, deformed) target: the prior's volumes changed by
    the row's rates; where a rate is null (empty prior), the made label map's volume; None where
    the prior's volume is unknown (a group the segmenter does not label)."""
    out: dict[str, float | None] = {}
    for g, v in prior.items():
        r = rates.get(g)
        if v is None:
            out[g] = None
        elif r is not None:
            out[g] = round(v * (1.0 + r / 100.0), 4)
        else:
            out[g] = round(float(measured.get(g, 0.0)), 4)
    return out


def sex_of(value: str | None) -> str | None:
    """The dataset's sex value as given; None when unknown (empty, n/a)."""
    v = (value or "").strip()
    return None if v.lower() in ("", "n/a", "na", "nan", "unknown") else v


def structure_mask(labels, structure) -> Any:
    import numpy as np

    return np.isin(labels, np.asarray(structure.labels, dtype=labels.dtype))


def omega(prior_labels, target_labels, structure, margin_mm: float, voxel_size, protect=()) -> Any:
    """Ω_S, the region taken from the target for an S-disentangled pair.

    S's voxels in the prior or the target (the core), dilated by ``margin_mm`` (an ellipsoid of
    that radius in millimetres, at least one voxel along each axis), so that S's whole edge lies
    inside Ω and ∂Ω runs through the tissue around it. From the dilated shell (never from the
    core) the voxels where another described structure of ``protect`` changes (in one of prior
    and target but not both) are removed: there the result keeps the prior, so the other
    described structures stay as they were except where they touch S itself.
    """
    import numpy as np
    from scipy import ndimage

    core = structure_mask(prior_labels, structure) | structure_mask(target_labels, structure)
    if margin_mm <= 0:
        return core
    radii = [max(1, int(math.floor(margin_mm / float(v) + 1e-6))) for v in voxel_size]
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radii)]
    ball = sum(((g * float(v)) / max(margin_mm, float(v))) ** 2 for g, v in zip(grids, voxel_size)) <= 1.0 + 1e-9
    region = ndimage.binary_dilation(core, structure=ball)
    for other in protect:
        if other.name == structure.name:
            continue
        region &= ~(structure_mask(prior_labels, other) ^ structure_mask(target_labels, other))
    return region | core


def psnr(a, b) -> float:
    """PSNR (dB) of two images on [0, 1]."""
    import numpy as np

    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


def centre_slice(labels_canonical, rules) -> int:
    """Axial index of the lateral ventricles' centroid (labels of the rules' "ventricle" group,
    else aseg 4/43), else of all labelled voxels, else the middle slice."""
    import numpy as np

    try:
        ids = list(rules["ventricle"].labels)
    except KeyError:
        ids = [4, 43]
    for mask in (np.isin(labels_canonical, ids), labels_canonical > 0):
        z = np.nonzero(mask.any(axis=(0, 1)))[0]
        if z.size:
            counts = mask.sum(axis=(0, 1)).astype(np.float64)
            return int(round(float((counts * np.arange(counts.size)).sum() / counts.sum())))
    return labels_canonical.shape[2] // 2


def slice_range(centre: int, n: int, depth: int) -> list[int]:
    n = min(n, depth)
    k0 = min(max(0, centre - n // 2), depth - n)
    return list(range(k0, k0 + n))


def interval_years(prior, target) -> float | None:
    if prior.age is not None and target.age is not None:
        return round(float(target.age - prior.age), 4)
    if prior.date and target.date:
        from datetime import date

        try:
            a, b = date.fromisoformat(prior.date[:10]), date.fromisoformat(target.date[:10])
        except ValueError:
            return None
        return round((b - a).days / 365.25, 4)
    return None


def make_pair(pair: Pair, options: Options, rules) -> dict[str, Any]:
    """Make one pair's files (in a temporary folder renamed into place) and return its part."""
    import numpy as np

    from brainsynth_cli.datasets import recorded_volumes
    from brainsynth_cli.images import read_labels, read_volume, write_labels, write_png, write_volume
    from brainsynth_cli.interfaces import Change
    from brainsynth_cli.slices import normalisation, normalise, to_canonical, to_png16, to_square, to_view
    from brainsynth_plugins.pairs.align import align_to

    builder, blender = components(options.prompt_builder, options.blender, rules, options.seed)
    p, t = pair.prior, pair.target

    def load(ses):
        img, lab = read_volume(ses.image), read_labels(ses.labels)
        if img.shape != lab.shape or not np.allclose(img.affine, lab.affine, atol=1e-3):
            raise InputError(ses.labels, f"{ses.subject} {ses.session}: label map is not on the image's grid",
                             "resample the labels to the image grid (or segment this image again)")
        return img, lab

    prior, prior_lab = load(p)
    target, target_lab = load(t)
    # the real change is measured on each session's own label map (exact voxel counts; a
    # resampled label map gains or loses partial voxels); the images are then put on one grid
    vt = group_vols(target_lab.data, target.voxel_volume, rules)
    try:
        target, target_lab, alignment = align_to(prior, target, target_lab, seed=options.seed)
    except RuntimeError as exc:  # SimpleITK reports failures as RuntimeError
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:160]
        raise InputError(t.image, f"{t.subject} {t.session}: rigid registration to {p.session} failed ({reason})",
                         "check that both images show the same head, or put the target on the prior's grid first") from None
    vv = prior.voxel_volume
    vp = group_vols(prior_lab.data, vv, rules)
    recorded_p = recorded_volumes(p.labels, p.subject, p.session, rules)
    for s in rules.described():
        if vp[s.name] <= 0:
            labels = ", ".join(map(str, s.labels))
            if recorded_p is not None and s.name in recorded_p[0] and recorded_p[0][s.name] is None:
                by = f"segmenter '{recorded_p[1]}'" if recorded_p[1] else "its segmenter"
                raise InputError(p.labels, f"{p.subject} {p.session}: structure group '{s.name}' (labels {labels}) is not labelled by {by}, "
                                 "which labels none of these ids",
                                 f"segment with one that labels {s.name} (e.g. --segmenter freesurfer, or a SynthSeg plugin), "
                                 "or leave the group out of the rules (--rules)")
            raise InputError(p.labels, f"{p.subject} {p.session}: structure group '{s.name}' (labels {labels}) is empty in the prior's label map",
                             "check the segmentation, or leave the group out of the rules (--rules)")
    prior_vols = covariate_volumes(vp, recorded_p, rules)
    target_vols = covariate_volumes(vt, recorded_volumes(t.labels, t.subject, t.session, rules), rules)
    rates = {g: _rate(vp[g], vt[g]) for g in rules.names()}
    years = interval_years(p, t)
    context = dict(age=t.age, sex=t.sex, modality="T1w", interval_years=years)

    def num_rates(r):
        return {k: (math.nan if v is None else v) for k, v in r.items()}

    def intervals_of(r, only=None):
        out = {}
        for s in rules.described():
            iv = s.interval_for(math.nan if r.get(s.name) is None else r[s.name]) if (only is None or s.name == only) else None
            out[s.name] = iv.name if iv is not None else None
        return out

    pn = normalisation(prior.data)
    matched = match_target(prior, prior_lab, target, rules) if options.match_intensities else None
    if matched is not None:  # the target on the prior's intensity scale: the pair differs by anatomy, not scanner drift
        tn = pn
        target_matched = matched
    else:  # the target's own window; for blending, its intensities mapped linearly onto the prior's window
        tn = normalisation(target.data)
        scale = (pn.high - pn.low) / (tn.high - tn.low)
        target_matched = ((target.data.astype(np.float32) - np.float32(tn.low)) * np.float32(scale) + np.float32(pn.low)).astype(np.float32)
    prior01 = normalise(prior.data, pn)
    target01 = normalise(target_matched if matched is not None else target.data, tn)
    pair_psnr = psnr(prior01, target01)
    base = {"pair": pair.key, "subject": pair.subject, "sessions": [p.session, t.session], "folder": pair.folder,
            "registered": alignment.registered, "psnr": round(pair_psnr, 4) if math.isfinite(pair_psnr) else None, "rows": [], "files": [], "skipped": None,
            "rates": rates, "intensity_matched": matched is not None, "covariates": COVARIATES_VERSION}
    if options.min_psnr is not None and pair_psnr < options.min_psnr:
        base["skipped"] = f"psnr {pair_psnr:.2f} dB < {options.min_psnr:g}"
        return base

    # what to write: (name, volume on [0,1], normalisation, label map, row fields)
    outputs: list[tuple[str, Any, Any, Any, dict[str, Any] | None]] = [("prior", prior01, pn, prior_lab.data, None)]
    real_prompt = builder.build(Change(rates=num_rates(rates), volumes=vt, **context))
    if real_prompt is not None:
        outputs.append(("real", target01, tn, target_lab.data, {"kind": "real", "structure": None, "edit_prompt": real_prompt,
                                                 "rates": rates, "intervals": intervals_of(rates), "blender": None,
                                                 "target_volumes_mm3": target_vols}))
    for s in rules.described():
        if rates[s.name] is None or s.interval_for(rates[s.name]) is None:
            continue
        mask = omega(prior_lab.data, target_lab.data, s, options.margin, prior.voxel_size, protect=rules.described())
        blended = np.asarray(blender.blend(prior.data.astype(np.float32), target_matched, mask), dtype=np.float32)
        if blended.shape != prior.shape or not np.all(np.isfinite(blended)):
            raise UserError(f"blender {options.blender!r} returned an invalid image for {pair.subject} {p.session}->{t.session}; report it to the plugin's author")
        prior32 = prior.data.astype(np.float32)
        if np.array_equal(blended[mask], prior32[mask]):
            composite = prior_lab.data  # the blender put nothing in (e.g. `none`): nothing changed
        else:
            composite = np.where(mask, target_lab.data, prior_lab.data)
        vb = group_vols(composite, vv, rules)
        realised = {g: _rate(vp[g], vb[g]) for g in rules.names()}
        prompt = builder.build(Change(rates=num_rates(realised), volumes=vb, only=s.name, **context))
        if prompt is None:
            continue
        bn = normalisation(blended)
        outputs.append((f"dis-{safe_component(s.name)}", normalise(blended, bn), bn, composite, {
            "kind": "disentangled", "structure": s.name, "edit_prompt": prompt, "rates": realised,
            "intervals": intervals_of(realised, only=s.name), "blender": options.blender,
            "target_volumes_mm3": volumes_after(prior_vols, realised, vb)}))
        base.setdefault("omega_voxels", {})[s.name] = int(mask.sum())
    if options.deformed and (pair.split is None or pair.split in options.deformed_splits):
        from brainsynth_plugins.pairs.deformed import deformed_outputs

        outputs += deformed_outputs(pair, options, rules, builder, prior, prior_lab, pn, vp, base)
    if len(outputs) == 1:
        base["skipped"] = "no described change"
        return base
    for _, _, _, lab, fields in outputs[1:]:  # deformed rows: the prior's volumes changed by their rates
        if fields is not None and "target_volumes_mm3" not in fields:
            fields["target_volumes_mm3"] = volumes_after(prior_vols, fields["rates"], group_vols(lab, vv, rules))

    out = options.out
    tmp = out / PARTS / f".tmp-{pair.key}-{os.getpid()}"
    final = out / pair.folder
    for stale in (out / PARTS).glob(f".tmp-{pair.key}-*"):  # left by an interrupted run of this pair
        if re.fullmatch(rf"\.tmp-{re.escape(pair.key)}-\d+", stale.name):
            shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    rows: list[dict[str, Any]] = []
    files: list[str] = []
    common = {"subject": pair.subject, "sessions": [p.session, t.session], "interval_years": years,
              "prior_normalisation": pn.as_dict(), "prior_age": p.age, "target_age": t.age, "sex": sex_of(p.sex or t.sex),
              "prior_volumes_mm3": prior_vols}
    try:
        if options.dim == "2d":
            prior_c, ornt = to_canonical(prior_lab.data, prior.affine)
            ks = slice_range(centre_slice(prior_c, rules), options.slices, prior_c.shape[2])
            # one pixel of the stored square: the in-plane field of view (the padded square's side) / size
            spacing = [prior.voxel_size[int(ax)] for ax in ornt[:, 0]]
            common["pixel_mm"] = round(max(prior_c.shape[0] * spacing[0], prior_c.shape[1] * spacing[1]) / options.size, 6)
            for name, vol, _, lab, _ in outputs:
                canon, _ = to_canonical(vol, prior.affine)
                lab_c, _ = to_canonical(lab, prior.affine)
                for k in ks:
                    write_png(tmp / f"{name}_z{k:03d}.png", to_png16(to_square(to_view(canon[:, :, k]), options.size)), bits=16)
                    write_png(tmp / f"{name}_dseg_z{k:03d}.png", square_labels(to_view(lab_c[:, :, k]), options.size), bits=16)
                    files += [f"{pair.folder}/{name}_z{k:03d}.png", f"{pair.folder}/{name}_dseg_z{k:03d}.png"]
            for name, _, norm, _, fields in outputs[1:]:
                for k in ks:
                    rows.append(_row(pair.folder, f"prior_z{k:03d}.png", f"{name}_z{k:03d}.png",
                                     f"prior_dseg_z{k:03d}.png", f"{name}_dseg_z{k:03d}.png", fields, common, k, norm,
                                     options.deformed))
        else:
            for name, vol, _, lab, _ in outputs:
                write_volume(tmp / f"{name}.nii.gz", vol, prior.affine, prior.header)
                write_labels(tmp / f"{name}_dseg.nii.gz", lab, prior.affine, prior.header)
                files += [f"{pair.folder}/{name}.nii.gz", f"{pair.folder}/{name}_dseg.nii.gz"]
            for name, _, norm, _, fields in outputs[1:]:
                rows.append(_row(pair.folder, "prior.nii.gz", f"{name}.nii.gz", "prior_dseg.nii.gz", f"{name}_dseg.nii.gz",
                                 fields, common, None, norm, options.deformed))
        if final.exists():
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    base["rows"], base["files"] = rows, files
    return base


def match_target(prior, prior_labels, target, rules):
    """The (aligned) target volume on the prior's intensity scale: the differential bias field
    divided out and the CSF / grey / white-matter medians mapped onto the prior's
    (:func:`brainsynth_plugins.intensity_match.prepare`, what evaluate's measurements do); None
    when the rules lack the groups it needs (ventricle, cortex, white-matter)."""
    import numpy as np

    from brainsynth_plugins.intensity_match import prepare

    try:
        for name in ("ventricle", "cortex", "white-matter"):
            rules[name]
    except KeyError:
        return None
    out = prepare(target.data, prior.data, prior_labels.data, rules, prior.voxel_size)
    return np.asarray(out, dtype=np.float32)


def square_labels(labels2d, size: int):
    """A label slice padded to a centred square and resized to ``size`` with nearest neighbour,
    on the same geometry as :func:`brainsynth_cli.slices.to_square` gives the image."""
    import numpy as np

    from brainsynth_cli.slices import labels_to_square

    a = labels_to_square(labels2d, size)
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise UserError("label ids above 65535 cannot be stored in 16-bit PNG label slices; use --dim 3d")
    return a.astype(np.uint16)


def _row(folder: str, prior: str, edited: str, prior_labels: str, edited_labels: str, fields: dict[str, Any],
         common: dict[str, Any], k: int | None, norm, deformed_columns: bool = False) -> dict[str, Any]:
    row = {"input_image_file_name": f"{folder}/{prior}", "edited_image_file_name": f"{folder}/{edited}",
           "edit_prompt": fields["edit_prompt"], "subject": common["subject"], "sessions": common["sessions"],
           "kind": fields["kind"], "structure": fields["structure"], "rates": fields["rates"],
           "intervals": fields["intervals"], "interval_years": fields.get("interval_years", common["interval_years"]),
           "prior_age": common["prior_age"], "target_age": common["target_age"], "sex": common["sex"],
           "prior_volumes_mm3": common["prior_volumes_mm3"], "target_volumes_mm3": fields["target_volumes_mm3"],
           "blender": fields["blender"], "slice": k, "split": None, "prior_normalisation": common["prior_normalisation"],
           "target_normalisation": norm.as_dict(),
           "input_labels_file_name": f"{folder}/{prior_labels}", "edited_labels_file_name": f"{folder}/{edited_labels}"}
    if "pixel_mm" in common:
        row["pixel_mm"] = common["pixel_mm"]
    if deformed_columns:  # every row of a --deformed folder has the same columns (datasets needs it)
        row["rates_pv"] = fields.get("rates_pv")
        row["deform_target"] = fields.get("deform_target")
    return row


def part_path(out: Path, pair: Pair) -> Path:
    return out / PARTS / f"{pair.key}.json"


def read_part(out: Path, pair: Pair) -> dict[str, Any] | None:
    """The part of a finished pair (its part file exists and names files that all exist)."""
    path = part_path(out, pair)
    if not path.is_file():
        return None
    try:
        part = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if part.get("pair") != pair.key or not all((out / f).is_file() for f in part.get("files", [])):
        return None
    if part.get("covariates") != COVARIATES_VERSION:  # made before rows carried covariates: make it again
        return None
    return part


def write_part(out: Path, pair: Pair, part: dict[str, Any]) -> None:
    from brainsynth_cli.images import atomic_write_text

    atomic_write_text(part_path(out, pair), json.dumps(part, sort_keys=False) + "\n")


# -- workers -------------------------------------------------------------------------------
def _worker_init() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    except Exception:  # pragma: no cover - SimpleITK is a dependency
        pass


def _work(pair: Pair, options: Options, rules) -> tuple[str, Any]:
    """Make and record one pair; errors come back as text (exceptions may not pickle)."""
    try:
        part = make_pair(pair, options, rules)
        write_part(options.out, pair, part)
        return "ok", part
    except UserError as exc:
        return "error", str(exc)
    except Exception as exc:  # an internal error: keep the traceback for --debug
        from brainsynth_cli.errors import caused_by_interrupt

        if caused_by_interrupt(exc):  # Ctrl-C inside compiled code (numba) comes back as SystemError
            raise KeyboardInterrupt from None
        return "crash", f"{pair.subject} {pair.prior.session}->{pair.target.session}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"


def run_pairs(pending: list[Pair], options: Options, rules, progress) -> list[dict[str, Any]]:
    parts = []
    total = len(pending)

    def handle(status: str, value: Any) -> None:
        if status == "error":
            raise UserError(value)
        if status == "crash":
            raise RuntimeError(value)
        parts.append(value)

    if options.jobs <= 1 or total <= 1:
        for i, pair in enumerate(pending):
            progress(i, total, pair.subject)
            handle(*_work(pair, options, rules))
        progress(total, total, "")
        return parts
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # spawn, not fork: a forked child would inherit the parent's threads (numba, BLAS) mid-state.
    # Workers load the plugins again, so components registered at runtime need --jobs 1.
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(options.jobs, total), mp_context=ctx, initializer=_worker_init) as pool:
        futures = [pool.submit(_work, pair, options, rules) for pair in pending]
        try:
            for done, fut in enumerate(futures):
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    raise UserError(f"a make-pairs worker process died while making {pending[done].subject} "
                                    f"{pending[done].prior.session}->{pending[done].target.session} (out of memory?); "
                                    "re-run with fewer --jobs: finished pairs are kept") from None
                handle(*result)
                progress(done + 1, total, pending[done].subject)
        except BaseException:
            for f in futures:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return parts


# -- merge ---------------------------------------------------------------------------------
def merge(pairs: list[Pair], splits: dict[str, str], options: Options, rules, summary: Summary) -> None:
    from brainsynth_cli.images import atomic_write_text

    out = options.out
    missing = [p for p in pairs if read_part(out, p) is None]
    if missing:
        first = ", ".join(f"{p.subject} {p.prior.session}->{p.target.session}" for p in missing[:3])
        raise UserError(f"{out}: {len(missing)} of {len(pairs)} pairs are not made yet ({first}{', ...' if len(missing) > 3 else ''}); "
                        "run the missing shards (or make-pairs without --shard) before --merge")
    lines = []
    rows_by_kind: dict[str, int] = {}
    skipped: dict[str, int] = {}
    failed = 0
    montage_rows: dict[str, list[dict[str, Any]]] = {"real": [], "disentangled": [], "deformed": []}
    for pair in pairs:
        part = read_part(out, pair)
        assert part is not None
        if part.get("skipped"):
            reason = part["skipped"].split(" ")[0] if part["skipped"].startswith("psnr") else part["skipped"]
            skipped[reason] = skipped.get(reason, 0) + 1
        failed += len(part.get("deformed_failed", []))
        for row in part["rows"]:
            row["split"] = splits[pair.subject]
            lines.append(json.dumps(row))
            rows_by_kind[row["kind"]] = rows_by_kind.get(row["kind"], 0) + 1
            montage_rows[row["kind"]].append(row)
    atomic_write_text(out / "metadata.jsonl", "".join(line + "\n" for line in lines))
    summary.rows = rows_by_kind
    summary.pairs_skipped = skipped
    summary.merged = True
    for kind, rows in montage_rows.items():
        path = out / f"montage-{kind}.png"
        if rows and options.montage > 0:
            write_montage(path, pick_montage_rows(rows, options.montage), options, rules)
        elif path.exists():
            path.unlink()
    doc = {"pairs": len(pairs), "skipped": skipped, "rows": rows_by_kind,
           "subjects": {s: sum(1 for v in splits.values() if v == s) for s in SPLITS}}
    if options.deformed:
        doc["deformed"] = True
        doc["deformed_failed"] = failed
    atomic_write_text(out / "summary.json", json.dumps(doc, indent=2) + "\n")


def pick_montage_rows(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to ``n`` rows from different pairs (and structures, round robin), each at the pair's
    middle exported slice."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        what = r["structure"]
        if r["kind"] == "deformed":  # deformed rows: one group per interval (or combination), shown in turn
            what = " + ".join(f"{k} {v}" for k, v in (r.get("intervals") or {}).items() if v)
        groups.setdefault((r["subject"], tuple(r["sessions"]), what), []).append(r)
    by_structure: dict[Any, list[list[dict[str, Any]]]] = {}
    for (_, _, s), g in groups.items():
        by_structure.setdefault(s, []).append(g)
    picked = []
    while len(picked) < n and any(by_structure.values()):
        for s in list(by_structure):
            if by_structure[s] and len(picked) < n:
                g = by_structure[s].pop(0)
                picked.append(g[len(g) // 2])
    return picked


def _montage_image(path: Path, dim: str, labels: bool = False):
    """A pair image (or label map) in the display orientation: 2D slices are stored in it
    (convention v2), 3D volumes give their middle canonical axial slice."""
    import numpy as np

    from brainsynth_cli.figures.orientation import axial_view
    from brainsynth_cli.images import read_png, read_volume
    from brainsynth_cli.slices import from_png16

    if dim == "2d":
        a, _ = read_png(path)
        return a.astype(np.int32) if labels else from_png16(a)
    vol = read_volume(path)
    shown = axial_view(vol.data, vol.affine)
    return np.rint(shown).astype(np.int32) if labels else shown.astype(np.float32)


def montage_title(r: dict[str, Any]) -> str:
    """The full title of a montage row: subject, sessions, interval, kind, slice and prompt."""
    sessions = " → ".join(str(s) for s in r.get("sessions") or [])
    years = r.get("interval_years")
    kind = r["kind"] if not r.get("structure") else f"{r['kind']} {r['structure']}"
    if r["kind"] == "deformed" and isinstance(r.get("deform_target"), dict):
        kind += " " + ", ".join(f"{k} {v:+.1f} %" if len(r["deform_target"]) > 1 else f"{v:+.1f} %"
                                for k, v in r["deform_target"].items())
    where = f", axial slice {r['slice']}" if r.get("slice") is not None else ", middle axial slice"
    span = f" ({years:.1f} y)" if isinstance(years, (int, float)) else ""
    return f"{r['subject']} {sessions}{span}, {kind}{where}: “{r['edit_prompt']}”"


def _named_structures(r: dict[str, Any], rules) -> tuple[list[str], set[int]]:
    names = [r["structure"]] if r.get("structure") else [k for k, v in (r.get("intervals") or {}).items() if v]
    ids: set[int] = set()
    for n in names:
        try:
            ids |= set(rules[n].labels)
        except KeyError:
            continue
    return names, ids


def montage_figure(rows: list[dict[str, Any]], options: Options, rules=None) -> Any:
    """Prior, target and target − prior of each row (full title above it; one symmetric colour
    scale; the structures the prompt names outlined on the prior)."""
    import numpy as np

    from brainsynth_cli.figures.grid import Legend, Panel, Row, grid_figure

    fig_rows, outlined = [], set()
    for r in rows:
        a = _montage_image(options.out / r["input_image_file_name"], options.dim)
        b = _montage_image(options.out / r["edited_image_file_name"], options.dim)
        outline = None
        names, ids = _named_structures(r, rules) if rules is not None else ([], set())
        lab_file = r.get("input_labels_file_name")
        if ids and lab_file and (options.out / lab_file).is_file():
            lab = _montage_image(options.out / lab_file, options.dim, labels=True)
            if lab.shape == a.shape:
                outline = np.isin(lab, sorted(ids))
                outlined |= set(names)
        fig_rows.append(Row(montage_title(r), [Panel(a, window=(0.0, 1.0), outline=outline),
                                               Panel(b, window=(0.0, 1.0), outline=outline),
                                               Panel(b - a, kind="difference")]))
    legend = Legend(named_outline=f"named structure ({', '.join(sorted(outlined))}) on the prior" if outlined else "")
    kind = rows[0]["kind"] if rows else ""
    return grid_figure(fig_rows, columns=["prior", "target", "target − prior"], title=f"{kind} pairs: prior and target",
                       difference_label="intensity change (fraction of the slice window)", legend=legend)


def write_montage(path: Path, rows: list[dict[str, Any]], options: Options, rules=None) -> None:
    """Write :func:`montage_figure` (atomic)."""
    from brainsynth_cli.figures.save import save_figure

    save_figure(montage_figure(rows, options, rules), path)


# -- entry point ---------------------------------------------------------------------------
def make_pairs(options: Options, progress_factory=None, echo=print, warn=None) -> Summary:
    from brainsynth_cli.limits import check_number, check_seed
    from brainsynth_cli.outputs import check_inside, locked_output, on_interrupt
    from brainsynth_cli.participants import participant_slots, shown
    from brainsynth_cli.structures import load_rules

    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    if options.dim not in ("2d", "3d"):
        raise UserError(f"--dim {options.dim!r}: choose 2d or 3d")
    if options.pairing not in ("consecutive", "all"):
        raise UserError(f"--pairing {options.pairing!r}: choose consecutive or all")
    if options.dim == "2d" and (options.size < 8 or options.slices < 1):
        raise UserError("--size must be >= 8 and --slices >= 1")
    if options.margin < 0 or not math.isfinite(options.margin):
        raise UserError("--margin must be a non-negative number of millimetres")
    check_number("--size", options.size, low=8, high=4096, integer=True, example="--size 256")
    check_number("--slices", options.slices, low=1, high=1024, integer=True, example="--slices 30")
    check_number("--margin", options.margin, low=0, high=50, example="--margin 2")
    check_number("--montage", options.montage, low=0, high=100, integer=True)
    check_number("--jobs", options.jobs, low=1, high=256, integer=True)
    if options.min_psnr is not None:
        check_number("--min-psnr", options.min_psnr, low=0, high=1000, example="--min-psnr 20")
    check_seed(options.seed)
    parse_split(options.split)
    if options.participants and options.shard is not None:
        raise UserError("--shard and --participant-label both choose the subjects of a job; give one of them")
    if options.participants and options.merge_only:
        raise UserError("--merge merges the pairs of every participant; leave out --participant-label")
    rules = load_rules(options.rules)
    components(options.prompt_builder, options.blender, rules, options.seed)  # unknown names fail here
    if options.deformed:
        from brainsynth_plugins.pairs.deformed import deformable

        able = {s.name for s in deformable(rules)}
        for s in rules.described():
            if s.name not in able:
                warn(f"brainsynth: warning: --deformed makes no rows for '{s.name}' (the deform editor changes ventricle and cortex)")
    out = options.out
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder", "choose another -o")
    check_not_into_inputs(options)
    pairs, splits = plan(options, warn, echo)
    mine = [p for p in pairs if in_shard(p, options.shard) and in_participants(p, options.participants)]
    check_inputs(pairs if options.merge_only else mine)
    for pair in pairs:
        check_inside(out / pair.folder, out, what=f"the pairs of {pair.subject}")
    shard = options.shard if not options.merge_only else None
    command, slot = "make-pairs", None
    if shard:
        command, slot = f"make-pairs --shard {shard[0]}/{shard[1]}", f"shard-{shard[0]}-of-{shard[1]}"
    elif options.participants:
        command, slot = f"make-pairs --participant-label {shown(options.participants)}", participant_slots(options.participants)
    with locked_output(out, command=command, keep=lambda: any((out / PARTS).glob("*.json")), shared=slot is not None,
                       slot=slot):
        on_interrupt(lambda: f"the finished pairs in {out} are kept; run the same command again to resume"
                     if any((out / PARTS).glob("*.json")) else "no pair was finished, nothing was kept; run the command again")
        return _make_pairs_locked(options, pairs, splits, mine, rules, progress_factory, echo)


def check_not_into_inputs(options: Options) -> None:
    """The pairs folder is never the dataset's own folder or the labels folder."""
    from brainsynth_cli.outputs import refuse_folder_over_input

    root = options.dataset if options.dataset.is_dir() else options.dataset.parent
    refuse_folder_over_input(options.out, {"dataset folder": root, "labels folder": options.labels},
                             fix="write the pairs to a folder of their own (e.g. DATASET/derivatives/pairs)")


def _make_pairs_locked(options: Options, pairs: list[Pair], splits: dict[str, str], mine: list[Pair], rules,
                       progress_factory, echo) -> Summary:
    from brainsynth_cli.progress import progress_bar

    out = options.out
    check_or_write_config(out, config(options, rules), options.merge_only)
    summary = Summary(pairs_total=len(pairs))
    if not options.merge_only:
        pending = [p for p in mine if read_part(out, p) is None]
        summary.pairs_resumed = len(mine) - len(pending)
        if summary.pairs_resumed:
            echo(f"resuming: {summary.pairs_resumed} of {len(mine)} pairs already made")
        factory = progress_factory or progress_bar
        with factory("make-pairs", len(pending)) as progress:
            made = run_pairs(pending, options, rules, progress)
        summary.pairs_made = len(made)
    if options.shard is not None and not options.merge_only:
        echo(f"shard {options.shard[0]}/{options.shard[1]}: {len(mine)} pairs ready; when every shard is done run "
             f"make-pairs with the same options and --merge")
        return summary
    if options.participants:
        from brainsynth_cli.participants import shown

        echo(f"{shown(options.participants)}: {len(mine)} pairs ready; when every participant is done run "
             f"make-pairs with the same options and --merge instead of --participant-label")
        return summary
    merge(pairs, splits, options, rules, summary)
    return summary
