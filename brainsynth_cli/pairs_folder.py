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
        """The file a ``*_file_name`` column names, or None when the row has none."""
        value = self.data.get(column)
        return self.root / value if value else None

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
        if info.get("format", "brainsynth-pairs") != "brainsynth-pairs":
            raise InputError(root / "pairs.json", f"has format {info.get('format')!r}", "expected brainsynth-pairs")
    rows: list[PairRow] = []
    for n, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(meta, f"line {n} is not JSON ({exc.msg})", "re-run make-pairs") from None
        missing = [k for k in REQUIRED if not row.get(k)]
        if missing:
            raise InputError(meta, f"line {n} lacks {', '.join(missing)}", "each row needs " + ", ".join(REQUIRED))
        prior, target = root / row["input_image_file_name"], root / row["edited_image_file_name"]
        for f in (prior, target):
            if not f.is_file():
                raise InputError(f, f"is listed on line {n} of metadata.jsonl but missing", "re-run make-pairs")
        rows.append(PairRow(n, root, prior, target, " ".join(str(row["edit_prompt"]).split()), str(row.get("split") or "train"), row))
    if not rows:
        raise InputError(meta, "has no rows", "re-run make-pairs on a dataset with at least one prior/target pair")
    return PairsFolder(root, info, rows)
