"""Reading a pairs folder (the make-pairs contract, docs/pairs-format.md) for training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brainsynth_cli.errors import InputError
from brainsynth_cli.pairs_folder import PairsFolder, read_pairs_folder

__all__ = ["PairsFolder", "load_slice", "read_pairs", "trained_intervals", "trained_prompts"]


def read_pairs(root: str | Path) -> PairsFolder:
    """The kernel's pairs-folder reader plus what this generator needs: 2D PNG slices and training rows."""
    folder = read_pairs_folder(root)
    if folder.dim != "2d":
        raise InputError(folder.root, f"holds {folder.dim} pairs", "train it with --dim 3d, or run make-pairs with 2D output")
    for row in folder.rows:
        for f in (row.prior, row.target):
            if f.suffix.lower() != ".png":
                raise InputError(f, "is not a PNG slice", "instruct-pix2pix trains on 16-bit PNG slices")
    if not folder.split("train"):
        raise InputError(folder.root / "metadata.jsonl", "has no rows with split \"train\"",
                         "re-run make-pairs with a split that leaves training subjects")
    return folder


def trained_prompts(folder: PairsFolder, rows: list[Any] | None = None) -> list[str]:
    """The prompts of the training split (or of the training ``rows`` the model learned from): what
    a model trained on ``folder`` has seen."""
    return sorted({r.prompt for r in (folder.split("train") if rows is None else rows)})


def trained_intervals(folder: PairsFolder, rows: list[Any] | None = None) -> dict[str, list[str]]:
    """Per structure group, the intervals the training split's rows (or ``rows``) request (their ``intervals`` column)."""
    seen: dict[str, set[str]] = {}
    for r in folder.split("train") if rows is None else rows:
        for structure, interval in (r.data.get("intervals") or {}).items():
            if interval:
                seen.setdefault(str(structure), set()).add(str(interval))
    return {k: sorted(v) for k, v in sorted(seen.items())}


def load_slice(path: Path, resolution: int) -> Any:
    """A PNG slice as float32 [0, 1] at ``resolution`` x ``resolution`` (padded and resized if needed)."""
    import numpy as np

    from brainsynth_cli.slices import read_slice, to_square

    x = read_slice(path)
    if x.shape != (resolution, resolution):
        x = np.clip(to_square(x, resolution), 0, 1)
    return x
