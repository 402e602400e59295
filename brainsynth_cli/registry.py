"""A named registry of components of one kind (segmenters, blenders, ...)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterator

from brainsynth_cli.errors import PluginError, UserError
from brainsynth_cli.specs import Spec

#: The kinds of component, each with the hook that fills its registry.
KINDS: dict[str, str] = {
    "segmenter": "register_segmenters",
    "prompt-builder": "register_prompt_builders",
    "blender": "register_blenders",
    "text-encoder": "register_text_encoders",
    "generator": "register_generators",
    "measure": "register_measures",
}


@dataclass(frozen=True)
class Entry:
    spec: Spec
    plugin: str


class Registry:
    """Components of one kind by name. Duplicate names are refused."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def add(self, spec: Spec, plugin: str) -> None:
        spec.validate()
        if spec.name in self._entries:
            other = self._entries[spec.name].plugin
            raise PluginError(
                f"{self.kind} {spec.name!r} is registered by both plugin {other!r} and plugin "
                f"{plugin!r}; disable one with BRAINSYNTH_DISABLE_PLUGINS"
            )
        self._entries[spec.name] = Entry(spec, plugin)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Spec]:
        return (e.spec for e in self.entries())

    def __len__(self) -> int:
        return len(self._entries)

    def plugin_of(self, name: str) -> str:
        return self._entries[name].plugin

    def get(self, name: str) -> Spec:
        """The spec called ``name``; a one-line :class:`UserError` naming close matches if none."""
        try:
            return self._entries[name].spec
        except KeyError:
            pass
        names = self.names()
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        available = ", ".join(names) if names else "none (no plugin provides one)"
        raise UserError(f"unknown {self.kind} {name!r}; {hint}available: {available}") from None

    def create(self, name: str, **options: object) -> object:
        """Look up ``name`` and build the component with ``options``."""
        return self.get(name).create(**options)
