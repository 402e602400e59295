"""``--participant-label``: the subjects one cluster job works on (the BIDS-App convention).

Labels come with or without the ``sub-`` prefix, several per option (separated by commas or
spaces) or the option repeated. A label the dataset does not have is a one-line error naming the
dataset and listing the participants it has, before anything is written. Jobs that work on
different participants share an output folder: each holds one lock per participant
(:func:`participant_slots`), so two jobs never work on the same subject at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from brainsynth_cli.errors import InputError, UserError

_LABEL = re.compile(r"[A-Za-z0-9]+")

#: Participants listed by the error for an unknown label (then "... (N in all)").
LISTED = 12


def participant_labels(values: Sequence[str]) -> tuple[str, ...]:
    """``["01", "sub-02,03"]`` -> ``("sub-01", "sub-02", "sub-03")`` (given order, each once);
    a label that is not letters and digits is a one-line error."""
    out: list[str] = []
    for value in values:
        for item in re.split(r"[\s,]+", value.strip()):
            if not item:
                continue
            label = item.removeprefix("sub-")
            if not _LABEL.fullmatch(label):
                raise UserError(f"--participant-label {item!r} is not a participant label: give letters and digits, "
                                "with or without sub- (e.g. --participant-label 01)")
            if f"sub-{label}" not in out:
                out.append(f"sub-{label}")
    if values and not out:
        raise UserError("--participant-label names no participant; give a label such as --participant-label 01")
    return tuple(out)


def select_participants(dataset: Path, subjects: Iterable[str], labels: Sequence[str]) -> list[str]:
    """The subjects of ``subjects`` (the dataset's, in its order) that ``labels`` name; a label
    the dataset lacks is an error naming ``dataset`` and listing what it has."""
    have = list(subjects)
    unknown = [x for x in labels if x not in have]
    if unknown:
        listed = ", ".join(have[:LISTED]) + (f", ... ({len(have)} in all)" if len(have) > LISTED else "")
        what = "participant" if len(unknown) == 1 else "participants"
        raise InputError(dataset, f"has no {what} {', '.join(unknown)} (it has {listed or 'none'})",
                         "give --participant-label labels from this list, with or without the sub- prefix")
    wanted = set(labels)
    return [s for s in have if s in wanted]


def participant_slots(subjects: Iterable[str]) -> list[str]:
    """The lock slots of a participant job (see :class:`brainsynth_cli.outputs.FolderLock`)."""
    return [f"participant-{s}" for s in subjects]


def shown(subjects: Sequence[str], most: int = 3) -> str:
    """``sub-01 sub-02 sub-03 (+2 more)``: participants in a log line or a lock's command."""
    more = f" (+{len(subjects) - most} more)" if len(subjects) > most else ""
    return " ".join(subjects[:most]) + more
