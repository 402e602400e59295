"""Longitudinal datasets: a BIDS-style tree or a CSV manifest, as ordered sessions per subject.

BIDS layout read::

    DATASET/participants.tsv                         participant_id, age, sex (optional)
    DATASET/sub-X/sub-X_sessions.tsv                 session_id, age (or acq_time) (optional)
    DATASET/sub-X/ses-Y/anat/sub-X_ses-Y[_*]_T1w.nii[.gz]
    DATASET/sub-X/anat/sub-X[_*]_T1w.nii[.gz]        (no session level: one session, ``session == ""``)
    LABELS/sub-X/ses-Y/anat/sub-X_ses-Y[_*]_dseg.nii[.gz]   (a derivatives folder; sub-X/anat/... without sessions)

Several runs of one T1w in a session (``..._run-1_T1w``, ``..._run-2_T1w``, the other entities
equal): the last run, or the one ``run=`` names (``--run`` of every command that reads a
dataset); ``Dataset.notes`` says which was taken (:func:`runs_note`). A derivatives folder with a
label map per run gives the one of the run taken. Files and folders matched by
``DATASET/.bidsignore`` (gitignore-style patterns) are not read.

CSV manifest columns: ``subject, session, image`` and optionally ``labels, age, date, sex``;
relative paths are relative to the CSV's folder.

Sessions of a subject are ordered prior -> target: by age when every session has one, else
by date, else by session label (natural order).
"""

from __future__ import annotations

import csv
import functools
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainsynth_cli.errors import InputError


@dataclass(frozen=True)
class Session:
    """One scan of one subject."""

    subject: str  # BIDS label with prefix, e.g. "sub-001"
    session: str  # e.g. "ses-01"; "" for a dataset without a session level
    image: Path
    labels: Path | None = None
    age: float | None = None
    date: str | None = None
    sex: str | None = None

    @property
    def key(self) -> str:
        return f"{self.subject}_{self.session}" if self.session else self.subject


@dataclass
class Dataset:
    root: Path
    kind: str  # "bids" or "csv"
    sessions: list[Session] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # choices a user should hear about (runs taken)

    def subjects(self) -> dict[str, list[Session]]:
        """Sessions per subject, ordered prior -> target."""
        out: dict[str, list[Session]] = {}
        for s in self.sessions:
            out.setdefault(s.subject, []).append(s)
        return {k: order_sessions(v) for k, v in sorted(out.items(), key=lambda kv: _natural(kv[0]))}


def _natural(text: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]


def order_sessions(sessions: list[Session]) -> list[Session]:
    if all(s.age is not None for s in sessions):
        return sorted(sessions, key=lambda s: (s.age, _natural(s.session)))
    if all(s.date for s in sessions):
        return sorted(sessions, key=lambda s: (s.date, _natural(s.session)))
    return sorted(sessions, key=lambda s: _natural(s.session))


def _read_tsv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh, delimiter="\t"))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"is not a readable TSV file ({type(exc).__name__})", "save it as UTF-8, tab-separated") from None


def _float(value: str | None) -> float | None:
    if value is None or value.strip() in ("", "n/a", "NA", "nan"):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _prefixed(value: str, prefix: str) -> str:
    value = value.strip()
    return value if value.startswith(prefix) else f"{prefix}{value}"


_LABEL = re.compile(r"[A-Za-z0-9]+")


def bids_entity(value: str, prefix: str, where: Path, context: str = "") -> str:
    """``value`` as a BIDS entity (``sub-LABEL``, ``ses-LABEL``), refusing a label that is not
    letters and digits only (the BIDS specification): ids become folder and file names, so
    ``sub-x/../../tmp`` must never reach a path."""
    entity = _prefixed(str(value), prefix)
    label = entity[len(prefix):]
    if not _LABEL.fullmatch(label):
        kind = {"sub-": "subject", "ses-": "session"}.get(prefix, "entity")
        shown = entity if len(entity) <= 60 else entity[:57] + "..."
        raise InputError(where, f"{context}{kind} id {shown!r} is not a BIDS label (letters and digits only)",
                         f"rename it, e.g. {prefix}{re.sub(r'[^A-Za-z0-9]', '', label)[:20] or '01'}")
    return entity


def find_labels(labels_dir: Path, subject: str, session: str, run: str | None = None) -> Path | None:
    """The ``*_dseg.nii[.gz]`` of a session in a derivatives folder, if there is exactly one
    (``session == ""``: ``sub-X/anat/sub-X*_dseg.nii[.gz]``); of several, the one of ``run``
    (a label) when exactly one carries ``_run-<run>_``."""
    folder = labels_dir / subject / session / "anat" if session else labels_dir / subject / "anat"
    stem = f"{subject}_{session}" if session else subject
    hits = sorted(p for p in folder.glob(f"{stem}*_dseg.nii*") if p.name.endswith((".nii", ".nii.gz")))
    if not session:  # sub-X*_dseg also matches sub-X_ses-Y_..._dseg: not this level's
        hits = [p for p in hits if "_ses-" not in p.name]
    if len(hits) > 1 and run is not None:
        of_run = [p for p in hits if f"_run-{run}_" in p.name]
        hits = of_run if len(of_run) == 1 else hits
    if len(hits) > 1:
        raise InputError(folder, f"holds {len(hits)} label maps for {stem.replace('_', ' ')}", "keep one *_dseg.nii.gz per session")
    return hits[0] if hits else None


def _volume(value: object) -> float | None:
    """A recorded volume: a number, or None for a structure recorded as not labelled
    (``null`` in JSON, ``n/a`` in TSV)."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(float(value)) else None
    return _float(str(value))


def recorded_volumes(labels: Path, subject: str, session: str, rules: Any = None) -> tuple[dict[str, float | None], str | None] | None:
    """Structure group volumes (mm^3) that a derivatives folder records for the label map
    ``labels`` of one session, and the segmenter that made it (when said): from the sidecar
    beside it (``*_dseg.json``, ``structures_mm3``), an older ``*_volumes.json`` beside it, or
    the subject's ``sub-X_sessions.tsv`` (``participants.tsv`` without a session level) with
    ``<group>_mm3`` columns. A group recorded as null / n/a is one the segmenter does not label
    (None). With ``rules`` and a sidecar that records volumes per label (``labels_mm3``), each
    rules group is summed from those (so groups defined by ``--rules`` are measured as the rules
    say), and a group none of whose ids the segmenter produces (``labels_produced``) is None.
    Returns None when nothing is recorded."""
    import json

    name = labels.name
    stem = name.removesuffix(".gz").removesuffix(".nii")
    sidecars = [labels.with_name(stem + ".json")]
    if stem.endswith("_dseg"):
        sidecars.append(labels.with_name(stem.removesuffix("_dseg") + "_volumes.json"))
    for path in sidecars:
        if not path.is_file():
            continue
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        table = doc.get("structures_mm3") if isinstance(doc, dict) else None
        if isinstance(table, dict):
            seg = doc.get("segmenter")
            vols = {str(k): _volume(v) for k, v in table.items()}
            per_label, produced = doc.get("labels_mm3"), doc.get("labels_produced")
            if rules is not None and isinstance(per_label, dict):
                have = {int(i) for i in produced} if isinstance(produced, list) else None
                for g in rules.structures:
                    if have is not None and not have & set(g.labels):
                        vols[g.name] = None
                    else:
                        vols[g.name] = float(sum(_volume(per_label.get(str(i))) or 0.0 for i in g.labels))
            return vols, (str(seg) if seg else None)
    # the subject's table in the derivatives folder: walk up from the label map to sub-X/
    folder = next((d for d in labels.parents if d.name == subject), None)
    if folder is None:
        return None
    if session:
        rows = [r for r in _read_tsv(folder / f"{subject}_sessions.tsv") if _prefixed(r.get("session_id", ""), "ses-") == session]
    else:
        rows = [r for r in _read_tsv(folder.parent / "participants.tsv") if _prefixed(r.get("participant_id", ""), "sub-") == subject]
    if not rows:
        return None
    vols = {k[: -len("_mm3")]: _volume(v) for k, v in rows[0].items() if k and k.endswith("_mm3")}
    if not vols:
        return None
    seg = None
    try:
        gen = json.loads((folder.parent / "dataset_description.json").read_text(encoding="utf-8")).get("GeneratedBy") or [{}]
        seg = gen[0].get("Segmenter") if isinstance(gen[0], dict) else None
    except (OSError, ValueError, AttributeError):
        pass
    return vols, (str(seg) if seg else None)


def read_bidsignore(root: Path) -> list[str]:
    """Patterns of ``DATASET/.bidsignore`` (gitignore style; blank lines and ``#`` comments skipped)."""
    path = root / ".bidsignore"
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def ignored(rel: str, patterns: list[str]) -> bool:
    """Whether ``rel`` (a path relative to the dataset, ``/``-separated; a file or a folder)
    matches the ``.bidsignore`` patterns, with git's rules (pathspec's GitIgnoreSpec: ``/x``
    anchored at the root, ``x/`` a folder, ``*``, ``**``, ``!`` negation)."""
    if not patterns:
        return False
    spec = _bidsignore_spec(tuple(patterns))
    rel = rel.strip("/")
    return spec.match_file(rel) or spec.match_file(rel + "/")


@functools.lru_cache(maxsize=8)
def _bidsignore_spec(patterns: tuple[str, ...]) -> Any:
    import pathspec

    return pathspec.GitIgnoreSpec.from_lines(patterns)


_RUN = re.compile(r"_run-([A-Za-z0-9]+)(?=_)")


def pick_run(images: list[Path], where: Path, run: str | None, notes: list[str]) -> Path:
    """One T1w of a session: the only one, or among runs of the same acquisition (names equal
    but for ``_run-N``) the one ``run`` names, else the last run (natural order)."""
    if len(images) == 1 and run is None:
        return images[0]
    runs = {}
    for p in images:
        m = _RUN.search(p.name)
        runs[(m.group(1) if m else None, _RUN.sub("", p.name))] = p
    rest = {k[1] for k in runs}
    if len(images) > 1 and (len(rest) > 1 or any(k[0] is None for k in runs)):
        names = ", ".join(p.name for p in images[:3]) + (" ..." if len(images) > 3 else "")
        raise InputError(where, f"holds {len(images)} T1w images that are not runs of one acquisition ({names})",
                         "keep one T1w per session, or list the scans in a CSV manifest")
    by_run = {k[0]: p for k, p in runs.items() if k[0] is not None}
    if run is not None:
        label = run.removeprefix("run-")
        if label not in by_run:
            if not by_run and len(images) == 1:
                return images[0]  # a session with one scan and no run entity
            raise InputError(where, f"has no run-{label} T1w (runs: {', '.join('run-' + r for r in sorted(by_run, key=_natural)) or 'none'})",
                             "give a run every session has, or leave --run out to take the last run")
        return by_run[label]
    last = max(by_run, key=_natural)
    notes.append(f"{where}: {len(by_run)} T1w runs, took run-{last}")
    return by_run[last]


def run_label(image: Path) -> str | None:
    """The ``run-`` label of a BIDS file name, or None."""
    m = _RUN.search(image.name)
    return m.group(1) if m else None


def runs_note(ds: Dataset) -> str | None:
    """The line a command prints when sessions had several T1w runs (which was taken), or None."""
    if not ds.notes:
        return None
    more = f" (and {len(ds.notes) - 1} more session(s) like it)" if len(ds.notes) > 1 else ""
    return f"{ds.notes[0]}{more}; --run LABEL takes another"


def _t1w_images(folder: Path, stem: str, root: Path, patterns: list[str]) -> list[Path]:
    hits = sorted(p for p in folder.glob(f"{stem}_*T1w.nii*") if p.name.endswith(("_T1w.nii", "_T1w.nii.gz")))
    if stem.count("_") == 0:  # sub-X/anat: sub-X*_T1w without a session entity
        hits = [p for p in hits if "_ses-" not in p.name]
    return [p for p in hits if not ignored(p.relative_to(root).as_posix(), patterns)]


def read_bids(root: Path, labels_dir: Path | None = None, run: str | None = None) -> Dataset:
    participants = {_prefixed(r.get("participant_id", ""), "sub-"): r for r in _read_tsv(root / "participants.tsv")}
    ds = Dataset(root=root, kind="bids")
    patterns = read_bidsignore(root)
    for sub_dir in sorted(root.glob("sub-*")):
        if not sub_dir.is_dir() or ignored(sub_dir.name, patterns):
            continue
        subject = bids_entity(sub_dir.name, "sub-", sub_dir)
        info = {(_prefixed(r.get("session_id", ""), "ses-")): r for r in _read_tsv(sub_dir / f"{subject}_sessions.tsv")}
        participant = participants.get(subject) or {}
        sex = participant.get("sex") or None
        ses_dirs = [d for d in sorted(sub_dir.glob("ses-*")) if d.is_dir() and not ignored(d.relative_to(root).as_posix(), patterns)]
        if not ses_dirs:  # no session level: one session, named "" (no ses- entity in outputs)
            images = _t1w_images(sub_dir / "anat", subject, root, patterns)
            if images:
                image = pick_run(images, sub_dir / "anat", run, ds.notes)
                ds.sessions.append(Session(
                    subject=subject, session="", image=image,
                    labels=find_labels(labels_dir, subject, "", run_label(image)) if labels_dir else None,
                    age=_float(participant.get("age")), sex=sex,
                ))
            continue
        for ses_dir in ses_dirs:
            session = bids_entity(ses_dir.name, "ses-", ses_dir)
            images = _t1w_images(ses_dir / "anat", f"{subject}_{session}", root, patterns)
            if not images:
                continue
            row = info.get(session, {})
            image = pick_run(images, ses_dir / "anat", run, ds.notes)
            ds.sessions.append(Session(
                subject=subject, session=session, image=image,
                labels=find_labels(labels_dir, subject, session, run_label(image)) if labels_dir else None,
                age=_float(row.get("age")), date=(row.get("acq_time") or None), sex=sex,
            ))
    return ds


def read_manifest(path: Path, labels_dir: Path | None = None) -> Dataset:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"subject", "session", "image"} - set(reader.fieldnames or [])
            if missing:
                raise InputError(path, f"manifest lacks column(s) {', '.join(sorted(missing))}", "columns: subject, session, image[, labels, age, date, sex]")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"is not a readable CSV manifest ({type(exc).__name__})", "save it as UTF-8 CSV with columns subject, session, image") from None
    ds = Dataset(root=path.parent, kind="csv")
    seen: set[tuple[str, str]] = set()
    for i, row in enumerate(rows, start=2):
        subject = bids_entity(row["subject"] or "", "sub-", path, f"line {i}: ")
        session = bids_entity(row["session"] or "", "ses-", path, f"line {i}: ")
        if (subject, session) in seen:
            raise InputError(path, f"line {i}: {subject} {session} appears twice", "one row per session")
        seen.add((subject, session))
        if not (row.get("image") or "").strip():
            raise InputError(path, f"line {i}: {subject} {session} has no image", "give the image path of every session")
        image = Path(row["image"].strip())
        image = image if image.is_absolute() else path.parent / image
        labels = (row.get("labels") or "").strip()
        lab = (Path(labels) if Path(labels).is_absolute() else path.parent / labels) if labels else None
        if lab is None and labels_dir is not None:
            lab = find_labels(labels_dir, subject, session)
        ds.sessions.append(Session(subject=subject, session=session, image=image, labels=lab,
                                   age=_float(row.get("age")), date=(row.get("date") or None), sex=(row.get("sex") or None)))
    return ds


def read_dataset(path: str | os.PathLike[str], labels_dir: str | os.PathLike[str] | None = None,
                 run: str | None = None) -> Dataset:
    """Read a BIDS tree (a folder) or a CSV manifest (a .csv file); refuse an empty one.
    ``run``: which run to take where a session has several T1w runs (default: the last)."""
    p = Path(path)
    lab = Path(labels_dir) if labels_dir is not None else None
    if lab is not None and not lab.is_dir():
        raise InputError(lab, "labels folder not found", "give the derivatives folder that holds sub-*/ses-*/anat/*_dseg.nii.gz")
    if p.is_dir():
        ds = read_bids(p, lab, run)
        if not ds.sessions:
            raise InputError(p, "holds no sub-*/ses-*/anat/*_T1w.nii[.gz] (or sub-*/anat/*_T1w.nii[.gz]) images",
                             "point at a BIDS dataset or a CSV manifest")
    elif p.is_file() and p.suffix.lower() == ".csv":
        ds = read_manifest(p, lab)
        if not ds.sessions:
            raise InputError(p, "manifest has no rows", "add one row per session")
    elif p.exists():
        raise InputError(p, "is neither a BIDS folder nor a .csv manifest", "give a dataset folder or a CSV file")
    else:
        raise InputError(p, "dataset not found", "check the path")
    return ds
