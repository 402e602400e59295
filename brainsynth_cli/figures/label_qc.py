"""The segmentation QC picture: label outlines over the anatomy in three planes.

Axial, coronal and sagittal slices through the centre of the lateral ventricles (of all labels
when there are none), each label's boundary in its colour, a legend naming the labels shown,
pixels at their true aspect, sides marked on every panel.

Drawn with matplotlib contours rather than ``nilearn.plotting``: nilearn works offline here, but
importing it takes seconds in every segment worker, it draws through pyplot's global state, and
its default view is neurological; these panels use the orientation of every other picture.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    from matplotlib.figure import Figure

VENTRICLES = (4, 43)


def centre_voxel(labels: np.ndarray) -> tuple[int, int, int]:
    """Centre of the lateral ventricles (or of all labels, or of the grid) of a canonical label volume."""
    import numpy as np

    focus = np.isin(labels, VENTRICLES)
    if not focus.any():
        focus = labels > 0
    if not focus.any():
        return tuple(n // 2 for n in labels.shape)  # type: ignore[return-value]
    i, j, k = (int(np.rint(c)) for c in np.argwhere(focus).mean(axis=0))
    return i, j, k


def label_qc_figure(image: np.ndarray, labels: np.ndarray, affine: np.ndarray, *, names: Mapping[int, str] | None = None,
                    title: str = "") -> Figure:
    """The QC figure of an image and its label map (same grid, any orientation)."""
    import numpy as np

    from brainsynth_cli.figures.grid import Legend, Panel, Row, grid_figure
    from brainsynth_cli.figures.orientation import canonical_voxel_mm, display
    from brainsynth_cli.slices import to_canonical

    img, _ = to_canonical(np.asarray(image, np.float32), affine)
    lab, _ = to_canonical(np.asarray(labels), affine)
    vx, vy, vz = canonical_voxel_mm(affine)
    i, j, k = centre_voxel(lab)
    planes = (("axial", (slice(None), slice(None), k), vy / vx, f"axial, z = {k}"),
              ("coronal", (slice(None), j, slice(None)), vz / vx, f"coronal, y = {j}"),
              ("sagittal", (i, slice(None), slice(None)), vz / vy, f"sagittal, x = {i}"))
    nz = img[img != 0]
    window = tuple(float(v) for v in np.percentile(nz, [0.5, 99.5])) if nz.size else (0.0, 1.0)
    panels, shown = [], set()
    for plane, sl, aspect, caption in planes:
        lab2 = display(lab[sl])
        shown |= {int(v) for v in np.unique(lab2) if v}
        panels.append(Panel(display(img[sl]), window=window, labels=lab2, plane=plane, aspect=aspect, title=caption))
    names = names or {}
    legend = Legend(labels={v: names.get(v, f"label {v}") for v in sorted(shown)})
    return grid_figure([Row("", panels)], title=title, legend=legend, mark="all", tile_in=2.6,
                       note="Radiological orientation: the patient's right (R) on the left; axial anterior (A) up, "
                            "coronal and sagittal superior (S) up, sagittal anterior on the left. Voxel indices of the "
                            "canonical (RAS) grid.")
