"""Through-plane consistency of a 3D edit: is the change as smooth across axial slices as the real one?

A 2D model edits a volume slice by slice; each slice gets its own change, and the result can be
striped: smooth within each axial slice, jumping from one slice to the next. The statistic looks
where an edit acts, at the border of the structures the prompt names:

- band B: the voxels within :data:`BAND_VOXELS` voxels (Euclidean) of the border of the named
  structures in the prior's labels, on either side;
- change map D = image - prior;
- through-plane roughness T = mean over the voxels v = (x, y, z) of B that have an axial
  neighbour (x, y, z + 1) of |D(x, y, z + 1) - D(x, y, z)| / dz (dz the slice spacing in mm);
- in-plane roughness I = the same with the in-plane neighbours (x + 1, y, z) and (x, y + 1, z),
  each difference divided by its spacing, the two averaged.

Reported per method as ratios to the real target's values on the same row: ``ratio`` = T / T(target)
(1 = as rough across slices as the real change, > 1 rougher, e.g. striped; an edit that changes
less is also smoother, so an empty edit scores 0) and ``anisotropy_ratio`` = (T / I) / (T(target) /
I(target)), which does not depend on how strong the change is (1 = the same balance between
through-plane and in-plane change as the real one; a striped edit has more through-plane change
for its in-plane change: > 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Half-width of the band around the named structures' border, in voxels.
BAND_VOXELS = 2.0


def border_band(labels: np.ndarray, ids: Sequence[int], width: float = BAND_VOXELS) -> np.ndarray:
    """Voxels within ``width`` voxels of the border of ``labels`` in ``ids`` (inside and outside)."""
    from scipy import ndimage

    inside = np.isin(np.asarray(labels), list(ids))
    if not inside.any() or inside.all():
        return np.zeros(inside.shape, bool)
    to_inside = ndimage.distance_transform_edt(~inside)  # outside voxels: distance to the nearest inside voxel
    to_outside = ndimage.distance_transform_edt(inside)  # inside voxels: distance to the nearest outside voxel
    return (~inside & (to_inside <= width)) | (inside & (to_outside <= width))


def roughness(image: np.ndarray, prior: np.ndarray, band: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Through-plane (``through``) and in-plane (``in_plane``) mean absolute differences of the
    change map ``image - prior`` per mm, over the voxels of ``band`` (axis 2 is axial)."""
    d = np.asarray(image, np.float64) - np.asarray(prior, np.float64)
    sx, sy, sz = (float(s) for s in spacing)

    def mean_step(axis: int, step_mm: float) -> float:
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        where = band[tuple(lo)]
        if not where.any():
            return math.nan
        return float(np.abs(d[tuple(hi)] - d[tuple(lo)])[where].mean() / step_mm)

    through = mean_step(2, sz)
    in_plane = 0.5 * (mean_step(0, sx) + mean_step(1, sy))
    return {"through": through, "in_plane": in_plane}


def _ratio(a: float, b: float) -> float:
    return a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else math.nan


def ratios(values: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per method: its roughness with ``ratio`` and ``anisotropy_ratio`` to the ``target`` method's."""
    target = values.get("target")
    out: dict[str, dict[str, float]] = {}
    for method, v in values.items():
        r = dict(v)
        if target is not None:
            r["ratio"] = _ratio(v["through"], target["through"])
            r["anisotropy_ratio"] = _ratio(_ratio(v["through"], v["in_plane"]), _ratio(target["through"], target["in_plane"]))
        out[method] = r
    return out


def summarise(results: list[dict[str, Any]], methods: Sequence[str] = ("model", "deform", "target")) -> dict[str, Any]:
    """Mean ``ratio`` and ``anisotropy_ratio`` per method over the rows that have them."""
    out: dict[str, Any] = {}
    for method in methods:
        got = [r["methods"][method]["through_plane"] for r in results
               if method in r["methods"] and "through_plane" in r["methods"][method]]
        if not got:
            continue
        row: dict[str, Any] = {"rows": len(got)}
        for key in ("ratio", "anisotropy_ratio", "through", "in_plane"):
            vals = [g[key] for g in got if g.get(key) is not None and math.isfinite(g[key])]
            row[key] = float(np.mean(vals)) if vals else math.nan
        out[method] = row
    return out
