"""Reading the pairs folder that ``brainsynth make-pairs`` writes (the contract in docs/pairs-format.md).

``OUT/pairs.json`` describes the set; ``OUT/metadata.jsonl`` has one row per pair with
``input_image_file_name``, ``edited_image_file_name`` and ``edit_prompt`` (diffusers'
InstructPix2Pix columns once ``datasets`` loads the folder) plus brainsynth's own columns.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from brainsynth_cli.errors import InputError

REQUIRED = ("input_image_file_name", "edited_image_file_name", "edit_prompt")


@dataclass(frozen=True)
class PairRow:
    """One row of metadata.jsonl with its paths resolved."""

    number: int
    root: Path
    prior: Path
    target: Path
    prompt: str
    split: str
    data: dict[str, Any] = field(default_factory=dict, compare=False)

    def path(self, column: str) -> Path | None:
        """The file a ``*_file_name`` column names, or None when the row has none. A path that
        leaves the pairs folder is refused (one line)."""
        value = self.data.get(column)
        return inside_folder(self.root, value, self.number, column) if value else None

    @property
    def subject(self) -> str:
        return str(self.data.get("subject", ""))

    @property
    def kind(self) -> str:
        return str(self.data.get("kind", "real"))


@dataclass
class PairsFolder:
    root: Path
    info: dict[str, Any]
    rows: list[PairRow]

    def split(self, name: str) -> list[PairRow]:
        return [r for r in self.rows if r.split == name]

    @property
    def dim(self) -> str:
        return str(self.info.get("dim", "2d"))


def inside_folder(root: Path, value: Any, line: int, column: str) -> Path:
    """``root / value`` for a path column of metadata.jsonl, refusing one that is absolute, has
    ``..`` or leads (through a link) outside the pairs folder."""
    from pathlib import PurePosixPath, PureWindowsPath

    from brainsynth_cli.outputs import is_inside

    text = str(value)
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if (not isinstance(value, str) or text.startswith(("/", "\\")) or PureWindowsPath(text).drive or ".." in parts
            or not is_inside(root / text, root)):
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise InputError(root / "metadata.jsonl", f"line {line}: {column} {shown!r} leaves the pairs folder",
                         "image paths must be relative to the pairs folder and stay inside it (no '..', no absolute paths)")
    return root / text


def read_pairs_folder(root: str | os.PathLike[str]) -> PairsFolder:
    """Validate and read a pairs folder; every referenced image must exist. One-line errors."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "is not a folder", "give the pairs folder written by `brainsynth make-pairs`")
    meta = root / "metadata.jsonl"
    if not meta.is_file():
        raise InputError(root, "has no metadata.jsonl", "give the pairs folder written by `brainsynth make-pairs`")
    info: dict[str, Any] = {}
    if (root / "pairs.json").is_file():
        try:
            info = json.loads((root / "pairs.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(root / "pairs.json", f"is not valid JSON ({exc})", "re-run make-pairs") from None
        if not isinstance(info, dict):
            raise InputError(root / "pairs.json", "is not a JSON object", "re-run make-pairs")
        if info.get("format", "brainsynth-pairs") != "brainsynth-pairs":
            raise InputError(root / "pairs.json", f"has format {info.get('format')!r}", "expected brainsynth-pairs")
    rows: list[PairRow] = []
    try:
        text = meta.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(meta, "is not UTF-8 text", "re-run make-pairs") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(meta, f"line {n} is not JSON ({exc.msg})", "re-run make-pairs") from None
        if not isinstance(row, dict):
            raise InputError(meta, f"line {n} is not a JSON object", "re-run make-pairs")
        missing = [k for k in REQUIRED if not row.get(k)]
        if missing:
            raise InputError(meta, f"line {n} lacks {', '.join(missing)}", "each row needs " + ", ".join(REQUIRED))
        for column in row:
            if column.endswith("_file_name") and row[column]:
                inside_folder(root, row[column], n, column)
        prior = inside_folder(root, row["input_image_file_name"], n, "input_image_file_name")
        target = inside_folder(root, row["edited_image_file_name"], n, "edited_image_file_name")
        for f in (prior, target):
            if not f.is_file():
                raise InputError(f, f"is listed on line {n} of metadata.jsonl but missing", "re-run make-pairs")
        rows.append(PairRow(n, root, prior, target, " ".join(str(row["edit_prompt"]).split()), str(row.get("split") or "train"), row))
    if not rows:
        raise InputError(meta, "has no rows", "re-run make-pairs on a dataset with at least one prior/target pair")
    return PairsFolder(root, info, rows)
