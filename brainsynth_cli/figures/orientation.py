"""The one orientation of every picture: radiological.

Axial slices are shown as brainsynth stores them (:func:`brainsynth_cli.slices.to_view`):
anterior up, the patient's right on the left. Coronal slices: superior up, right on the left.
Sagittal slices: superior up, anterior on the left. Pictures mark the sides on the slices and
state the convention in a line of text (:data:`NOTE`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: The line every picture of slices carries.
NOTE = "Radiological orientation: the patient's right (R) on the left of each slice; axial slices anterior up."

#: Side markers (left, right, top, bottom edge of the panel) of each plane in this orientation.
SIDES: dict[str, tuple[str, str, str, str]] = {
    "axial": ("R", "L", "A", "P"),
    "coronal": ("R", "L", "S", "I"),
    "sagittal": ("A", "P", "S", "I"),
}


def display(slice2d: np.ndarray) -> np.ndarray:
    """Orient a canonical (RAS voxel order) slice for display: ``data[:, :, k]`` (axial),
    ``data[:, j, :]`` (coronal) or ``data[i, :, :]`` (sagittal) in the orientation of
    :data:`SIDES` (the radiological view of :func:`brainsynth_cli.slices.to_view`).

    Works on grey or label (2D) and RGB (x, y, 3) arrays."""
    import numpy as np

    a = np.asarray(slice2d)
    if a.ndim == 3:
        return np.ascontiguousarray(a[::-1, ::-1].transpose(1, 0, 2))
    from brainsynth_cli.slices import to_view

    return to_view(a)


def stored_view(slice2d: np.ndarray, convention: str | None) -> np.ndarray:
    """A stored 2D slice (pairs folder PNG, model input) in the display orientation: slices of
    convention "v2" are stored in it already; "v1" (and unknown, the older default) slices are
    canonical and are turned."""
    from brainsynth_cli.slices import CONVENTION

    return slice2d if convention == CONVENTION else display(slice2d)


def axial_view(volume: np.ndarray, affine: np.ndarray, k: int | None = None) -> np.ndarray:
    """The axial slice ``k`` (default: the middle one) of a volume, in the display orientation."""
    from brainsynth_cli.slices import to_canonical

    canon, _ = to_canonical(volume, affine)
    return display(canon[:, :, canon.shape[2] // 2 if k is None else k])


def canonical_voxel_mm(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel sizes (mm) along the canonical x, y and z axes of :func:`brainsynth_cli.slices.to_canonical`."""
    import nibabel as nib
    import numpy as np

    a = np.asarray(affine, dtype=float)
    vox = np.sqrt((a[:3, :3] ** 2).sum(axis=0))
    out = [1.0, 1.0, 1.0]
    for axis, (target, _flip) in enumerate(nib.orientations.io_orientation(a)):
        out[int(target)] = float(vox[axis])
    return (out[0], out[1], out[2])


def mark_sides(ax: Any, plane: str = "axial", *, all_four: bool = False) -> None:
    """Write the side letters of ``plane`` on a panel (left and right; with ``all_four`` top and bottom too)."""
    from matplotlib import patheffects

    left, right, top, bottom = SIDES[plane]
    style = {"color": "white", "fontsize": 8, "fontweight": "bold", "transform": ax.transAxes,
             "path_effects": [patheffects.withStroke(linewidth=2, foreground="black")]}
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    if all_four:
        ax.text(0.5, 0.98, top, ha="center", va="top", **style)
        ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)
