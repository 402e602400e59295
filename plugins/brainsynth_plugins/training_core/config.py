"""A training run's configuration: ``--set KEY=VALUE`` overrides on top of a preset, and the check
that the network sizes it names fit together (built without memory before anything is written)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from brainsynth_cli.errors import UserError


def parse_setting(text: str) -> Any:
    """The value of a ``--set KEY=VALUE`` override: JSON if it parses, a comma list, else the text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:
        return [parse_setting(t.strip()) for t in text.split(",") if t.strip()]
    return text


def apply_overrides(cfg: dict[str, Any], sets: dict[str, Any], *, fixed: tuple[str, ...] = (),
                    unlisted: tuple[str, ...] = ()) -> None:
    """Set ``cfg[KEY]`` (or ``cfg[PART][KEY]`` for ``PART.KEY``) from ``--set`` values, parsing text
    values. An unknown key, or one of ``fixed`` (set by options, not ``--set``), is refused in one
    line listing the known keys (without ``fixed`` and ``unlisted``)."""
    for key, value in sets.items():
        head, _, tail = key.partition(".")
        if head not in cfg or head in fixed or (tail and not isinstance(cfg[head], dict)):
            known = ", ".join(sorted(k for k in cfg if k not in fixed + unlisted))
            raise UserError(f"--set {key}: unknown setting; known: {known} (model sizes as vae.KEY / unet.KEY)")
        v = parse_setting(value) if isinstance(value, str) else value
        if tail:
            cfg[head][tail] = v
        else:
            cfg[head] = v


@contextlib.contextmanager
def sizes_must_fit() -> Iterator[None]:
    """Networks built inside go on torch's ``meta`` device (no memory, no weights); sizes that do
    not fit together (``--set vae.*``/``unet.*``) fail in one line."""
    import torch

    try:
        with torch.device("meta"):
            yield
    except UserError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, IndexError, RuntimeError, AssertionError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"the model sizes do not fit together ({first[:160]}); check the --set vae.*/unet.* values") from None


def check_blender(cfg: dict[str, Any]) -> None:
    """``--set blender=NAME`` (the edit path's merge a model recommends) names a registered blender."""
    from brainsynth_cli.plugin_manager import registry

    if cfg["blender"] not in registry("blender"):
        raise UserError(f"--set blender={cfg['blender']}: unknown blender; use one of {', '.join(registry('blender').names())}")
