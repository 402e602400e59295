"""Longitudinal datasets: a BIDS-style tree or a CSV manifest, as ordered sessions per subject.

BIDS layout read::

    DATASET/participants.tsv                         participant_id, age, sex (optional)
    DATASET/sub-X/sub-X_sessions.tsv                 session_id, age (or acq_time) (optional)
    DATASET/sub-X/ses-Y/anat/sub-X_ses-Y[_*]_T1w.nii[.gz]
    LABELS/sub-X/ses-Y/anat/sub-X_ses-Y[_*]_dseg.nii[.gz]   (a derivatives folder)

CSV manifest columns: ``subject, session, image`` and optionally ``labels, age, date, sex``;
relative paths are relative to the CSV's folder.

Sessions of a subject are ordered prior -> target: by age when every session has one, else
by date, else by session label (natural order).
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from brainsynth_cli.errors import InputError


@dataclass(frozen=True)
class Session:
    """One scan of one subject."""

    subject: str  # BIDS label with prefix, e.g. "sub-001"
    session: str  # e.g. "ses-01"
    image: Path
    labels: Path | None = None
    age: float | None = None
    date: str | None = None
    sex: str | None = None

    @property
    def key(self) -> str:
        return f"{self.subject}_{self.session}"


@dataclass
class Dataset:
    root: Path
    kind: str  # "bids" or "csv"
    sessions: list[Session] = field(default_factory=list)

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


def find_labels(labels_dir: Path, subject: str, session: str) -> Path | None:
    """The ``*_dseg.nii[.gz]`` of a session in a derivatives folder, if there is exactly one."""
    folder = labels_dir / subject / session / "anat"
    hits = sorted(p for p in folder.glob(f"{subject}_{session}*_dseg.nii*") if p.name.endswith((".nii", ".nii.gz")))
    if len(hits) > 1:
        raise InputError(folder, f"holds {len(hits)} label maps for {subject} {session}", "keep one *_dseg.nii.gz per session")
    return hits[0] if hits else None


def read_bids(root: Path, labels_dir: Path | None = None) -> Dataset:
    participants = {_prefixed(r.get("participant_id", ""), "sub-"): r for r in _read_tsv(root / "participants.tsv")}
    ds = Dataset(root=root, kind="bids")
    for sub_dir in sorted(root.glob("sub-*")):
        if not sub_dir.is_dir():
            continue
        subject = bids_entity(sub_dir.name, "sub-", sub_dir)
        info = {(_prefixed(r.get("session_id", ""), "ses-")): r for r in _read_tsv(sub_dir / f"{subject}_sessions.tsv")}
        sex = (participants.get(subject) or {}).get("sex") or None
        for ses_dir in sorted(sub_dir.glob("ses-*")):
            if not ses_dir.is_dir():
                continue
            session = bids_entity(ses_dir.name, "ses-", ses_dir)
            images = sorted(p for p in (ses_dir / "anat").glob(f"{subject}_{session}*_T1w.nii*") if p.name.endswith((".nii", ".nii.gz")))
            if not images:
                continue
            if len(images) > 1:
                raise InputError(ses_dir / "anat", f"holds {len(images)} T1w images", "keep one T1w per session (or use a CSV manifest)")
            row = info.get(session, {})
            ds.sessions.append(Session(
                subject=subject, session=session, image=images[0],
                labels=find_labels(labels_dir, subject, session) if labels_dir else None,
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


def read_dataset(path: str | os.PathLike[str], labels_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """Read a BIDS tree (a folder) or a CSV manifest (a .csv file); refuse an empty one."""
    p = Path(path)
    lab = Path(labels_dir) if labels_dir is not None else None
    if lab is not None and not lab.is_dir():
        raise InputError(lab, "labels folder not found", "give the derivatives folder that holds sub-*/ses-*/anat/*_dseg.nii.gz")
    if p.is_dir():
        ds = read_bids(p, lab)
        if not ds.sessions:
            raise InputError(p, "holds no sub-*/ses-*/anat/*_T1w.nii[.gz] images", "point at a BIDS dataset or a CSV manifest")
    elif p.is_file() and p.suffix.lower() == ".csv":
        ds = read_manifest(p, lab)
        if not ds.sessions:
            raise InputError(p, "manifest has no rows", "add one row per session")
    elif p.exists():
        raise InputError(p, "is neither a BIDS folder nor a .csv manifest", "give a dataset folder or a CSV file")
    else:
        raise InputError(p, "dataset not found", "check the path")
    return ds
