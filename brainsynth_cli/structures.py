"""Structures: FreeSurfer aseg label ids, structure groups and their change-rate intervals.

Defined in one place, ``default_rules.toml`` next to this module, and overridable by a user's
TOML rules file (:func:`load_rules`). Everything that speaks of "ventricle" or "cortex" (volumes,
change rates, prompts, evaluation) reads it from here.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from brainsynth_cli.errors import InputError

DEFAULT_RULES_PATH = Path(__file__).with_name("default_rules.toml")


@dataclass(frozen=True)
class Interval:
    """A change-rate interval (percent) with the phrase that describes it.

    ``target`` is the rate the ``deform`` editor and deformed pairs aim at for this interval;
    when not given: the midpoint of a bounded interval, ``low + 5`` for ``(low, +inf)``,
    ``high - 3`` for ``(-inf, high)`` (:func:`default_target`).
    """

    name: str
    phrase: str
    low: float = -math.inf
    high: float = math.inf
    low_closed: bool = False
    high_closed: bool = True
    target: float | None = None

    def __post_init__(self) -> None:
        if self.target is None:
            object.__setattr__(self, "target", default_target(self.low, self.high))
        else:
            object.__setattr__(self, "target", float(self.target))

    def contains(self, rate: float) -> bool:
        if math.isnan(rate):
            return False
        above = rate >= self.low if self.low_closed else rate > self.low
        below = rate <= self.high if self.high_closed else rate < self.high
        return above and below

    def notation(self) -> str:
        lo = "[" if self.low_closed and math.isfinite(self.low) else "("
        hi = "]" if self.high_closed and math.isfinite(self.high) else ")"
        return f"{lo}{_fmt(self.low)}, {_fmt(self.high)}{hi}"

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "phrase": self.phrase, "interval": self.notation(),
                "low": self.low, "high": self.high, "low_closed": self.low_closed, "high_closed": self.high_closed,
                "target": self.target}


#: Distance of the default target from the bound of an interval open on one side (percent).
OPEN_ABOVE_STEP = 5.0
OPEN_BELOW_STEP = 3.0


def default_target(low: float, high: float) -> float:
    """The default target rate of an interval: its midpoint, ``low + 5`` when it has no upper
    bound, ``high - 3`` when it has no lower bound, 0 when it has neither."""
    if math.isfinite(low) and math.isfinite(high):
        return (low + high) / 2.0
    if math.isfinite(low):
        return low + OPEN_ABOVE_STEP
    if math.isfinite(high):
        return high - OPEN_BELOW_STEP
    return 0.0


def _fmt(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:g}"


@dataclass(frozen=True)
class Structure:
    """A structure group: its name, aseg label ids, and (optionally) the intervals prompts use."""

    name: str
    labels: tuple[int, ...]
    help: str = ""
    intervals: tuple[Interval, ...] = ()

    def interval_for(self, rate: float) -> Interval | None:
        for iv in self.intervals:
            if iv.contains(rate):
                return iv
        return None


@dataclass(frozen=True)
class Rules:
    """Label names and structure groups, in description order."""

    labels: Mapping[int, str]
    structures: tuple[Structure, ...]
    source: str = "built-in"
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __getitem__(self, name: str) -> Structure:
        for s in self.structures:
            if s.name == name:
                return s
        raise KeyError(name)

    def names(self) -> list[str]:
        return [s.name for s in self.structures]

    def described(self) -> list[Structure]:
        """The groups that have intervals (those prompts talk about)."""
        return [s for s in self.structures if s.intervals]

    def to_toml(self) -> str:
        """A TOML text that :func:`load_rules` reads back to equal rules (saved with models)."""
        lines = ["version = 1", "replace = true", "", "[labels]"]
        lines += [f'{k} = "{v}"' for k, v in sorted(self.labels.items())]
        for s in self.structures:
            lines += ["", f"[structures.{s.name}]", f"labels = [{', '.join(str(x) for x in s.labels)}]"]
            if s.help:
                lines.append(f'help = "{s.help}"')
            for iv in s.intervals:
                lines += ["", f"[[structures.{s.name}.intervals]]", f'name = "{iv.name}"', f'phrase = "{iv.phrase}"']
                if math.isfinite(iv.low):
                    lines.append(f"min = {iv.low!r}")
                if math.isfinite(iv.high):
                    lines.append(f"max = {iv.high!r}")
                lines.append(f"min_closed = {'true' if iv.low_closed else 'false'}")
                lines.append(f"max_closed = {'true' if iv.high_closed else 'false'}")
                lines.append(f"target = {iv.target!r}")
        return "\n".join(lines) + "\n"


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib

    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise InputError(path, "rules file not found", "check the path given to --rules") from None
    except IsADirectoryError:
        raise InputError(path, "is a folder, not a rules file", "give a .toml file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"is not valid TOML ({exc})", "fix the syntax (see docs/rules.md)") from None
    except OSError as exc:
        raise InputError(path, f"cannot be read ({exc.strerror})", "check its permissions") from None


def _number(value: Any, where: str, path: Path | str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(path, f"{where} must be a number, got {value!r}", "fix the rules file")
    return float(value)


def _parse_structure(name: str, table: Any, path: Path | str) -> Structure:
    if not isinstance(table, dict):
        raise InputError(path, f"structures.{name} must be a table", "fix the rules file")
    labels = table.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in labels):
        raise InputError(path, f"structures.{name}.labels must be a non-empty list of positive aseg ids", "fix the rules file")
    intervals = []
    for i, iv in enumerate(table.get("intervals", []) or []):
        where = f"structures.{name}.intervals[{i}]"
        if not isinstance(iv, dict) or not isinstance(iv.get("phrase"), str) or not iv["phrase"].strip():
            raise InputError(path, f"{where} needs a phrase", "add phrase = \"...\"")
        low = _number(iv["min"], f"{where}.min", path) if "min" in iv else -math.inf
        high = _number(iv["max"], f"{where}.max", path) if "max" in iv else math.inf
        if not low < high:
            raise InputError(path, f"{where} is empty (min {_fmt(low)} >= max {_fmt(high)})", "fix the bounds")
        target = _number(iv["target"], f"{where}.target", path) if "target" in iv else None
        interval = Interval(
            name=str(iv.get("name", iv["phrase"])), phrase=iv["phrase"].strip(), low=low, high=high,
            low_closed=bool(iv.get("min_closed", False)), high_closed=bool(iv.get("max_closed", True)), target=target,
        )
        if not (math.isfinite(interval.target) and interval.contains(interval.target)):
            raise InputError(path, f"{where}.target {_fmt(interval.target)} lies outside the interval {interval.notation()}",
                             "give a target inside the interval (or leave it out: midpoint, min + 5 or max - 3)")
        intervals.append(interval)
    intervals.sort(key=lambda x: (x.low, not x.low_closed))
    check_intervals(name, intervals, path)
    return Structure(name=name, labels=tuple(labels), help=str(table.get("help", "")), intervals=tuple(intervals))


def check_intervals(name: str, intervals: Iterable[Interval], path: Path | str = "rules") -> None:
    """Refuse intervals (sorted by low bound) that overlap or leave a gap between them."""
    ivs = list(intervals)
    for a, b in zip(ivs, ivs[1:]):
        if a.high > b.low or (a.high == b.low and a.high_closed and b.low_closed):
            raise InputError(path, f"{name} intervals {a.name} {a.notation()} and {b.name} {b.notation()} overlap", "make each rate fall in at most one interval")
        if a.high < b.low or (a.high == b.low and not a.high_closed and not b.low_closed):
            raise InputError(path, f"{name} intervals {a.name} {a.notation()} and {b.name} {b.notation()} leave a gap", "make neighbouring intervals meet (one of them closed at the shared bound)")


def _parse(doc: Mapping[str, Any], path: Path | str, base: Rules | None) -> Rules:
    labels: dict[int, str] = dict(base.labels) if base is not None and not doc.get("replace") else {}
    for key, value in (doc.get("labels") or {}).items():
        try:
            labels[int(key)] = str(value)
        except ValueError:
            raise InputError(path, f"labels key {key!r} is not an integer label id", "fix the rules file") from None
    tables = doc.get("structures")
    if tables is not None and not isinstance(tables, dict):
        raise InputError(path, "structures must be a table of groups", "see docs/rules.md")
    parsed = [_parse_structure(n, t, path) for n, t in (tables or {}).items()]
    if base is not None and not doc.get("replace"):
        mine = {s.name: s for s in parsed}
        merged = [mine.pop(s.name, s) for s in base.structures] + list(mine.values())
    else:
        merged = parsed
    if not merged:
        raise InputError(path, "defines no structure groups", "add [structures.NAME] tables")
    return Rules(labels=labels, structures=tuple(merged), source=str(path), raw=dict(doc))


_default: Rules | None = None


def default_rules() -> Rules:
    """The built-in rules (BrainEditor's intervals)."""
    global _default
    if _default is None:
        _default = _parse(_read_toml(DEFAULT_RULES_PATH), "built-in rules", None)
    return _default


def load_rules(path: str | os.PathLike[str] | None = None) -> Rules:
    """The built-in rules, overridden by the TOML file at ``path`` when given."""
    if path is None:
        return default_rules()
    p = Path(path)
    return _parse(_read_toml(p), p, default_rules())


def rules_from_text(text: str, source: str = "rules text") -> Rules:
    """Rules from a TOML string (e.g. the copy saved inside a model folder)."""
    import tomllib

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(source, f"is not valid TOML ({exc})", "fix the syntax") from None
    return _parse(doc, source, default_rules())


def group_volumes(label_volumes: Mapping[int, float], rules: Rules | None = None) -> dict[str, float]:
    """Sum per-label volumes (mm^3) into structure-group volumes."""
    rules = rules or default_rules()
    return {s.name: float(sum(label_volumes.get(lab, 0.0) for lab in s.labels)) for s in rules.structures}


def label_volumes(labels: Any, voxel_volume: float) -> dict[int, float]:
    """Volume in mm^3 of every non-zero label id of a label array."""
    import numpy as np

    ids, counts = np.unique(np.asarray(labels), return_counts=True)
    return {int(i): float(c) * voxel_volume for i, c in zip(ids, counts) if i != 0}


def change_rate(prior_volume: float, target_volume: float) -> float:
    """R = (Vt - Vp) / Vp * 100; NaN when the prior volume is zero."""
    if prior_volume <= 0:
        return math.nan
    return (target_volume - prior_volume) / prior_volume * 100.0
