"""Limits on what brainsynth reads and accepts: image sizes (from headers, before any data is
read) and numeric options (finite, within sane bounds). Errors are one line (exit status 2).

``BRAINSYNTH_MAX_VOXELS`` raises the voxel limit of one image (default 2^28, about 645^3: a
whole head at 0.4 mm); ``BRAINSYNTH_MAX_PIXELS`` the pixel limit of one PNG slice (default 2^26,
8192^2).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from brainsynth_cli.errors import InputError, UserError

DEFAULT_MAX_VOXELS = 2**28
DEFAULT_MAX_PIXELS = 2**26


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(float(raw))
    except ValueError:
        raise UserError(f"{name}={raw!r} is not a number; e.g. {name}={default}") from None
    if value < 1:
        raise UserError(f"{name} must be positive, got {raw}")
    return value


def max_voxels() -> int:
    return _env_int("BRAINSYNTH_MAX_VOXELS", DEFAULT_MAX_VOXELS)


def max_pixels() -> int:
    return _env_int("BRAINSYNTH_MAX_PIXELS", DEFAULT_MAX_PIXELS)


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_image_size(path: Any, shape: Sequence[int], itemsize: int | None = None) -> None:
    """Refuse an image whose header claims more voxels than brainsynth reads (from the header
    alone, before any data is read)."""
    dims = [int(s) for s in shape]
    if any(s < 0 for s in dims):
        raise InputError(path, f"header has a negative size {tuple(dims)}", "the file is corrupt; re-export it")
    n = math.prod(dims) if dims else 0
    limit = max_voxels()
    if n > limit:
        size = " x ".join(str(s) for s in dims)
        mem = f", {_gib(n * max(4, itemsize or 4))} in memory" if n else ""
        raise InputError(path, f"header claims {size} voxels ({n:.3g}{mem}), more than the {limit:.3g} brainsynth reads",
                         "check the header (a corrupt or wrong file?), or set BRAINSYNTH_MAX_VOXELS if the image is real")


def check_png_size(path: Any, width: int, height: int) -> None:
    n = int(width) * int(height)
    limit = max_pixels()
    if n > limit:
        raise InputError(path, f"is {width} x {height} pixels, more than the {limit:.3g} brainsynth reads",
                         "give a brain MRI slice (or set BRAINSYNTH_MAX_PIXELS if the image is real)")


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None, integer: bool = False,
                 low_open: bool = False, example: str | None = None) -> Any:
    """Refuse a value that is not a finite number in [low, high] (``(low, high]`` with
    ``low_open``), or not an integer when ``integer``; returns it as int or float."""
    bounds = f"{'(' if low_open else '['}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}]"
    hint = f"; e.g. {example}" if example else ""
    kind = "an integer" if integer else "a finite number"
    if isinstance(value, bool):
        raise UserError(f"{name} must be {kind} in {bounds}, got {value!r}{hint}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{name} must be {kind} in {bounds}, got {value!r}{hint}") from None
    if not math.isfinite(number) or (integer and number != int(number)):
        raise UserError(f"{name} must be {kind} in {bounds}, got {value!r}{hint}")
    if (low is not None and (number < low or (low_open and number == low))) or (high is not None and number > high):
        raise UserError(f"{name} must be {kind} in {bounds}, got {value!r}{hint}")
    return int(number) if integer else number


#: Seeds every command accepts (numpy's and torch's generators take them all).
MAX_SEED = 2**32 - 1
#: The most worker processes a command takes (--jobs).
MAX_JOBS = 256


def check_seed(value: Any, name: str = "--seed") -> int:
    return check_number(name, value, low=0, high=MAX_SEED, integer=True, example=f"{name} 0")


# ---------------------------------------------------------------------------------------------
# generator settings (``train --set KEY=VALUE``)
# ---------------------------------------------------------------------------------------------
#: A rule per setting: ("int", low, high), ("float", low, high[, low_open]), ("bool",),
#: ("choice", values), ("ints", low, high, min_len, max_len), ("bools", min_len, max_len),
#: ("strs", min_len, max_len), ("str",), ("opt-float", low, high[, low_open]) (None allowed).
Rule = tuple


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _in(v: float, low: float, high: float, low_open: bool = False) -> bool:
    return (v > low if low_open else v >= low) and v <= high


def _want(rule: Rule) -> str:
    kind = rule[0]
    if kind in ("int", "float", "opt-float"):
        lo, hi = rule[1], rule[2]
        left = "(" if len(rule) > 3 and rule[3] else "["
        what = "an integer" if kind == "int" else "a finite number"
        return f"{what} in {left}{lo:g}, {hi:g}]" + (" or null" if kind == "opt-float" else "")
    if kind == "bool":
        return "true or false"
    if kind == "choice":
        return "one of " + ", ".join(str(c) for c in rule[1])
    if kind == "ints":
        return f"{rule[3]} to {rule[4]} comma-separated integers in [{rule[1]:g}, {rule[2]:g}]"
    if kind == "bools":
        return f"{rule[1]} to {rule[2]} comma-separated true/false values"
    if kind == "strs":
        return f"{rule[1]} to {rule[2]} comma-separated names"
    return "text"


def _valid(value: Any, rule: Rule) -> bool:
    kind = rule[0]
    if kind == "int":
        return _is_number(value) and float(value) == int(value) and _in(float(value), rule[1], rule[2])
    if kind in ("float", "opt-float"):
        if value is None and kind == "opt-float":
            return True
        return _is_number(value) and _in(float(value), rule[1], rule[2], len(rule) > 3 and bool(rule[3]))
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "choice":
        return any(value == c and type(value) is type(c) for c in rule[1])
    if kind in ("ints", "bools", "strs"):
        items = value if isinstance(value, list) else [value]
        lo_n, hi_n = (rule[3], rule[4]) if kind == "ints" else (rule[1], rule[2])
        if not lo_n <= len(items) <= hi_n:
            return False
        if kind == "ints":
            return all(_valid(v, ("int", rule[1], rule[2])) for v in items)
        if kind == "bools":
            return all(isinstance(v, bool) for v in items)
        return all(isinstance(v, str) and v.isidentifier() for v in items)
    if kind == "str":
        return isinstance(value, str)
    return True


def check_settings(cfg: dict[str, Any], rules: dict[str, Rule], *, nested: Sequence[str] = ()) -> None:
    """Refuse a setting outside its rule (``--set KEY=VALUE`` values, after parsing), and unknown
    keys inside the ``nested`` dictionaries (model sizes such as ``vae.KEY``). One line."""
    for head in nested:
        sub = cfg.get(head)
        if isinstance(sub, dict):
            known = sorted(k.partition(".")[2] for k in rules if k.startswith(head + "."))
            for key in sub:
                if f"{head}.{key}" not in rules and key != "sample_size":
                    raise UserError(f"--set {head}.{key}: unknown setting; known: {', '.join(f'{head}.{k}' for k in known)}")
    for key, rule in rules.items():
        head, _, tail = key.partition(".")
        container = cfg.get(head) if tail else cfg
        name = tail or head
        if not isinstance(container, dict) or name not in container:
            continue
        value = container[name]
        if not _valid(value, rule):
            shown = value if not isinstance(value, str) or len(value) <= 40 else value[:37] + "..."
            raise UserError(f"--set {key}={shown!r}: must be {_want(rule)}")
