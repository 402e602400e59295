"""The picture of edits: prior, edit, (target,) and their differences, one row per edit.

Drawn with the figures package (:mod:`brainsynth_cli.figures`: matplotlib on an Agg canvas, no
pyplot state): every difference map of a figure shares one fixed, symmetric colour scale (blue
darker, red brighter) shown by a colour bar, each row carries its full prompt as title, and the
outline of the structures the prompt names is drawn on the images. Slices are shown as stored:
brainsynth stores and shows axial slices in radiological orientation (anterior up, the
patient's right on the left), marked with R and L and stated under the picture.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from matplotlib.figure import Figure


@dataclass
class EditRow:
    """One edit: the prompt as ``title``, [0, 1] images in display orientation, and optionally the
    target and a boolean ``outline`` mask of the named structures (on the prior)."""

    title: str
    prior: np.ndarray
    edited: np.ndarray
    target: np.ndarray | None = None
    outline: np.ndarray | None = None
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


def edit_figure(rows: Sequence[EditRow], *, title: str = "", radiological: bool = True, limit: float | None = None) -> Figure:
    """The montage of ``rows``: columns prior, edit, target, edit − prior, target − prior (before,
    after, after − before without targets); a missing target is a black panel."""
    import numpy as np

    from brainsynth_cli.figures.grid import Panel, Row, grid_figure
    from brainsynth_cli.figures.orientation import NOTE

    if not rows:
        raise ValueError("edit_montage needs at least one row")
    with_target = any(r.target is not None for r in rows)
    columns = ["prior", "edit", "target", "edit − prior", "target − prior"] if with_target else ["before", "after", "after − before"]
    lim = limit if limit is not None else difference_limit(rows)
    figure_rows = []
    for r in rows:
        prior = np.asarray(r.prior, np.float32)
        edited = np.asarray(r.edited, np.float32)
        target = np.asarray(r.target, np.float32) if r.target is not None else None
        outline = r.outline if r.outline is not None and np.any(r.outline) else None
        panels = [Panel(prior, window=(0.0, 1.0), outline=outline), Panel(edited, window=(0.0, 1.0), outline=outline)]
        if with_target:
            panels.append(Panel(target, window=(0.0, 1.0), outline=outline))
        panels.append(Panel(edited - prior, kind="difference", outline=outline))
        if with_target:
            panels.append(Panel(target - prior if target is not None else None, kind="difference", outline=outline))
        figure_rows.append(Row(r.title + (f"   ({r.note})" if r.note else ""), panels))
    return grid_figure(figure_rows, columns=columns, title=title, limit=lim,
                       difference_label="intensity change (fraction of the slice's window)",
                       note=NOTE if radiological else "", mark="first" if radiological else "none")


def edit_montage(path: str | Path, rows: Sequence[EditRow], *, title: str = "", radiological: bool = True,
                 limit: float | None = None) -> Path:
    """Write the montage PNG of ``rows`` (atomic); returns the path."""
    from brainsynth_cli.figures.save import save_figure

    return save_figure(edit_figure(rows, title=title, radiological=radiological, limit=limit), path)
