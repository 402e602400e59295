"""Pictures people look at, drawn with matplotlib on an Agg canvas (imported inside functions,
so the command line starts fast; no pyplot state).

- :mod:`~brainsynth_cli.figures.colours`: label outline colours (also the look-up tables'), colour maps;
- :mod:`~brainsynth_cli.figures.orientation`: the one slice orientation (radiological) and its side markers;
- :mod:`~brainsynth_cli.figures.grid`: a titled grid of slice panels with colour bar and legend;
- :mod:`~brainsynth_cli.figures.label_qc`: label outlines over anatomy in three planes (segment QC);
- :mod:`~brainsynth_cli.figures.comparison`: image pairs with their difference (validation pictures), sample grids;
- :mod:`~brainsynth_cli.figures.save`: the atomic PNG writer.

The montage of edits (:mod:`brainsynth_cli.edit_montage`: edit, evaluate, training validation)
is drawn with :mod:`~brainsynth_cli.figures.grid`.
"""

from brainsynth_cli.figures.colours import label_colour
from brainsynth_cli.figures.grid import Legend, Panel, Row, grid_figure
from brainsynth_cli.figures.orientation import display
from brainsynth_cli.figures.save import save_figure

__all__ = ["Legend", "Panel", "Row", "display", "grid_figure", "label_colour", "save_figure"]
