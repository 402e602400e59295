"""A titled grid of slice panels, drawn with matplotlib (Agg canvas, no pyplot state).

Each row carries its full title above it (wrapped, never cut), columns their titles at the top,
every difference panel of a figure shares one symmetric colour scale shown by a colour bar,
label outlines and coloured masks get a legend, and the orientation convention is stated at the
bottom (:mod:`brainsynth_cli.figures.orientation`).
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from brainsynth_cli.figures.colours import DIFFERENCE_MAP, GREY_MAP, NAMED_OUTLINE, label_colour_rgb
from brainsynth_cli.figures.orientation import NOTE, mark_sides

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from matplotlib.figure import Figure

#: Font sizes (points) of figure title, row titles, column and panel titles, notes and markers.
TITLE_PT, ROW_PT, COLUMN_PT, NOTE_PT = 10.0, 8.5, 8.0, 7.5
DPI = 110


@dataclass
class Panel:
    """One slice in display orientation.

    ``kind`` "grey": ``image`` shown with ``window`` (low, high; default: its 0.5th-99.5th
    percentile); "difference": a signed change on the figure's symmetric scale. ``labels``: an
    integer slice whose regions are outlined in their label colours; ``outline``: a boolean mask
    outlined in yellow (the structures a prompt names); ``masks``: (boolean mask, colour, name)
    painted over the image. ``aspect``: pixel height / width."""

    image: np.ndarray | None
    kind: str = "grey"
    window: tuple[float, float] | None = None
    title: str = ""
    labels: np.ndarray | None = None
    outline: np.ndarray | None = None
    masks: Sequence[tuple[np.ndarray, str, str]] = ()
    plane: str = "axial"
    aspect: float = 1.0
    dim: float = 1.0  # grey panels: brightness factor (< 1 to let painted masks stand out)


@dataclass
class Row:
    title: str
    panels: Sequence[Panel]


@dataclass
class Legend:
    """Legend entries: outlined labels (id -> name) and painted masks (name -> colour)."""

    labels: Mapping[int, str] = field(default_factory=dict)
    masks: Mapping[str, str] = field(default_factory=dict)
    named_outline: str = ""

    def __bool__(self) -> bool:
        return bool(self.labels or self.masks or self.named_outline)


def symmetric_limit(rows: Sequence[Row], floor: float = 0.02) -> float:
    """One colour limit for every difference panel: the 99.5th percentile of |change| (at least ``floor``)."""
    import numpy as np

    values = [np.abs(np.asarray(p.image, np.float32)).ravel() for r in rows for p in r.panels
              if p.kind == "difference" and p.image is not None]
    allv = np.concatenate(values) if values else np.zeros(1, np.float32)
    allv = allv[np.isfinite(allv)]
    return max(float(np.percentile(allv, 99.5)) if allv.size else 0.0, floor)


def _wrap(text: str, width_in: float, points: float) -> str:
    """Wrap at spaces to the width (never cut; joining the lines with spaces gives the text back)."""
    chars = max(12, int(width_in * 72 / (points * 0.56)))
    return "\n".join(textwrap.fill(line, chars, break_long_words=False, break_on_hyphens=False) for line in text.split("\n"))


def _lines(text: str) -> int:
    return text.count("\n") + 1 if text else 0


def grid_figure(rows: Sequence[Row], *, columns: Sequence[str] = (), title: str = "", limit: float | None = None,
                difference_label: str = "intensity change (fraction of the intensity window)", legend: Legend | None = None,
                note: str = NOTE, tile_in: float = 2.0, mark: str = "first") -> Figure:
    """The figure of ``rows`` (each a title and panels). ``mark``: side letters on the "first"
    panel of each row, on "all" panels (with top and bottom letters), or "none"."""
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    if not rows or not any(r.panels for r in rows):
        raise ValueError("a figure needs at least one panel")
    ncol = max(len(r.panels) for r in rows)
    has_diff = any(p.kind == "difference" and p.image is not None for r in rows for p in r.panels)
    lim = (limit if limit is not None else symmetric_limit(rows)) if has_diff else 0.0
    pad, gap, bar_w = 0.12, 0.06, (1.05 if has_diff else 0.0)
    grid_w = ncol * tile_in + (ncol - 1) * gap
    width = pad + grid_w + bar_w + pad
    line = lambda pt: pt * 1.35 / 72
    title_txt = _wrap(title, width - 2 * pad, TITLE_PT) if title else ""
    col_txt = [_wrap(c, tile_in, COLUMN_PT) for c in columns]
    col_h = max((_lines(c) for c in col_txt), default=0) * line(COLUMN_PT)
    row_txt = [_wrap(r.title, grid_w, ROW_PT) if r.title else "" for r in rows]
    panel_h = [max((_lines(_wrap(p.title, tile_in, COLUMN_PT)) for p in r.panels), default=0) * line(COLUMN_PT) for r in rows]
    entries: list[Any] = []
    if legend:
        from matplotlib import patheffects

        edge = [patheffects.withStroke(linewidth=3.5, foreground="black")]  # white labels stay visible
        entries += [Line2D([], [], color=label_colour_rgb(i), lw=2, label=f"{name} ({i})", path_effects=edge)
                    for i, name in legend.labels.items()]
        entries += [Patch(color=c, label=name) for name, c in legend.masks.items()]
        if legend.named_outline:
            entries.append(Line2D([], [], color=NAMED_OUTLINE, lw=2, label=legend.named_outline))
    legend_cols = max(1, int(width // 2.1))
    legend_h = (-(-len(entries) // legend_cols) * line(NOTE_PT) * 1.15 + 0.1) if entries else 0.0
    note_txt = _wrap(note, width - 2 * pad, NOTE_PT) if note else ""
    heights = [_lines(t) * line(ROW_PT) + ph + tile_in + gap for t, ph in zip(row_txt, panel_h)]
    top_h = pad + (_lines(title_txt) * line(TITLE_PT) + 0.05 if title_txt else 0.0) + col_h
    bottom_h = legend_h + _lines(note_txt) * line(NOTE_PT) + pad
    height = top_h + sum(heights) + bottom_h
    fig = Figure(figsize=(width, height), dpi=DPI, facecolor="white")
    to_y = lambda inches: 1 - inches / height
    if title_txt:
        fig.text(pad / width, to_y(pad), title_txt, fontsize=TITLE_PT, fontweight="bold", ha="left", va="top")
    for j, c in enumerate(col_txt):
        x = (pad + j * (tile_in + gap) + tile_in / 2) / width
        fig.text(x, to_y(top_h), c, fontsize=COLUMN_PT, ha="center", va="bottom")
    y = top_h
    image_map = None
    first_axes, last_axes = None, None
    for r, rt, ph, h in zip(rows, row_txt, panel_h, heights):
        if rt:
            fig.text(pad / width, to_y(y + 0.02), rt, fontsize=ROW_PT, fontweight="bold", ha="left", va="top")
        y_img = y + _lines(rt) * line(ROW_PT) + ph
        for j, p in enumerate(r.panels):
            ax = fig.add_axes(((pad + j * (tile_in + gap)) / width, to_y(y_img + tile_in), tile_in / width, tile_in / height))
            ax.set_xticks([])
            ax.set_yticks([])
            for side in ax.spines.values():
                side.set_visible(False)
            first_axes = first_axes or ax
            last_axes = ax
            if p.title:
                ax.set_title(_wrap(p.title, tile_in, COLUMN_PT), fontsize=COLUMN_PT, pad=2)
            if p.image is None:
                ax.set_facecolor("black")
                continue
            data = np.asarray(p.image, np.float32)
            if p.kind == "difference":
                image_map = ax.imshow(data, cmap=DIFFERENCE_MAP, vmin=-lim, vmax=lim, interpolation="nearest", aspect=p.aspect)
            else:
                low, high = p.window if p.window is not None else _window(data)
                shown = np.clip((data - low) / (high - low if high > low else 1.0), 0, 1) * p.dim
                ax.imshow(shown, cmap=GREY_MAP, vmin=0, vmax=1, interpolation="nearest", aspect=p.aspect)
            for mask, colour, _name in p.masks:
                m = np.asarray(mask, bool)
                if m.any():
                    from matplotlib.colors import to_rgba

                    rgba = np.zeros(m.shape + (4,), np.float32)
                    rgba[m] = to_rgba(colour)
                    ax.imshow(rgba, interpolation="nearest", aspect=p.aspect)
            if p.labels is not None:
                _outline_labels(ax, np.asarray(p.labels))
            if p.outline is not None and np.any(p.outline):
                ax.contour(np.asarray(p.outline, float), levels=[0.5], colors=[NAMED_OUTLINE], linewidths=0.8)
            if mark == "all" or (mark == "first" and j == 0):
                mark_sides(ax, p.plane, all_four=mark == "all")
        y += h
    if image_map is not None and first_axes is not None and last_axes is not None:
        y0 = last_axes.get_position().y0
        y1 = first_axes.get_position().y1
        cax = fig.add_axes(((pad + grid_w + 0.12) / width, y0, 0.14 / width, y1 - y0), label="colour bar")
        bar = fig.colorbar(image_map, cax=cax)
        bar.set_label(difference_label + " (blue darker, red brighter)", fontsize=NOTE_PT)
        bar.ax.tick_params(labelsize=NOTE_PT)
    if entries:
        fig.legend(handles=entries, loc="upper left", bbox_to_anchor=(pad / width, to_y(top_h + sum(heights))), ncol=legend_cols,
                   fontsize=NOTE_PT, frameon=False, handlelength=1.4, columnspacing=1.0, borderaxespad=0.0)
    if note_txt:
        fig.text(pad / width, pad / height, note_txt, fontsize=NOTE_PT, ha="left", va="bottom", style="italic")
    return fig


def _window(data: np.ndarray) -> tuple[float, float]:
    import numpy as np

    finite = data[np.isfinite(data)]
    if not finite.size:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    return low, high


def _outline_labels(ax: Any, labels: np.ndarray) -> None:
    """Each label region's boundary in its colour (contours between pixel centres)."""
    import numpy as np

    for value in np.unique(labels):
        if value == 0:
            continue
        ax.contour((labels == value).astype(np.float32), levels=[0.5], colors=[label_colour_rgb(int(value))], linewidths=0.7)
