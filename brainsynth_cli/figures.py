"""Pictures people look at: label outlines on slices, montages with titles, difference maps.

Only numpy and Pillow. Every writer is atomic (see :mod:`brainsynth_cli.images.atomic`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from brainsynth_cli.images.atomic import atomic_output

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: Outline colours for common aseg ids (RGB); others get a colour from their id.
LABEL_COLOURS: dict[int, tuple[int, int, int]] = {
    2: (245, 245, 245), 41: (245, 245, 245),  # white matter
    3: (230, 148, 34), 42: (230, 148, 34),  # cortex
    4: (120, 18, 134), 43: (120, 18, 134),  # lateral ventricle
    5: (196, 58, 250), 44: (196, 58, 250),  # inferior lateral ventricle
    17: (220, 216, 20), 53: (220, 216, 20),  # hippocampus
    24: (60, 60, 255),  # CSF
}


def label_colour(label: int) -> tuple[int, int, int]:
    if label in LABEL_COLOURS:
        return LABEL_COLOURS[label]
    h = (label * 2654435761) & 0xFFFFFF
    return (h >> 16 & 255, h >> 8 & 255, h & 255)


def to_uint8(image: "np.ndarray", low: float | None = None, high: float | None = None) -> "np.ndarray":
    """Window a float slice to 0..255 (default window: 0.5th to 99.5th percentile)."""
    import numpy as np

    a = np.asarray(image, dtype=np.float32)
    if low is None or high is None:
        finite = a[np.isfinite(a)]
        lo, hi = (np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0))
        low = lo if low is None else low
        high = hi if high is None else high
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip((a - low) * scale, 0, 255).astype(np.uint8)


def display(slice2d: "np.ndarray") -> "np.ndarray":
    """Orient a canonical voxel-space axial slice (first axis = x) for display: the radiological
    view of :func:`brainsynth_cli.slices.to_view` (anterior up, the patient's right on the left).

    Works on grey (x, y) and RGB (x, y, 3) arrays."""
    import numpy as np

    a = np.asarray(slice2d)
    if a.ndim == 3:
        return np.ascontiguousarray(a[::-1, ::-1].transpose(1, 0, 2))
    from brainsynth_cli.slices import to_view

    return to_view(a)


def outline(labels2d: "np.ndarray") -> "np.ndarray":
    """Boolean mask of the boundary pixels of every label region (4-neighbourhood)."""
    import numpy as np

    lab = np.asarray(labels2d)
    edge = np.zeros(lab.shape, dtype=bool)
    edge[:-1, :] |= lab[:-1, :] != lab[1:, :]
    edge[1:, :] |= lab[1:, :] != lab[:-1, :]
    edge[:, :-1] |= lab[:, :-1] != lab[:, 1:]
    edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    return edge & (lab != 0)


def overlay_outlines(image2d: "np.ndarray", labels2d: "np.ndarray", *, window: tuple[float, float] | None = None) -> "np.ndarray":
    """RGB uint8 picture of a grey slice with each label's outline in its colour (same orientation as input)."""
    import numpy as np

    grey = to_uint8(image2d, *(window or (None, None)))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    lab = np.asarray(labels2d)
    edge = outline(lab)
    for value in np.unique(lab[edge]):
        rgb[edge & (lab == value)] = label_colour(int(value))
    return rgb


def difference_map(a: "np.ndarray", b: "np.ndarray", limit: float | None = None) -> "np.ndarray":
    """RGB uint8 picture of b - a: blue where b is darker, red where brighter, black where equal."""
    import numpy as np

    d = np.asarray(b, dtype=np.float32) - np.asarray(a, dtype=np.float32)
    lim = limit if limit is not None else float(np.percentile(np.abs(d), 99.5)) or 1.0
    t = np.clip(d / lim, -1, 1)
    rgb = np.zeros(d.shape + (3,), dtype=np.uint8)
    rgb[..., 0] = (np.clip(t, 0, 1) * 255).astype(np.uint8)
    rgb[..., 2] = (np.clip(-t, 0, 1) * 255).astype(np.uint8)
    rgb[..., 1] = (np.abs(t) * 60).astype(np.uint8)
    return rgb


def save_grid(
    path: str | os.PathLike[str],
    tiles: Sequence[Sequence["np.ndarray"]],
    *,
    row_titles: Sequence[str] | None = None,
    col_titles: Sequence[str] | None = None,
    scale: int = 1,
) -> Path:
    """Write a grid of tiles (grey uint8/float or RGB uint8 arrays) as one PNG with titles."""
    from PIL import Image, ImageDraw

    rows = [[_rgb(t) for t in row] for row in tiles]
    if not rows or not rows[0]:
        raise ValueError("save_grid needs at least one tile")
    th = max(t.shape[0] for row in rows for t in row) * scale
    tw = max(t.shape[1] for row in rows for t in row) * scale
    left = 110 if row_titles else 0
    top = 16 if col_titles else 0
    ncols = max(len(r) for r in rows)
    canvas = Image.new("RGB", (left + ncols * (tw + 2), top + len(rows) * (th + 2)), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(col_titles or []):
        draw.text((left + j * (tw + 2) + 2, 2), str(title)[: max(4, tw // 6)], fill=(255, 255, 255))
    for i, row in enumerate(rows):
        if row_titles:
            draw.text((2, top + i * (th + 2) + th // 2 - 6), str(row_titles[i])[:18], fill=(255, 255, 255))
        for j, tile in enumerate(row):
            im = Image.fromarray(tile)
            if scale != 1:
                im = im.resize((tile.shape[1] * scale, tile.shape[0] * scale), Image.NEAREST)
            canvas.paste(im, (left + j * (tw + 2), top + i * (th + 2)))
    target = Path(path)
    with atomic_output(target) as tmp:
        canvas.save(tmp, format="PNG")
    return target


def _rgb(tile: "np.ndarray") -> "np.ndarray":
    import numpy as np

    a = np.asarray(tile)
    if a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    g = a if a.dtype == np.uint8 else to_uint8(a)
    return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))
