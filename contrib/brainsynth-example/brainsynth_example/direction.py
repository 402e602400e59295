"""A prompt builder that only says which way each described structure changed."""

from __future__ import annotations

import math

from brainsynth_cli.errors import UserError
from brainsynth_cli.interfaces import Change
from brainsynth_cli.structures import Interval, Rules, default_rules

VERBS = {1: "grows", -1: "shrinks"}


class DirectionPromptBuilder:
    def __init__(self, rules: Rules | None = None, threshold: float = 1.0) -> None:
        self.rules = rules or default_rules()
        self.threshold = threshold

    def build(self, change: Change) -> str | None:
        parts = []
        for s in self.rules.described():
            if change.only is not None and s.name != change.only:
                continue
            rate = change.rates.get(s.name)
            if rate is None or math.isnan(rate) or abs(rate) < self.threshold:
                continue
            parts.append(f"{s.name} {VERBS[1 if rate > 0 else -1]}")
        return ", ".join(parts) or None

    def parse(self, prompt: str) -> dict[str, Interval]:
        out: dict[str, Interval] = {}
        for part in (p.strip() for p in prompt.split(",")):
            name, _, verb = part.rpartition(" ")
            if name not in self.rules.names() or verb not in VERBS.values():
                known = ", ".join(f"'{s.name} grows|shrinks'" for s in self.rules.described())
                raise UserError(f"cannot read prompt part {part!r}; this builder knows {known}")
            if verb == "grows":
                out[name] = Interval("grows", part, low=self.threshold, low_closed=True)
            else:
                out[name] = Interval("shrinks", part, high=-self.threshold, high_closed=True)
        return out
