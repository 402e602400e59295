"""The picture of edits: prior, edit, (target,) and their differences, one row per edit.

Drawn with matplotlib: every difference map of a figure shares one fixed, symmetric colour scale
(blue darker, red brighter) shown by a colour bar, each row carries its full prompt as title, and
the outline of the structures the prompt names is drawn on the images. Slices are shown as
stored: brainsynth stores and shows axial slices in radiological orientation (anterior up, the
patient's right on the left), marked with R and L.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from brainsynth_cli.images.atomic import atomic_output

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


@dataclass
class EditRow:
    """One edit: the prompt as ``title``, [0, 1] images in display orientation, and optionally the
    target and a boolean ``outline`` mask of the named structures (on the prior)."""

    title: str
    prior: "np.ndarray"
    edited: "np.ndarray"
    target: "np.ndarray | None" = None
    outline: "np.ndarray | None" = None
    note: str = ""


def difference_limit(rows: Sequence[EditRow], floor: float = 0.02) -> float:
    """One symmetric colour limit for all difference maps: the 99.5th percentile of |change| over
    the figure's edits and targets (at least ``floor``)."""
    import numpy as np

    values = []
    for r in rows:
        values.append(np.abs(np.asarray(r.edited, np.float32) - np.asarray(r.prior, np.float32)).ravel())
        if r.target is not None:
            values.append(np.abs(np.asarray(r.target, np.float32) - np.asarray(r.prior, np.float32)).ravel())
    allv = np.concatenate(values) if values else np.zeros(1)
    return max(float(np.percentile(allv, 99.5)), floor)


def edit_montage(path: str | Path, rows: Sequence[EditRow], *, title: str = "", radiological: bool = True,
                 limit: float | None = None) -> Path:
    """Write the montage PNG of ``rows`` (atomic); returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not rows:
        raise ValueError("edit_montage needs at least one row")
    with_target = any(r.target is not None for r in rows)
    columns = ["prior", "edit", "target", "edit − prior", "target − prior"] if with_target else ["before", "after", "after − before"]
    lim = limit if limit is not None else difference_limit(rows)
    ncol = len(columns)
    h, w = np.asarray(rows[0].prior).shape
    tile = 1.9
    fig = plt.figure(figsize=(ncol * tile * w / max(h, w) + 0.9, len(rows) * (tile + 0.22) + (0.5 if title else 0.15)), dpi=110)
    grid = fig.add_gridspec(len(rows), ncol + 1, width_ratios=[1] * ncol + [0.07], wspace=0.04, hspace=0.13,
                            left=0.01, right=0.93, top=1 - (0.42 if title else 0.12) / fig.get_figheight(), bottom=0.02)
    image_map = None
    for i, r in enumerate(rows):
        prior = np.asarray(r.prior, np.float32)
        panels = [("grey", prior), ("grey", np.asarray(r.edited, np.float32))]
        if with_target:
            tgt = np.asarray(r.target, np.float32) if r.target is not None else None
            panels.append(("grey", tgt))
        panels.append(("diff", np.asarray(r.edited, np.float32) - prior))
        if with_target:
            panels.append(("diff", (np.asarray(r.target, np.float32) - prior) if r.target is not None else None))
        for j, (kind, data) in enumerate(panels):
            ax = fig.add_subplot(grid[i, j])
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            if i == 0:
                ax.set_title(columns[j], fontsize=8, pad=3)
            if data is None:
                ax.set_facecolor("black")
                continue
            if kind == "grey":
                ax.imshow(np.clip(data, 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                image_map = ax.imshow(data, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
            if r.outline is not None and np.any(r.outline):
                ax.contour(np.asarray(r.outline, dtype=float), levels=[0.5], colors=["#ffd400"], linewidths=0.6)
            if radiological and j == 0:
                ax.text(0.02, 0.5, "R", color="w", fontsize=6, transform=ax.transAxes, va="center")
                ax.text(0.98, 0.5, "L", color="w", fontsize=6, transform=ax.transAxes, va="center", ha="right")
            if j == 0:
                text = r.title + (f"   ({r.note})" if r.note else "")
                ax.text(0.0, -0.03, text, fontsize=7.5, transform=ax.transAxes, ha="left", va="top", fontweight="bold",
                        clip_on=False)
    if image_map is not None:
        cax = fig.add_subplot(grid[:, ncol])
        bar = fig.colorbar(image_map, cax=cax)
        bar.set_label("intensity change (fraction of the slice's window)", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.08 / fig.get_figheight(), va="top")
    target = Path(path)
    with atomic_output(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return target
