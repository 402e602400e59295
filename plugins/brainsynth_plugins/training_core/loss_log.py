"""The loss log ``MODEL/logs/loss.csv``: one row per step, trimmed back to a checkpoint on resume."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from brainsynth_plugins.training_core.checkpoints import STAGES


def append_log(path: Path, fields: tuple[str, ...], row: dict[str, Any]) -> None:
    """Append one row to a CSV loss log (header on first write; floats to 6 significant digits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with open(path, "a", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerow({k: (f"{row[k]:.6g}" if isinstance(row.get(k), float) else row.get(k, "")) for k in fields})


def trim_log(path: Path, fields: tuple[str, ...], stage: str, step: int) -> None:
    """Drop log rows a killed run wrote after the checkpoint (``stage``, ``step``) we resume from."""
    if not path.exists():
        return
    order = STAGES.index(stage)
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if STAGES.index(r["stage"]) < order or (r["stage"] == stage and int(r["step"]) <= step)]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
