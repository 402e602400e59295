"""``brainsynth segment --bids`` on a cluster: what participant jobs share and the group step.

Participant jobs (``--participant-label``) write only their subjects' files; the one file every
job needs before it starts, ``dataset_description.json`` (it holds the settings of the folder),
is written by the first job and never rewritten by another (:func:`claim_description`): a job
with other settings is refused. The group step (``--merge``) segments nothing: once every
session is finished it writes the files that span subjects (``dataset_description.json``,
``README.md``, ``.bidsignore``, ``volumes.tsv``, ``sessions.json``, ``participants.tsv`` and
``participants.json``) and the subjects' sessions tables, exactly as one run writes them, so the
folder holds the same bytes as after one run; running it again changes nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from brainsynth_cli.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from brainsynth_cli.structures import Rules

#: The fix a participant job is given when the folder was made with other settings.
PARTICIPANT_FIX = "participant jobs take the folder's settings: give the same ones, or another output folder"


def segment_participants(out_dir: Path, subjects: dict[str, list[Any]], description: dict[str, Any], segmenter: str,
                         options: dict[str, str], *, jobs: int, longitudinal: bool, rules: Rules, overwrite: bool,
                         raw_root: str | None) -> None:
    """A participant job: segment ``subjects`` (the participants it names) into ``out_dir``,
    which other jobs share, writing only their files."""
    from brainsynth_cli.commands.segment import _finished, _segment_sessions, session_paths
    from brainsynth_cli.outputs import locked_output, on_interrupt
    from brainsynth_cli.participants import participant_slots, shown

    def finished_any() -> bool:
        return any(_finished(session_paths(out_dir, sub, s.session)) for sub, ses in subjects.items() for s in ses)

    chosen = list(subjects)
    with locked_output(out_dir, command=f"segment --bids --participant-label {shown(chosen)}", keep=finished_any,
                       shared=True, slot=participant_slots(chosen)):
        claim_description(out_dir, description)
        on_interrupt(lambda: f"the finished sessions of {shown(chosen)} in {out_dir} are kept; run the same command "
                     "again to resume" if finished_any() else "no session was finished; run the command again")
        _segment_sessions(out_dir, subjects, description, segmenter, options, jobs=jobs, longitudinal=longitudinal,
                          rules=rules, overwrite=overwrite, raw_root=raw_root, group=False)


def claim_description(out_dir: Path, description: dict[str, Any]) -> None:
    """Write ``dataset_description.json`` unless it exists (the first participant job does);
    otherwise refuse settings other than those it records."""
    from brainsynth_cli.commands.segment import _check_description
    from brainsynth_cli.images import write_text_once

    if not write_text_once(out_dir / "dataset_description.json", json.dumps(description, indent=2) + "\n"):
        _check_description(out_dir, description, overwrite=False, fix=PARTICIPANT_FIX)


def unfinished(out_dir: Path, subjects: dict[str, list[Any]]) -> list[str]:
    """``sub-X ses-Y`` of every session of ``subjects`` that is not finished in ``out_dir``."""
    from brainsynth_cli.commands.segment import _finished, session_paths

    return [f"{sub} {s.session}".strip() for sub, ses in subjects.items() for s in ses
            if not _finished(session_paths(out_dir, sub, s.session))]


def merge_derivatives(out_dir: Path, subjects: dict[str, list[Any]], description: dict[str, Any], rules: Rules,
                      segmenter: str) -> None:
    """The group step: the files that span subjects, from the finished sessions of every
    participant; refused (nothing written) while a session is missing."""
    from brainsynth_cli.commands.segment import _check_description, _write_table, _write_top_files
    from brainsynth_cli.images import atomic_write_text
    from brainsynth_cli.outputs import locked_output

    with locked_output(out_dir, command="segment --bids --merge"):
        _check_description(out_dir, description, overwrite=False, fix="give --merge the settings the participants were segmented with")
        missing = unfinished(out_dir, subjects)
        if missing:
            total = sum(len(v) for v in subjects.values())
            first = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise UserError(f"{out_dir}: {len(missing)} of {total} sessions are not segmented yet ({first}); "
                            "segment their participants (--participant-label) before --merge")
        atomic_write_text(out_dir / "dataset_description.json", json.dumps(description, indent=2) + "\n")
        _write_top_files(out_dir, rules, segmenter)
        _write_table(out_dir, subjects, rules)
    count = sum(len(v) for v in subjects.values())
    typer.echo(f"merged {count} session(s) of {len(subjects)} subject(s) into {out_dir}")
