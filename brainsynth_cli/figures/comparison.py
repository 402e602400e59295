"""Two images side by side per row, and optionally their difference: validation pictures of the
trainers (input | reconstruction | reconstruction − input; real | sample) and sample grids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from matplotlib.figure import Figure


def comparison_figure(items: Sequence[tuple[str, np.ndarray, np.ndarray]], *, columns: tuple[str, str], title: str = "",
                      difference: bool = True, window: tuple[float, float] = (0.0, 1.0)) -> Figure:
    """One row per (row title, first, second) of [0, 1] slices in display orientation; with
    ``difference`` a third column "second − first" on a symmetric scale with a colour bar."""
    from brainsynth_cli.figures.grid import Panel, Row, grid_figure

    rows = []
    for name, a, b in items:
        panels = [Panel(a, window=window), Panel(b, window=window)]
        if difference:
            panels.append(Panel(b - a, kind="difference"))
        rows.append(Row(name, panels))
    cols = list(columns) + ([f"{columns[1]} − {columns[0]}"] if difference else [])
    return grid_figure(rows, columns=cols, title=title, difference_label="intensity difference (fraction of the intensity window)")


def tiles_figure(tiles: Sequence[tuple[str, np.ndarray]], *, per_row: int = 4, title: str = "",
                 window: tuple[float, float] = (0.0, 1.0)) -> Figure:
    """[0, 1] slices in display orientation, ``per_row`` to a row, each with its own caption."""
    from brainsynth_cli.figures.grid import Panel, Row, grid_figure

    panels = [Panel(img, window=window, title=caption) for caption, img in tiles]
    rows = [Row("", panels[k : k + per_row]) for k in range(0, len(panels), per_row)]
    return grid_figure(rows, title=title, tile_in=1.8)
