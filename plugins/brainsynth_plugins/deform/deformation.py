"""``deform``: a smooth, invertible deformation of an image and its label map that reaches
requested change rates of the ventricles and the cortex (2D or 3D, no model, no randomness).

The fields are those of :mod:`brainsynth_plugins.deform.fields`; the map is their exponential
(:mod:`brainsynth_plugins.deform.flow`); the magnitudes are solved
(:mod:`brainsynth_plugins.deform.solve`) so that each structure's **partial-volume rate** (its
label indicator warped with linear interpolation and summed, i.e. the volume an image shows)
reaches the target within ``TOLERANCE_PP``. The image is warped with linear interpolation and
the labels with nearest neighbour rounded to the partial volumes
(:mod:`brainsynth_plugins.deform.labels`), on the fields' support only: every other voxel is
returned exactly as it was given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from brainsynth_cli.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from brainsynth_cli.structures import Rules
    from brainsynth_plugins.deform.fields import Fields
    from brainsynth_plugins.deform.flow import Flow

TOLERANCE_PP = 0.25  # partial-volume rate vs target, percentage points
SOLVE_TOLERANCE_PP = 0.05  # what the 1-D solves aim at, well inside the acceptance
LIMIT_MM = 8.0  # largest magnitude (mm; at least 3 voxels on coarse grids)


@dataclass
class Deformed:
    """The result of :func:`deform`.

    ``image``: the warped image (the input's float dtype, else float32); ``labels``: the warped
    label map (the input's dtype); ``rates``: change rate (percent) of every rules group counted
    on the warped label map (NaN for a group absent from the input); ``rates_pv``: the
    partial-volume rate of ``ventricle`` and ``cortex`` (those present); ``magnitudes``: the
    deformation magnitude per requested structure (mm); ``min_jacobian``: the smallest Jacobian
    determinant of the map; ``moved``: the number of voxels resampled (the fields' support).
    """

    image: np.ndarray
    labels: np.ndarray  # nearest neighbour, each deformed group rounded to its partial volume
    rates: dict[str, float]
    rates_pv: dict[str, float]
    magnitudes: dict[str, float]
    min_jacobian: float = 1.0
    moved: int = 0
    support: Any = field(default=None, repr=False)  # boolean mask of the resampled voxels


def _check_labels(labels: Any, spacing: Sequence[float] | None) -> tuple[np.ndarray, tuple[float, ...]]:
    import numpy as np

    lab = np.asarray(labels)
    if lab.ndim not in (2, 3):
        raise UserError(f"deform works on 2D slices and 3D volumes, got a label map of shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.array_equal(lab, np.round(lab)):
            raise UserError("the label map holds non-integer values; give integer label ids (FreeSurfer aseg)")
        lab = lab.astype(np.int32)
    sp = (1.0,) * lab.ndim if spacing is None else tuple(float(s) for s in spacing)
    if len(sp) != lab.ndim or not all(math.isfinite(s) and s > 0 for s in sp):
        raise UserError(f"spacing {tuple(spacing or ())} must give one positive voxel size (mm) per axis of the {lab.ndim}D image")
    return lab, sp


def _check_image(image: Any, shape: tuple[int, ...]) -> np.ndarray:
    import numpy as np

    img = np.asarray(image)
    if img.shape != shape:
        raise UserError(f"the label map has shape {shape} but the image has shape {img.shape}; give labels on the image's grid")
    if not np.issubdtype(img.dtype, np.floating):
        img = img.astype(np.float32)
    if not np.all(np.isfinite(img)):
        raise UserError("the image holds NaN or infinite values; deform needs a finite image")
    return img


def _check_targets(targets: Mapping[str, float], rules: Rules) -> dict[str, float]:
    from brainsynth_plugins.deform.fields import DEFORMABLE

    out = {}
    for name, value in targets.items():
        if name not in DEFORMABLE:
            raise UserError(f"deform cannot change structure group {name!r}; it deforms {' and '.join(DEFORMABLE)}")
        if name not in rules.names():
            raise UserError(f"the rules have no structure group {name!r}; deform finds the {name} by that group name (see docs/rules.md)")
        try:
            rate = float(value)
        except (TypeError, ValueError):
            raise UserError(f"the target rate of {name} must be a number of percent, got {value!r}") from None
        if not math.isfinite(rate) or rate <= -100.0:
            raise UserError(f"the target rate of {name} must be a finite percentage above -100, got {value!r}")
        out[name] = rate
    return out


class _PartialVolumes:
    """Partial-volume rates of the deformable groups under a flow: each group's indicator
    sampled linearly where the support voxels look, summed with the voxels that do not move."""

    def __init__(self, fields: Fields) -> None:
        import numpy as np

        self.names = [n for n, m in fields.masks.items() if m.any()]
        self.indicators = np.stack([fields.masks[n] for n in self.names]).astype(np.float32) if self.names else None
        self.base = {n: float(fields.masks[n].sum()) for n in self.names}
        self._at_support: dict[int, tuple[Flow, np.ndarray]] = {}

    def coverage(self, flow: Flow, magnitudes: Mapping[str, float]) -> np.ndarray:
        """Each group's indicator sampled linearly where the support voxels look (K, N)."""
        from brainsynth_plugins.deform._linear_numba import linear

        return linear(self.indicators, flow.positions(magnitudes), clamp=True)

    def volumes(self, flow: Flow, coverage: np.ndarray) -> dict[str, float]:
        """Partial volumes (voxels) of the groups, given their ``coverage`` of the support."""
        import numpy as np

        key = id(flow)
        if key not in self._at_support:  # the flow is kept alongside, so its id stays its own
            self._at_support[key] = (flow, self.indicators.reshape(len(self.names), -1)[:, flow.index].sum(axis=1, dtype=np.float64))
        sampled = coverage.sum(axis=1, dtype=np.float64)
        before = self._at_support[key][1]
        return {n: self.base[n] + sampled[k] - before[k] for k, n in enumerate(self.names)}

    def rates(self, flow: Flow, magnitudes: Mapping[str, float]) -> dict[str, float]:
        if not self.names:
            return {}
        if flow.index.size == 0:
            return {n: 0.0 for n in self.names}
        vols = self.volumes(flow, self.coverage(flow, magnitudes))
        return {n: float((vols[n] - self.base[n]) / self.base[n] * 100.0) for n in self.names}


def _count_rates(before: np.ndarray, after: np.ndarray, rules: Rules) -> dict[str, float]:
    from brainsynth_cli.structures import change_rate, group_volumes, label_volumes

    vb = group_volumes(label_volumes(before, 1.0), rules)
    va = group_volumes(label_volumes(after, 1.0), rules)
    return {n: change_rate(vb[n], va[n]) for n in rules.names()}


def _reach(name: str, f, limit: float, f_at: dict[float, float]) -> tuple[float, float]:
    lo = f_at[-limit] if -limit in f_at else f(-limit)
    hi = f_at[limit] if limit in f_at else f(limit)
    return lo, hi


class Deformation:
    """The deformations of one label map: its fields are computed once, then :meth:`apply`
    deforms an image (and the labels) to any targets. :func:`deform` is one such call."""

    def __init__(self, labels: Any, rules: Rules | None = None, spacing: Sequence[float] | None = None) -> None:
        from brainsynth_cli.structures import default_rules
        from brainsynth_plugins.deform.fields import velocity_fields

        self.rules = rules or default_rules()
        lab, sp = _check_labels(labels, spacing)
        self.shape = lab.shape  # as given; a 3D array with one plane (X, Y, 1) is worked on as 2D
        keep = [d for d, n in enumerate(lab.shape) if n > 1]
        if len(keep) < 2:
            raise UserError(f"deform needs an image with at least two axes longer than one voxel, got shape {lab.shape}")
        self.labels = lab.reshape([lab.shape[d] for d in keep])
        self.spacing = tuple(sp[d] for d in keep)
        self.fields = velocity_fields(self.labels, self.rules, self.spacing)
        self.pv = _PartialVolumes(self.fields)
        self.limit = max(LIMIT_MM, 3.0 * max(self.spacing))
        self._flows: dict[tuple[str, ...], Flow] = {}

    def flow(self, names: Sequence[str]) -> Flow:
        from brainsynth_plugins.deform.flow import Flow

        key = tuple(names)
        if key not in self._flows:
            self._flows[key] = Flow(self.fields, key)
        return self._flows[key]

    def solve(self, targets: Mapping[str, float]) -> tuple[Flow, dict[str, float]]:
        """The flow and the magnitudes (mm per group of ``targets``) that reach ``targets``."""
        from brainsynth_plugins.deform.solve import solve_joint, solve_magnitude

        rules, pv, limit = self.rules, self.pv, self.limit
        wanted = _check_targets(targets, rules)
        for name in wanted:
            if wanted[name] != 0.0 and name not in self.fields.velocity:
                ids = ", ".join(str(i) for i in rules[name].labels)
                raise UserError(f"{name}: the structure is absent from the label map (no voxel with label {ids}); "
                                f"give labels that hold it, or do not ask to change the {name}")
        active = [n for n in wanted if wanted[n] != 0.0]
        magnitudes: dict[str, float] = {n: 0.0 for n in wanted}
        reached: dict[str, float] = {}
        for name in active:
            flow = self.flow([name])
            seen: dict[float, float] = {}

            def f(m: float, flow: Flow = flow, name: str = name, seen: dict[float, float] = seen) -> float:
                if m not in seen:
                    seen[m] = pv.rates(flow, {name: m})[name]
                return seen[m]

            target = wanted[name]
            at_limit = f(limit if target > 0 else -limit)
            if (target > 0 and at_limit < target - TOLERANCE_PP) or (target < 0 and at_limit > target + TOLERANCE_PP):
                lo, hi = _reach(name, f, limit, seen)
                raise UserError(f"{name}: a change of {target:+g} % is out of reach of the deformation on these labels "
                                f"(it reaches {lo:+.1f} % to {hi:+.1f} %); ask for a change within that range")
            magnitudes[name], reached[name] = solve_magnitude(f, target, limit, SOLVE_TOLERANCE_PP, f_limit=at_limit)

        flow = self.flow(active)
        if len(active) > 1:
            found, reached = solve_joint(lambda m: pv.rates(flow, m), {n: wanted[n] for n in active},
                                         {n: magnitudes[n] for n in active}, limit, 2 * SOLVE_TOLERANCE_PP)
            magnitudes.update(found)
        for name in active:
            if abs(reached[name] - wanted[name]) > TOLERANCE_PP:
                others = ", ".join(f"{n} {wanted[n]:+g} %" for n in active if n != name)
                raise UserError(f"{name}: the deformation reaches {reached[name]:+.2f} % instead of {wanted[name]:+g} % "
                                f"on these labels (together with {others}); ask for smaller changes")
        return flow, magnitudes

    def apply(self, image: Any, targets: Mapping[str, float]) -> Deformed:
        """``image`` (on the labels' grid) and the labels deformed to ``targets``."""
        import numpy as np

        from brainsynth_plugins.deform._linear_numba import linear
        from brainsynth_plugins.deform.labels import warp_labels

        lab, pv = self.labels, self.pv
        img = _check_image(image, self.shape).reshape(lab.shape)
        flow, magnitudes = self.solve(targets)
        out_img = img.copy()
        out_lab = lab.copy()
        support = np.zeros(lab.shape, dtype=bool)
        if flow.index.size:
            pos = flow.positions(magnitudes)
            out_img.reshape(-1)[flow.index] = linear(img[None], pos, clamp=True)[0]
            cover = pv.coverage(flow, magnitudes)
            vols = pv.volumes(flow, cover)
            out_lab.reshape(-1)[flow.index] = warp_labels(
                lab, flow.index, pos, {n: cover[k] for k, n in enumerate(pv.names)},
                {n: self.rules[n].labels for n in pv.names}, {n: round(vols[n]) for n in pv.names}, self.spacing)
            support.reshape(-1)[flow.index] = True
        return Deformed(
            image=out_img.reshape(self.shape), labels=out_lab.reshape(self.shape),
            rates=_count_rates(lab, out_lab, self.rules), rates_pv=pv.rates(flow, magnitudes),
            magnitudes={n: float(m) for n, m in magnitudes.items()},
            min_jacobian=flow.min_jacobian(magnitudes), moved=int(flow.index.size), support=support.reshape(self.shape),
        )


def deform(
    image: Any,
    labels: Any,
    targets: Mapping[str, float],
    rules: Rules | None = None,
    spacing: Sequence[float] | None = None,
) -> Deformed:
    """Deform ``image`` and its label map ``labels`` (2D or 3D, same shape) so that each
    structure group of ``targets`` (``ventricle``, ``cortex``) changes by the given rate in
    percent, R = (V_after - V_before) / V_before * 100, measured as a partial volume.

    ``rules`` (default: the built-in rules) says which label ids make each group; ``spacing``
    is the voxel size in mm per axis (default 1). Several targets are solved jointly. Raises a
    one-line :class:`UserError` for a group that cannot be deformed, a structure absent from
    the labels, or a rate beyond what the deformation reaches (naming the reachable range).
    To deform one label map to several targets, :class:`Deformation` computes its fields once.
    """
    _check_targets(targets, rules or _default_rules())  # a wrong group fails before any work
    return Deformation(labels, rules, spacing).apply(image, targets)


def _default_rules() -> Rules:
    from brainsynth_cli.structures import default_rules

    return default_rules()
