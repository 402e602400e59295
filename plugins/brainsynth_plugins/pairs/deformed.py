"""Deformed pairs (``make-pairs --deformed``): the prior deformed to chosen rates.

For every described structure group that the ``deform`` editor can change (``ventricle``,
``cortex``) and every interval of it, the prior volume is deformed in 3D on its own grid
(:func:`brainsynth_plugins.deform.deformation.deform`) to a rate drawn around the interval's
``target`` (docs/rules.md): uniformly within ±30 % of the interval's width for a bounded
interval, within ±80 % of the distance between target and bound for an open one, and never
outside the interval. When two or more groups are deformable, every combination of their
intervals (one interval per group, all groups changed at once: "cortex atrophy and moderate
ventricle enlargement") is made too, with its own draws: a model learns combined prompts from
these rows, where a cohort shows them only in a few noisy real pairs. The draw depends only on
(seed, pair, structure, interval, combination), so any process order and any ``--jobs`` give the
same rates. Cohorts rarely show moderate or severe change; these rows give every interval and
every combination training pairs whose change is known exactly.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from brainsynth_cli.structures import Interval, Rules, Structure

BOUNDED_SPREAD = 0.30  # of the interval's width, either side of the target
OPEN_SPREAD = 0.80  # of |target - bound|, either side of the target
INSIDE = 0.01  # keep draws this fraction of the spread away from the interval's bounds


@dataclass(frozen=True)
class DeformTask:
    """One deformed row to make: the structures it changes, each with one of its intervals and
    the drawn target rate (one structure, or a combination changed at once)."""

    parts: tuple[tuple[Structure, Interval, float], ...]

    @property
    def structure(self) -> Structure | None:
        """The one structure a single-structure row changes; None for a combination."""
        return self.parts[0][0] if len(self.parts) == 1 else None

    @property
    def targets(self) -> dict[str, float]:
        """Structure name -> drawn target rate (percent)."""
        return {s.name: rate for s, _, rate in self.parts}

    @property
    def name(self) -> str:
        """The output's file stem ("def-ventricle-moderate", "def-cortex-atrophy+ventricle-moderate")."""
        import re

        return re.sub(r"[^A-Za-z0-9+-]", "_", f"def-{stem((s, iv) for s, iv, _ in self.parts)}")


def stem(parts: Any) -> str:
    """"cortex-atrophy+ventricle-moderate" for (structure, interval) pairs: a row's file stem and
    the tag of a combination's draws."""
    return "+".join(f"{s.name}-{iv.name}" for s, iv in parts)


def draw_range(interval: Interval) -> tuple[float, float]:
    """The range a deformed pair's rate is drawn from, for ``interval``."""
    t = float(interval.target)
    if math.isfinite(interval.low) and math.isfinite(interval.high):
        half = BOUNDED_SPREAD * (interval.high - interval.low)
    else:
        bound = interval.low if math.isfinite(interval.low) else interval.high
        half = OPEN_SPREAD * abs(t - bound) if math.isfinite(bound) else OPEN_SPREAD * max(abs(t), 1.0)
    lo, hi = t - half, t + half
    margin = INSIDE * half
    if math.isfinite(interval.low):
        lo = max(lo, interval.low + margin)
    if math.isfinite(interval.high):
        hi = min(hi, interval.high - margin)
    return lo, max(lo, hi)


def draw_rate(seed: int, pair_key: str, structure: str, interval: Interval, combination: str = "") -> float:
    """A rate drawn uniformly from :func:`draw_range`, fixed by (seed, pair, structure, interval)
    and, for a row that changes several structures, the ``combination`` it belongs to."""
    tag = f"|{combination}" if combination else ""
    digest = hashlib.sha256(f"{int(seed)}|{pair_key}|{structure}|{interval.name}{tag}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    lo, hi = draw_range(interval)
    return round(lo + u * (hi - lo), 4)


def deformable(rules: Rules) -> list[Structure]:
    """The described groups the ``deform`` editor can change, in the rules' order."""
    from brainsynth_plugins.deform.fields import DEFORMABLE

    return [s for s in rules.described() if s.name in DEFORMABLE]


def tasks(rules: Rules, seed: int, pair_key: str) -> list[DeformTask]:
    """Every (deformable structure, interval) of the rules with its drawn rate, then, when two
    or more structures are deformable, every combination of one interval per structure."""
    import itertools

    groups = deformable(rules)
    out = [DeformTask(((s, iv, draw_rate(seed, pair_key, s.name, iv)),)) for s in groups for iv in s.intervals]
    if len(groups) < 2:
        return out
    for ivs in itertools.product(*(s.intervals for s in groups)):
        combo = stem(zip(groups, ivs))
        out.append(DeformTask(tuple((s, iv, draw_rate(seed, pair_key, s.name, iv, combo)) for s, iv in zip(groups, ivs))))
    return out


def deformed_outputs(pair: Any, options: Any, rules: Rules, builder: Any, prior: Any, prior_lab: Any, pn: Any,
                     vp: dict[str, float], base: dict[str, Any]) -> list[tuple[str, Any, Any, Any, dict[str, Any]]]:
    """make-pairs outputs ``(name, volume on [0, 1], normalisation, labels, row fields)`` of the
    deformed rows of one pair. The deformed volume is windowed with the prior's window, so
    outside the deformation it equals the prior exactly. A target the deformation cannot reach
    on this prior is recorded in ``base["deformed_failed"]`` instead of stopping the run."""
    from brainsynth_cli.errors import UserError
    from brainsynth_cli.interfaces import Change
    from brainsynth_cli.slices import normalise
    from brainsynth_plugins.deform.deformation import Deformation
    from brainsynth_plugins.pairs.engine import _rate, group_vols

    out = []
    p = pair.prior
    context = {"age": p.age, "sex": p.sex, "modality": "T1w", "interval_years": None}
    todo = tasks(rules, options.seed, pair.key)
    deformation = Deformation(prior_lab.data, rules, tuple(prior.voxel_size)) if todo else None  # fields once per prior
    for task in todo:
        targets = task.targets
        failed = {"structures": sorted(targets), "intervals": {sv.name: iv.name for sv, iv, _ in task.parts},
                  "target": targets}
        try:
            result = deformation.apply(prior.data, targets)
        except UserError as exc:
            base.setdefault("deformed_failed", []).append({**failed, "reason": str(exc)})
            continue
        vd = group_vols(result.labels, prior.voxel_volume, rules)
        realised = {g: _rate(vp[g], vd[g]) for g in rules.names()}
        numeric = {k: (math.nan if v is None else v) for k, v in realised.items()}
        named = {k: (v if k in targets else math.nan) for k, v in numeric.items()}  # the prompt names these only
        intervals = {}
        for d in rules.described():
            iv = d.interval_for(numeric[d.name]) if d.name in targets else None
            intervals[d.name] = iv.name if iv is not None else None
        missed = [n for n in targets if intervals.get(n) is None]  # a combination's prompt must name every part
        prompt = builder.build(Change(rates=named, volumes=vd, **context))
        if prompt is None or missed:
            base.setdefault("deformed_failed", []).append(
                {**failed, "reason": "; ".join(f"realised {n} rate {realised[n]} is described by no interval" for n in missed)
                 or "the prompt builder describes none of the realised rates"})
            continue
        out.append((task.name, normalise(result.image, pn), pn, result.labels, {
            "kind": "deformed", "structure": task.structure.name if task.structure else None, "edit_prompt": prompt,
            "rates": realised, "rates_pv": {k: round(v, 6) for k, v in result.rates_pv.items()},
            "deform_target": dict(targets), "intervals": intervals, "blender": None, "interval_years": None}))
        base.setdefault("deform_magnitudes_mm", {})[task.name] = {k: round(v, 6) for k, v in result.magnitudes.items()}
    return out
