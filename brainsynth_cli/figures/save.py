"""Writing a figure: PNG through matplotlib's Agg canvas, atomically (a reader never sees a
half-written picture; see :mod:`brainsynth_cli.images.atomic`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from brainsynth_cli.images.atomic import atomic_output

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as PNG at its own size and resolution; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    target = Path(path)
    with atomic_output(target) as tmp:
        fig.savefig(tmp, format="png", facecolor=fig.get_facecolor())
    return target
