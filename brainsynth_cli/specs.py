"""What a plugin registers: a small, cheap description of one component."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Union

from brainsynth_cli.errors import PluginError, UserError

RequirementKind = Literal["module", "program", "env"]


@dataclass(frozen=True)
class Requirement:
    """Something a component needs that may be missing on a machine.

    ``kind`` is ``"module"`` (a Python import name, usually installed by a pip extra),
    ``"program"`` (an executable on PATH) or ``"env"`` (an environment variable that must be
    set, e.g. ``FREESURFER_HOME``). ``hint`` tells the user how to get it.
    """

    kind: RequirementKind
    name: str
    hint: str = ""

    def present(self) -> bool:
        if self.kind == "module":
            try:
                return importlib.util.find_spec(self.name) is not None
            except (ImportError, ValueError):
                return False
        if self.kind == "program":
            return shutil.which(self.name) is not None
        return bool(os.environ.get(self.name))

    def describe(self) -> str:
        label = {"module": "python module", "program": "program", "env": "environment variable"}
        return f"{label[self.kind]} {self.name}"


def module(name: str, extra: str | None = None, hint: str = "") -> Requirement:
    """A Python module requirement; ``extra`` names the pip extra that installs it."""
    if not hint and extra:
        hint = f'pip install "brainsynth[{extra}]"'
    elif not hint:
        hint = f"pip install {name}"
    return Requirement("module", name, hint)


def program(name: str, hint: str = "") -> Requirement:
    """An executable that must be on PATH."""
    return Requirement("program", name, hint or f"install {name} and put it on PATH")


Factory = Union[str, Callable[..., Any]]


@dataclass(frozen=True)
class Spec:
    """One component a plugin provides.

    ``name`` is what users type (``--segmenter atlas``): lower case letters, digits, ``-``,
    ``_``, ``+`` and ``.``. ``factory`` is a ``"package.module:Attribute"`` string or a
    callable; it is imported only when the component is used. ``requires`` lists what must
    be installed (shown by ``brainsynth plugins``; a missing requirement gives a one-line
    error when the component is selected). ``help`` is one line for listings.
    """

    name: str
    factory: Factory
    help: str = ""
    requires: tuple[Requirement, ...] = field(default_factory=tuple)

    def validate(self) -> None:
        import re

        if not isinstance(self.name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_+.\-]*", self.name):
            raise PluginError(f"invalid component name {self.name!r}: use lower case letters, digits, - _ + .")
        if not (callable(self.factory) or (isinstance(self.factory, str) and ":" in self.factory)):
            raise PluginError(
                f"component {self.name!r}: factory must be a callable or a 'module:attribute' string"
            )
        if "\n" in self.help:
            raise PluginError(f"component {self.name!r}: help must be one line")
        for req in self.requires:
            if not isinstance(req, Requirement):
                raise PluginError(f"component {self.name!r}: requires must hold Requirement objects")

    def missing(self) -> list[Requirement]:
        return [r for r in self.requires if not r.present()]

    def resolve(self) -> Callable[..., Any]:
        """Import the factory (checking requirements first)."""
        gone = self.missing()
        if gone:
            req = gone[0]
            raise UserError(f"{self.name} needs {req.describe()}, which is missing; {req.hint}")
        if callable(self.factory):
            return self.factory
        mod_name, _, attr = self.factory.partition(":")
        mod = importlib.import_module(mod_name)
        obj: Any = mod
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    def create(self, **options: Any) -> Any:
        """Import the factory and call it with ``options``."""
        return self.resolve()(**options)
