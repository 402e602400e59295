"""``brainsynth segment``: label maps (FreeSurfer aseg ids) and structure volumes.

Two forms, generic over the segmenter registry (``--segmenter NAME``, options with
``--option KEY=VALUE``):

- one image: ``brainsynth segment T1.nii.gz -o LABELS.nii.gz [--volumes V.csv|.json] [--qc QC.png]``
- a dataset: ``brainsynth segment DATASET --bids -o DERIVATIVES [--jobs N]`` writes a BIDS
  derivative dataset (it passes the BIDS validator):
  ``DERIVATIVES/sub-X/ses-Y/anat/sub-X_ses-Y_desc-aseg_dseg.nii.gz`` (what ``--labels`` of the
  other commands reads) with its sidecar ``_dseg.json`` (BIDS metadata and the volumes),
  look-up table ``_dseg.tsv`` and ``_qc.png`` next to it, ``sub-X/sub-X_sessions.tsv`` (volumes
  per session), and ``dataset_description.json``, ``README.md``, ``sessions.json``,
  ``.bidsignore`` and ``volumes.tsv`` at the top. Finished sessions are skipped on a re-run.
- on a cluster: ``--participant-label A B`` segments only those subjects and writes only their
  files (jobs for different subjects share DERIVATIVES); ``--merge`` then segments nothing and
  writes the files that span subjects, so the folder is byte for byte what one run writes.

When the segmenter offers ``segment_followup(image, prior_image, prior_labels, progress)``
(the ``atlas`` segmenter does), later sessions of a subject are segmented from the first
session's labels (``--longitudinal``, the default), so change rates come from the measured
change between the scans rather than from two independent segmentations.
"""

from __future__ import annotations

from pathlib import Path
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Optional

import typer

from brainsynth_cli.bids_files import lookup_table, source_uri, units_header
from brainsynth_cli.errors import InputError, UserError

if TYPE_CHECKING:  # pragma: no cover
    from brainsynth_cli.images import Volume
    from brainsynth_cli.structures import Rules

#: What a brain-sized image must satisfy (per axis extent in mm, voxel size in mm, foreground).
MIN_EXTENT_MM, MAX_EXTENT_MM = 60.0, 600.0
MIN_VOXEL_MM, MAX_VOXEL_MM = 0.1, 8.0
MIN_FOREGROUND_ML = 150.0

DERIVATIVE_NAME = "brainsynth-segment"

#: The most worker processes ``--jobs`` may ask for.


def register(app: typer.Typer) -> None:
    @app.command("segment")
    def segment(
        source: Path = typer.Argument(..., help="A T1w image (.nii/.nii.gz), or with --bids a BIDS dataset folder or CSV manifest."),
        output: Path = typer.Option(..., "-o", "--output", help="Label map to write (.nii.gz); with --bids the derivatives folder."),
        segmenter: str = typer.Option("atlas", "--segmenter", "-s", help="Segmenter name (see `brainsynth plugins`)."),
        option: list[str] = typer.Option([], "--option", "-O", help="Segmenter option KEY=VALUE (repeatable), e.g. -O aseg=sub/mri/aseg.mgz."),
        volumes: Optional[Path] = typer.Option(None, "--volumes", help="Write volumes (mm^3 per label and per structure group) to this .csv or .json."),
        qc: Optional[Path] = typer.Option(None, "--qc", help="Write a PNG of label outlines on three orthogonal slices."),
        bids: bool = typer.Option(False, "--bids", help="SOURCE is a dataset (BIDS tree or CSV manifest); OUTPUT a derivatives folder."),
        jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Subjects segmented in parallel (with --bids)."),
        longitudinal: bool = typer.Option(True, "--longitudinal/--independent", help="With --bids: segment later sessions from the first one when the segmenter can."),
        rules: Optional[Path] = typer.Option(None, "--rules", help="TOML rules file defining structure groups (default: built-in)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="With --bids: redo finished sessions."),
        run: str | None = typer.Option(None, "--run", help="With --bids: the T1w run to take where a session has several (default: the last)."),
        participant_label: list[str] = typer.Option([], "--participant-label", help="With --bids: segment only these participants (labels with or without sub-; repeat the option or separate by commas) and write only their files; finish with --merge."),
        merge: bool = typer.Option(False, "--merge", help="With --bids: segment nothing; write the tables that span subjects (volumes.tsv, ...) once every participant is done."),
    ) -> None:
        """Segment a T1w image (or every session of a dataset) into FreeSurfer aseg labels on the
        input grid, with structure volumes and a QC picture."""
        from brainsynth_cli.limits import MAX_JOBS, check_number
        from brainsynth_cli.outputs import check_writable, on_interrupt, refuse_overwriting_inputs
        from brainsynth_cli.participants import participant_labels
        from brainsynth_cli.structures import load_rules

        check_number("--jobs", jobs, low=1, high=MAX_JOBS, integer=True)
        participants = participant_labels(participant_label)
        options = parse_options(option)
        the_rules = load_rules(rules)
        spec = _spec(segmenter)
        if bids:
            if volumes is not None or qc is not None:
                raise UserError("--volumes and --qc are for one image; with --bids each session gets *_dseg.json (volumes) and *_qc.png")
            segment_dataset(source, output, segmenter, options, jobs=jobs, longitudinal=longitudinal,
                            rules=the_rules, overwrite=overwrite, run=run, participants=participants, merge=merge)
            return
        if run is not None:
            raise UserError("--run is for a dataset (with --bids)")
        if participants or merge:
            raise UserError("--participant-label and --merge are for a dataset (with --bids)")
        if source.is_dir():
            raise InputError(source, "is a folder", "add --bids to segment a dataset, or give one image file")
        check_output(output, volumes, qc)
        outputs = [output, volumes, qc]
        refuse_overwriting_inputs(outputs, [source, rules, *option_files(options)])
        check_writable(outputs)  # every output location, before any work
        on_interrupt("nothing was written (the outputs are written together at the end); run the command again")
        seg = create_segmenter(spec, options)
        from brainsynth_cli.images import read_volume
        from brainsynth_cli.interfaces import segmenter_labels
        from brainsynth_cli.progress import progress_bar

        image = read_volume(source)
        check_brain_image(image)
        with progress_bar(f"segment ({segmenter})", 1) as bar:
            labels = run_segmenter(seg, image, progress=bar)
        produced = segmenter_labels(seg)
        write_results(image, labels, output, volumes, qc, the_rules, segmenter=segmenter, produced=produced)
        note = missing_note(segmenter, the_rules, produced) if volumes is not None else None
        if note:
            typer.echo(note)
        typer.echo(f"wrote {output}" + (f", {volumes}" if volumes else "") + (f", {qc}" if qc else ""))


# ------------------------------------------------------------------------------------------
# options, segmenters, checks


def parse_options(items: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` -> ``{"k": "v"}``; one-line error on a malformed item."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise UserError(f"--option {item!r} is not KEY=VALUE; e.g. --option threads=2")
        out[key] = value.strip()
    return out


def _spec(name: str) -> Any:
    from brainsynth_cli.plugin_manager import get_manager

    return get_manager().registry("segmenter").get(name)


def create_segmenter(spec: Any, options: dict[str, str]) -> Any:
    """Build the segmenter, refusing options its factory does not take (one line)."""
    import inspect

    factory = spec.resolve()
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signature
        params = {}
    if params and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        known = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and not n.startswith("_")]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise UserError(f"segmenter {spec.name!r} has no option {unknown[0]!r}; its options: {', '.join(known) or 'none'}")
    try:
        return factory(**options)
    except (ValueError, TypeError) as exc:
        raise UserError(f"segmenter {spec.name!r}: bad option value ({exc})") from None


def option_files(options: dict[str, str]) -> list[Path]:
    """Segmenter option values that name existing files (inputs an output must not replace)."""
    out = []
    for value in options.values():
        try:
            if value and Path(value).exists():
                out.append(Path(value))
        except (OSError, ValueError):
            continue
    return out


def check_output(output: Path, volumes: Path | None, qc: Path | None) -> None:
    name = output.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        raise InputError(output, "the label map must end in .nii or .nii.gz", "rename the output")
    if volumes is not None and volumes.suffix.lower() not in (".csv", ".json"):
        raise InputError(volumes, "volumes file must end in .csv or .json", "rename it")
    if qc is not None and qc.suffix.lower() != ".png":
        raise InputError(qc, "the QC picture must end in .png", "rename it")
    for p in (output, volumes, qc):
        if p is not None and p.is_dir():
            raise InputError(p, "is a folder", "give a file name")


def check_brain_image(image: "Volume") -> None:
    """Refuse what cannot be a head or brain scan: wrong size, empty or constant images."""
    import numpy as np

    where = image.path
    if image.data.ndim != 3:
        raise InputError(where, f"is {image.data.ndim}D", "give a 3D T1w volume")
    vox = image.voxel_size
    extent = [n * v for n, v in zip(image.shape, vox)]
    if min(vox) < MIN_VOXEL_MM or max(vox) > MAX_VOXEL_MM:
        raise InputError(where, f"has voxel size {tuple(round(v, 3) for v in vox)} mm, not a brain MRI's",
                         f"voxel sizes must lie in [{MIN_VOXEL_MM:g}, {MAX_VOXEL_MM:g}] mm; check the header")
    if min(extent) < MIN_EXTENT_MM or max(extent) > MAX_EXTENT_MM:
        dims = " x ".join(f"{e:.0f}" for e in extent)
        raise InputError(where, f"covers {dims} mm, not a brain-sized volume",
                         f"each axis must span {MIN_EXTENT_MM:g}-{MAX_EXTENT_MM:g} mm; give a whole-brain 3D T1w scan")
    data = image.data
    top = float(np.max(data)) if data.size else 0.0
    if top <= 0 or float(np.min(data)) == top:
        raise InputError(where, "is empty (all voxels " + ("0" if top == 0 else "equal") + ")", "give a T1w scan with a brain in it")
    fg = np.count_nonzero(data > 0.1 * float(np.percentile(data, 99.5))) * image.voxel_volume / 1000.0
    if fg < MIN_FOREGROUND_ML:
        raise InputError(where, f"has only {fg:.0f} mL of signal, too little for a brain",
                         f"give a whole-brain T1w scan (at least {MIN_FOREGROUND_ML:g} mL above background)")


def run_segmenter(seg: Any, image: "Volume", *, progress: Any = None, prior: tuple["Volume", "Volume"] | None = None) -> "Volume":
    """Call the segmenter (``segment_followup`` when ``prior`` is given) and check its result."""
    import numpy as np

    if prior is not None:
        labels = seg.segment_followup(image, prior[0], prior[1], progress=progress)
    else:
        labels = seg.segment(image, progress=progress)
    data = np.asarray(labels.data)
    if data.shape != image.shape or not np.issubdtype(data.dtype, np.integer):
        raise RuntimeError(f"segmenter returned {data.dtype} labels of shape {data.shape} for an image of shape {image.shape}")
    return labels


# ------------------------------------------------------------------------------------------
# volumes and QC


def not_labelled(rules: "Rules", produced: frozenset[int] | None) -> list[str]:
    """The structure groups none of whose ids the segmenter produces (none when it declares nothing)."""
    if produced is None:
        return []
    return [s.name for s in rules.structures if not set(s.labels) & produced]


def missing_note(segmenter: str, rules: "Rules", produced: frozenset[int] | None) -> str | None:
    """One log line naming the groups a segmenter does not label, or None."""
    missing = not_labelled(rules, produced)
    if not missing:
        return None
    parts = ", ".join(f"{g} ({', '.join(map(str, rules[g].labels))})" for g in missing)
    return (f"segmenter '{segmenter}' labels no {parts}: reported as n/a, not 0; "
            "for these give --segmenter freesurfer (or a SynthSeg plugin)")


def volume_table(labels: "Volume", rules: "Rules", produced: frozenset[int] | None = None) -> dict[str, Any]:
    """Volumes per structure group and per label; a group none of whose ids the segmenter
    produces (``produced``, its declared labels) is None (missing), not 0."""
    from brainsynth_cli.structures import group_volumes, label_volumes

    per_label = label_volumes(labels.data, labels.voxel_volume)
    missing = set(not_labelled(rules, produced))
    table: dict[str, Any] = {
        "voxel_volume_mm3": labels.voxel_volume,
        "structures_mm3": {k: (None if k in missing else round(v, 4)) for k, v in group_volumes(per_label, rules).items()},
        "labels_mm3": {str(k): round(v, 4) for k, v in sorted(per_label.items())},
        "label_names": {str(k): rules.labels.get(k, f"label-{k}") for k in sorted(per_label)},
    }
    if produced is not None:
        table["labels_produced"] = sorted(produced)
        table["structures_not_labelled"] = sorted(missing, key=rules.names().index)
    return table


def _mm3(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def volumes_text(table: dict[str, Any], path: Path, **context: Any) -> str:
    import json

    if path.suffix.lower() == ".json":
        return json.dumps({**context, **table}, indent=2) + "\n"
    lines = ["kind,name,label,volume_mm3"]
    for name, v in table["structures_mm3"].items():
        lines.append(f"structure,{name},,{_mm3(v)}")
    for lab, v in table["labels_mm3"].items():
        lines.append(f"label,{table['label_names'][lab]},{lab},{v:.4f}")
    return "\n".join(lines) + "\n"


def write_qc(path: Path, image: "Volume", labels: "Volume", names: Mapping[int, str] | None = None) -> None:
    """The QC picture (:func:`brainsynth_cli.figures.label_qc.label_qc_figure`), titled with the image's name."""
    from brainsynth_cli.figures.label_qc import label_qc_figure
    from brainsynth_cli.figures.save import save_figure

    name = Path(image.path).name if image.path else "image"
    save_figure(label_qc_figure(image.data, labels.data, image.affine, names=names, title=f"{name}: labels outlined"), path)


def write_results(image: "Volume", labels: "Volume", output: Path, volumes: Path | None, qc: Path | None,
                  rules: "Rules", *, segmenter: str, produced: frozenset[int] | None = None) -> None:
    """Labels (on the input grid and header), volumes and QC, all or nothing: each is written to a
    temporary file first and all are renamed into place at the end."""
    from brainsynth_cli.images import atomic_write_text, write_labels
    from brainsynth_cli.outputs import staged_outputs

    text = volumes_text(volume_table(labels, rules, produced), volumes, image=str(image.path), labels=str(output),
                        segmenter=segmenter) if volumes is not None else None
    with staged_outputs([output, volumes, qc]) as staged:
        write_labels(staged[output], labels.data, image.affine, units_header(image.header))
        if volumes is not None and text is not None:
            atomic_write_text(staged[volumes], text)
        if qc is not None:
            write_qc(staged[qc], image, labels, rules.labels)


# ------------------------------------------------------------------------------------------
# datasets


#: The ``desc-`` entity of the label maps: FreeSurfer aseg ids, as fMRIPrep names its aseg.
DESC = "aseg"


def session_paths(root: Path, subject: str, session: str) -> dict[str, Path]:
    """A session's files in a derivatives folder: the label map (written last), its sidecar
    (BIDS metadata and volumes), its look-up table and the QC picture."""
    folder = root / subject / session / "anat" if session else root / subject / "anat"  # "": no session level
    stem = f"{subject}_{session}_desc-{DESC}" if session else f"{subject}_desc-{DESC}"
    return {"labels": folder / f"{stem}_dseg.nii.gz", "sidecar": folder / f"{stem}_dseg.json",
            "lut": folder / f"{stem}_dseg.tsv", "qc": folder / f"{stem}_qc.png"}


def _finished(paths: dict[str, Path]) -> bool:
    return paths["labels"].is_file() and paths["sidecar"].is_file() and paths["lut"].is_file()


def _raw_link(out_dir: Path, root: Path, kind: str) -> str:
    """Where the source dataset lies, seen from DERIVATIVES: a relative path when DERIVATIVES is
    inside it (DATASET/derivatives/...: they move together), else a file URI."""
    import os

    from brainsynth_cli.outputs import is_inside

    if kind == "bids" and is_inside(out_dir, root):
        return Path(os.path.relpath(root.resolve(), out_dir.resolve())).as_posix()
    return root.resolve().as_uri()


def _description(segmenter: str, options: dict[str, str], longitudinal: bool, source: str | None = None,
                 run: str | None = None) -> dict[str, Any]:
    from brainsynth_cli import __version__

    out: dict[str, Any] = {
        "Name": "brainsynth segment",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "brainsynth", "Version": __version__,
                         "Description": "brainsynth segment --bids: FreeSurfer aseg labels and structure volumes",
                         "Segmenter": segmenter, "Options": dict(sorted(options.items())), "Longitudinal": longitudinal,
                         "Run": run or "last"}],
    }
    if source is not None:
        out["SourceDatasets"] = [{"URL": source}]
        out["DatasetLinks"] = {"raw": source}
    return out


def _check_description(out_dir: Path, want: dict[str, Any], overwrite: bool,
                       fix: str = "use another output folder, the same settings, or --overwrite") -> None:
    """An existing derivatives folder must be one this command wrote; ``--overwrite`` redoes it
    (with other settings), never a folder of another dataset."""
    import json

    path = out_dir / "dataset_description.json"
    if not path.exists():
        return
    try:
        have = json.loads(path.read_text(encoding="utf-8"))
        gen = have["GeneratedBy"][0]
        ours = have.get("Name") == want["Name"] and have.get("DatasetType") == "derivative" and isinstance(gen, dict)
    except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
        ours = False
    if not ours:
        raise InputError(path, "belongs to another dataset, not to brainsynth segment derivatives",
                         "give an empty or new output folder (e.g. DATASET/derivatives/brainsynth-segment)")
    if overwrite:
        return
    mine = want["GeneratedBy"][0]
    for key in ("Segmenter", "Options", "Longitudinal", "Run"):
        if gen.get(key, "last" if key == "Run" else None) != mine[key]:
            raise InputError(out_dir, f"was made with {key.lower()} {gen.get(key)!r}, not {mine[key]!r}", fix)


def segment_dataset(source: Path, out_dir: Path, segmenter: str, options: dict[str, str], *, jobs: int = 1,
                    longitudinal: bool = True, rules: "Rules", overwrite: bool = False, run: str | None = None,
                    participants: tuple[str, ...] = (), merge: bool = False) -> None:
    """Segment every session of a dataset into a BIDS derivatives folder (resumable); with
    ``participants`` only those subjects, and only their files; with ``merge`` nothing, but the
    files that span subjects (see :mod:`brainsynth_cli.segment_group`)."""
    from brainsynth_cli.datasets import read_dataset, runs_note
    from brainsynth_cli.outputs import check_inside, locked_output, on_interrupt, refuse_overwriting_inputs
    from brainsynth_cli.participants import select_participants

    if merge and participants:
        raise UserError("--merge writes the tables of every participant; leave out --participant-label")
    if merge and overwrite:
        raise UserError("--merge segments nothing, so --overwrite has nothing to redo; leave it out")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "exists and is not a folder", "give a derivatives folder")
    if merge and not out_dir.is_dir():
        raise InputError(out_dir, "does not exist", "segment the participants into it (--participant-label) before --merge")
    dataset = read_dataset(source, run=run)
    check_derivatives_place(out_dir, dataset.root, dataset.kind)
    check_layout(out_dir)
    subjects = dataset.subjects()
    mine = {s: subjects[s] for s in select_participants(source, subjects, participants)} if participants else subjects
    spec = _spec(segmenter)
    checked = None if merge else create_segmenter(spec, options)  # options and requirements checked before any work
    inputs = [p for ses in subjects.values() for s in ses for p in (s.image, s.labels)] + option_files(options)
    for sub, sessions in mine.items():
        for s in sessions:
            if not merge:
                _check_header(s.image)
            paths = session_paths(out_dir, sub, s.session)
            for p in paths.values():
                check_inside(p, out_dir)
            refuse_overwriting_inputs(paths.values(), inputs)
    description = _description(segmenter, options, longitudinal, _raw_link(out_dir, dataset.root, dataset.kind), run)
    if runs_note(dataset):  # several runs in a session: say which was taken
        typer.echo(runs_note(dataset))
    if merge:
        from brainsynth_cli.segment_group import merge_derivatives

        merge_derivatives(out_dir, subjects, description, rules, segmenter)
        return
    raw_root = str(dataset.root.resolve()) if dataset.kind == "bids" else None
    from brainsynth_cli.interfaces import segmenter_labels

    note = missing_note(segmenter, rules, segmenter_labels(checked))
    if note:
        typer.echo(note)

    if participants:
        from brainsynth_cli.segment_group import segment_participants

        segment_participants(out_dir, mine, description, segmenter, options, jobs=jobs, longitudinal=longitudinal,
                             rules=rules, overwrite=overwrite, raw_root=raw_root)
        return

    def finished_any() -> bool:
        return any(_finished(session_paths(out_dir, sub, s.session)) for sub, ses in subjects.items() for s in ses)

    with locked_output(out_dir, command="segment --bids", keep=finished_any):
        _check_description(out_dir, description, overwrite)
        on_interrupt(lambda: f"the finished sessions in {out_dir} are kept; run the same command again to resume"
                     if finished_any() else "no session was finished, nothing was kept; run the command again")
        _segment_sessions(out_dir, subjects, description, segmenter, options, jobs=jobs, longitudinal=longitudinal,
                          rules=rules, overwrite=overwrite, raw_root=raw_root)


def check_derivatives_place(out_dir: Path, root: Path, kind: str) -> None:
    """Derivatives never go into a raw dataset's own folders: only below DATASET/derivatives or
    outside it (for a CSV manifest: not into the manifest's own folder)."""
    from brainsynth_cli.outputs import is_inside, same_file

    if same_file(out_dir, root):
        raise InputError(out_dir, f"is the dataset's own folder; derivatives never go into the {'raw dataset' if kind == 'bids' else 'manifest folder'}",
                         f"write them to {root / 'derivatives' / DERIVATIVE_NAME} or another folder")
    if kind == "bids" and is_inside(out_dir, root) and not is_inside(out_dir, root / "derivatives"):
        raise InputError(out_dir, f"lies inside the raw dataset {root} but not in its derivatives folder",
                         f"write them to {root / 'derivatives' / DERIVATIVE_NAME} or a folder outside the dataset")


def check_layout(out_dir: Path) -> None:
    """Refuse a folder written by an older brainsynth, before the BIDS-valid layout
    (``sub-X_ses-Y_dseg.nii.gz`` with ``*_volumes.json``): new files beside old ones would give
    a session two label maps. The old folders are still read by ``--labels``."""
    old = next(iter(sorted(out_dir.glob("sub-*/ses-*/anat/sub-*_volumes.json"))), None) if out_dir.is_dir() else None
    if old is not None:
        raise InputError(out_dir, f"holds derivatives in an older brainsynth layout ({old.name})",
                         "segment into a new folder (the old one still works as --labels of make-pairs and evaluate)")


def _segment_sessions(out_dir: Path, subjects: dict[str, list[Any]], description: dict[str, Any], segmenter: str,
                      options: dict[str, str], *, jobs: int, longitudinal: bool, rules: "Rules", overwrite: bool,
                      raw_root: str | None = None, group: bool = True) -> None:
    """Segment the unfinished sessions of ``subjects``; ``group=False`` (a participant job)
    writes only the subjects' own files, none that spans subjects."""
    import json

    from brainsynth_cli.images import atomic_write_text
    from brainsynth_cli.progress import progress_bar

    todo = {sub: ses for sub, ses in subjects.items()
            if overwrite or not all(_finished(session_paths(out_dir, sub, s.session)) for s in ses)}
    out_dir.mkdir(parents=True, exist_ok=True)
    if group:
        atomic_write_text(out_dir / "dataset_description.json", json.dumps(description, indent=2) + "\n")
        _write_top_files(out_dir, rules, segmenter)
    total = sum(len(v) for v in subjects.values())
    done = total - sum(len(v) for v in todo.values())
    tasks = [(sub, [(s.session, str(s.image)) for s in ses]) for sub, ses in todo.items()]
    skipped = total - sum(len(v) for v in todo.values())
    with progress_bar(f"segment ({segmenter})", total) as bar:
        bar(done, total, "")
        if jobs <= 1 or len(tasks) <= 1:
            for task in tasks:
                done += _segment_subject(task, out_dir, segmenter, options, longitudinal, rules.to_toml(), overwrite, raw_root)
                bar(done, total, task[0])
        else:
            import concurrent.futures as cf
            import multiprocessing as mp

            with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn")) as pool:
                futures = [pool.submit(_segment_subject, t, out_dir, segmenter, options, longitudinal, rules.to_toml(), overwrite, raw_root)
                           for t in tasks]
                for fut in cf.as_completed(futures):
                    done += fut.result()
                    bar(done, total, "")
    _write_table(out_dir, subjects, rules, group=group)
    typer.echo(f"segmented {len(tasks)} subject(s) into {out_dir} ({skipped} session(s) already done)")
    if not group:
        typer.echo("when every participant is done, run the same command with --merge instead of --participant-label")


def _check_header(path: Path) -> None:
    """Cheap checks of a dataset image before any work (shape and extent from the header)."""
    import nibabel as nib
    import numpy as np

    from brainsynth_cli.images import Volume
    from brainsynth_cli.images.nifti import READ_SUFFIXES, has_suffix
    from brainsynth_cli.limits import check_image_size

    if not path.is_file():
        raise InputError(path, "no such file", "check the dataset")
    if not has_suffix(path, READ_SUFFIXES):
        raise InputError(path, "not a NIfTI file (expected .nii or .nii.gz)", "convert it to NIfTI, e.g. with dcm2niix")
    try:
        img = nib.load(str(path))
        img.get_data_dtype()
    except Exception as exc:  # nibabel raises many types for broken files
        raise InputError(path, f"cannot be read as NIfTI ({type(exc).__name__})", "re-export the image") from None
    check_image_size(path, img.shape, int(img.get_data_dtype().itemsize))
    shape = img.shape[:3] if len(img.shape) == 4 and img.shape[3] == 1 else img.shape
    if len(shape) != 3:
        raise InputError(path, f"is {len(img.shape)}D with shape {tuple(img.shape)}", "give a 3D T1w volume per session")
    vox = Volume(np.zeros((1, 1, 1), np.float32), np.asarray(img.affine), None, path)
    sizes = vox.voxel_size
    extent = [n * v for n, v in zip(shape, sizes)]
    if min(extent) < MIN_EXTENT_MM or max(extent) > MAX_EXTENT_MM or min(sizes) < MIN_VOXEL_MM or max(sizes) > MAX_VOXEL_MM:
        dims = " x ".join(f"{e:.0f}" for e in extent)
        raise InputError(path, f"covers {dims} mm, not a brain-sized volume", "give a whole-brain 3D T1w scan")


def _segment_subject(task: tuple[str, list[tuple[str, str]]], out_dir: Path, segmenter: str, options: dict[str, str],
                     longitudinal: bool, rules_toml: str, overwrite: bool, raw_root: str | None = None) -> int:
    """Segment the sessions of one subject (in order); returns how many were written.

    Independent mode: each unfinished session with ``segment``. Longitudinal mode (when the
    segmenter has ``segment_followup``): the first session is segmented, then every session,
    the first included, is labelled with ``segment_followup`` from those labels; a subject is
    redone as a whole, so a resumed run writes the same bytes as an uninterrupted one."""
    from brainsynth_cli.images import read_volume
    from brainsynth_cli.structures import rules_from_text

    rules = rules_from_text(rules_toml, "rules")
    subject, sessions = task
    seg = create_segmenter(_spec(segmenter), options)
    followup = longitudinal and callable(getattr(seg, "segment_followup", None))
    from brainsynth_cli.interfaces import segmenter_labels

    produced = segmenter_labels(seg)
    count = 0
    if followup:
        images = [(session, path, read_volume(path)) for session, path in sessions]
        for _, path, image in images:
            check_brain_image(image)
        first = images[0][2]
        initial = run_segmenter(seg, first)
        for session, path, image in images:
            labels = run_segmenter(seg, image, prior=(first, initial))
            _write_session(out_dir, subject, session, path, image, labels, rules, segmenter, options, sessions[0][0], raw_root,
                           produced)
            count += 1
        return count
    for session, path in sessions:
        if _finished(session_paths(out_dir, subject, session)) and not overwrite:
            continue
        image = read_volume(path)
        check_brain_image(image)
        labels = run_segmenter(seg, image)
        _write_session(out_dir, subject, session, path, image, labels, rules, segmenter, options, None, raw_root, produced)
        count += 1
    return count


def _write_session(out_dir: Path, subject: str, session: str, image_path: str, image: Any, labels: Any, rules: "Rules",
                   segmenter: str, options: dict[str, str], from_session: str | None, raw_root: str | None = None,
                   produced: frozenset[int] | None = None) -> None:
    import json

    from brainsynth_cli.images import atomic_write_text, write_labels

    paths = session_paths(out_dir, subject, session)
    source = source_uri(image_path, raw_root)
    how = f"from {from_session}'s labels (longitudinal)" if from_session else "independently"
    who = f"{subject} {session}" if session else subject
    table = volume_table(labels, rules, produced)
    sidecar = {
        "Description": f"FreeSurfer aseg labels of {who} by brainsynth segment ({segmenter}), {how}; "
                       "look-up table in the _dseg.tsv beside it, volumes in mm^3 below",
        "Sources": [source], "SpatialReference": source,
        "subject": subject, "session": session, "image": str(image_path), "segmenter": segmenter,
        "options": options, "from_session": from_session, **table,
    }
    atomic_write_text(paths["sidecar"], json.dumps(sidecar, indent=2) + "\n")
    atomic_write_text(paths["lut"], lookup_table(table["labels_mm3"], rules))
    write_qc(paths["qc"], image, labels, rules.labels)
    write_labels(paths["labels"], labels.data, image.affine, units_header(image.header))  # last: marks the session done


BIDSIGNORE = "# not (yet) in the BIDS specification: QC pictures and the cohort-wide volume table\n*_qc.png\n/volumes.tsv\n"


def _readme(segmenter: str) -> str:
    return f"""# brainsynth segment derivatives

Made by `brainsynth segment DATASET --bids` with the `{segmenter}` segmenter: FreeSurfer aseg
label maps of every session on the session's own grid, and structure volumes.

- `sub-X/ses-Y/anat/sub-X_ses-Y_desc-{DESC}_dseg.nii.gz`: the labels (FreeSurfer aseg ids);
- `..._dseg.tsv` beside it: the look-up table (index, name, color);
- `..._dseg.json` beside it: where the labels come from (`Sources`), how they were made, and the
  volumes in mm^3 per structure group (`structures_mm3`) and per label (`labels_mm3`);
- `..._qc.png`: label outlines on three slices (listed in `.bidsignore`);
- `sub-X/sub-X_sessions.tsv`: structure group volumes per session (columns in `sessions.json`);
  for a dataset without sessions `participants.tsv` (columns in `participants.json`);
- `volumes.tsv`: the same for every session of the dataset in one table (listed in `.bidsignore`).
"""


def _write_top_files(out_dir: Path, rules: Rules, segmenter: str) -> None:
    """README and ``.bidsignore``."""
    from brainsynth_cli.images import atomic_write_text

    atomic_write_text(out_dir / "README.md", _readme(segmenter))
    atomic_write_text(out_dir / ".bidsignore", BIDSIGNORE)


def _columns(rules: Rules, per: str) -> str:
    """``sessions.json`` / ``participants.json``: what the volume columns mean."""
    import json

    columns: dict[str, Any] = {"Description": f"structure group volumes per {per}, measured by brainsynth segment"}
    for s in rules.structures:
        ids = ", ".join(str(i) for i in s.labels)
        columns[f"{s.name}_mm3"] = {"Description": f"volume of {s.name}: {s.help or s.name} (aseg labels {ids}); "
                                                   "n/a when the segmenter labels none of them",
                                    "Units": "mm^3"}
    return json.dumps(columns, indent=2) + "\n"


def _write_table(out_dir: Path, subjects: dict[str, list[Any]], rules: "Rules", *, group: bool = True) -> None:
    """``sub-X/sub-X_sessions.tsv`` (BIDS) and ``volumes.tsv`` (the whole dataset): one row per
    finished session, one column per structure group. ``group=False``: only the subjects' own
    tables (``volumes.tsv``, ``sessions.json`` and ``participants.tsv`` span subjects)."""
    import json

    from brainsynth_cli.images import atomic_write_text

    groups = rules.names()
    header = [f"{g}_mm3" for g in groups]
    lines = ["\t".join(["participant_id", "session_id", *header])]
    participants = []  # subjects without a session level: their volumes go to participants.tsv
    with_sessions = False
    for subject, sessions in subjects.items():
        rows = []
        for s in sessions:
            p = session_paths(out_dir, subject, s.session)["sidecar"]
            if not p.is_file():
                continue
            vols = json.loads(p.read_text(encoding="utf-8"))["structures_mm3"]
            rows.append([s.session or "n/a", *[_mm3(vols.get(g, 0.0)) for g in groups]])
        if rows and not sessions[0].session:
            participants.append([subject, *rows[0][1:]])
        elif rows:
            text = "\n".join("\t".join(r) for r in [["session_id", *header], *rows]) + "\n"
            atomic_write_text(out_dir / subject / f"{subject}_sessions.tsv", text)
            with_sessions = True
        lines += ["\t".join([subject, *r]) for r in rows]
    if not group:
        return
    atomic_write_text(out_dir / "volumes.tsv", "\n".join(lines) + "\n")
    if with_sessions:
        atomic_write_text(out_dir / "sessions.json", _columns(rules, "session"))
    if participants:
        text = "\n".join("\t".join(r) for r in [["participant_id", *header], *participants]) + "\n"
        atomic_write_text(out_dir / "participants.tsv", text)
        atomic_write_text(out_dir / "participants.json", _columns(rules, "participant (a dataset without sessions)"))
