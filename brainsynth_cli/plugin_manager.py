"""Finding, loading and guarding plugins; building the registries from their hooks.

Built-in plugins load first (the module names in :data:`BUILTIN_PLUGINS`), then the entry
points of group ``brainsynth``. Each load is guarded: a plugin that fails to import, declares
hooks that do not exist, or raises or registers something invalid inside a hook is reported
in one line and left out; the rest of the tool keeps working.

Environment:

- ``BRAINSYNTH_DISABLE_PLUGINS=a,b`` blocks plugins by name (they are not imported).
- ``BRAINSYNTH_STRICT_PLUGINS=1`` re-raises the first plugin failure instead.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

import pluggy

from brainsynth_cli import __version__, hookspecs
from brainsynth_cli.errors import PluginError
from brainsynth_cli.registry import KINDS, Registry
from brainsynth_cli.specs import Spec

ENTRY_POINT_GROUP = "brainsynth"
BUILTIN_PACKAGE = "brainsynth_plugins"

#: Built-in plugin modules, loaded in this order before any third-party plugin.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "brainsynth_plugins.simulate",
    "brainsynth_plugins.segment",
    "brainsynth_plugins.prompts",
    "brainsynth_plugins.blend",
    "brainsynth_plugins.pairs",
    "brainsynth_plugins.text",
    "brainsynth_plugins.ip2p",
    "brainsynth_plugins.ldm",
    "brainsynth_plugins.deform",
    "brainsynth_plugins.evaluate",
    "brainsynth_plugins.demo",
)


@dataclass
class PluginRecord:
    """What ``brainsynth plugins`` shows about one plugin."""

    name: str
    source: str  # "built-in", "distribution NAME", or "registered at runtime"
    version: str | None = None
    status: str = "loaded"  # loaded | failed | blocked
    error: str | None = None
    provides: dict[str, list[str]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def as_dict(self, registries: dict[str, Registry] | None = None) -> dict[str, Any]:
        requires = []
        if registries is not None:
            seen = set()
            for kind, names in self.provides.items():
                if kind not in registries:
                    continue
                for n in names:
                    for req in registries[kind].get(n).requires:
                        key = (req.kind, req.name)
                        if key not in seen:
                            seen.add(key)
                            requires.append(
                                {"kind": req.kind, "name": req.name, "present": req.present(), "hint": req.hint}
                            )
        return {
            "name": self.name,
            "version": self.version,
            "source": self.source,
            "status": self.status,
            "error": self.error,
            "provides": {k: v for k, v in self.provides.items() if v},
            "requires": requires,
            "problems": list(self.problems),
        }


def _env_list(var: str) -> set[str]:
    return {x.strip() for x in os.environ.get(var, "").split(",") if x.strip()}


def strict() -> bool:
    return os.environ.get("BRAINSYNTH_STRICT_PLUGINS", "").strip() not in ("", "0", "false", "no")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class PluginManager:
    """The plugins of one process and the registries they fill."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self._registries: dict[str, Registry] | None = None
        self._messages: list[str] = []

    # -- loading -------------------------------------------------------------------------
    def load(self, builtins: tuple[str, ...] = BUILTIN_PLUGINS, entry_points: bool = True) -> None:
        disabled = _env_list("BRAINSYNTH_DISABLE_PLUGINS")
        for modname in builtins:
            name = modname.removeprefix(BUILTIN_PACKAGE + ".")
            record = PluginRecord(name=name, source="built-in", version=__version__)
            self._load_one(record, disabled, lambda m=modname: importlib.import_module(m))
        if entry_points:
            for ep in self._entry_points():
                dist = getattr(ep, "dist", None)
                record = PluginRecord(
                    name=ep.name,
                    source=f"distribution {dist.name}" if dist is not None else "entry point",
                    version=dist.version if dist is not None else None,
                )
                self._load_one(record, disabled, ep.load)

    @staticmethod
    def _entry_points() -> list[Any]:
        from importlib.metadata import entry_points

        return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)

    def _load_one(self, record: PluginRecord, disabled: set[str], loader: Callable[[], Any]) -> None:
        if record.name in self.records:
            record.status, record.error = "failed", f"a plugin named {record.name!r} is already loaded"
            self._fail(record, PluginError(record.error))
            return
        self.records[record.name] = record
        if record.name in disabled:
            record.status = "blocked"
            record.error = "blocked by BRAINSYNTH_DISABLE_PLUGINS"
            return
        try:
            obj = loader()
            self._register_checked(obj, record.name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # guarded: a broken plugin (even one calling sys.exit) must not break the tool
            record.status, record.error = "failed", _describe(exc)
            self._fail(record, exc)

    def _register_checked(self, obj: Any, name: str) -> None:
        self.pm.register(obj, name=name)
        try:
            self.pm.check_pending()
        except Exception:
            self.pm.unregister(name=name)
            raise
        self._registries = None

    def _fail(self, record: PluginRecord, exc: BaseException) -> None:
        if strict():
            if not isinstance(exc, Exception):  # SystemExit and the like: fail as a plugin error
                raise PluginError(f"plugin {record.name!r} failed to load ({record.error})") from exc
            raise exc
        self._messages.append(
            f"brainsynth: plugin {record.name!r} failed to load and is left out ({record.error})"
        )

    def register(self, obj: Any, name: str) -> None:
        """Register a plugin object at runtime (tests, notebooks, embedding applications)."""
        record = PluginRecord(name=name, source="registered at runtime")
        if name in self.records:
            raise PluginError(f"a plugin named {name!r} is already loaded")
        self._register_checked(obj, name)
        self.records[name] = record

    def unregister(self, name: str) -> None:
        if self.pm.get_plugin(name) is not None:
            self.pm.unregister(name=name)
        self.records.pop(name, None)
        self._registries = None

    # -- registries ----------------------------------------------------------------------
    @property
    def registries(self) -> dict[str, Registry]:
        if self._registries is None:
            self._registries = self._build_registries()
        return self._registries

    def registry(self, kind: str) -> Registry:
        return self.registries[kind]

    def _build_registries(self) -> dict[str, Registry]:
        registries = {kind: Registry(kind) for kind in KINDS}
        for record in self.records.values():
            record.provides = {k: v for k, v in record.provides.items() if k not in KINDS}
            record.problems = [p for p in record.problems if p.startswith("register_commands")]
        for kind, hookname in KINDS.items():
            caller = getattr(self.pm.hook, hookname)
            for impl in caller.get_hookimpls():
                record = self.records.get(impl.plugin_name)
                if record is None or record.status != "loaded":
                    continue
                collected: list[Spec] = []

                def register(spec: Spec, _c: list[Spec] = collected) -> None:
                    if not isinstance(spec, Spec):
                        raise PluginError(f"register() takes a brainsynth_cli.specs.Spec, got {type(spec).__name__}")
                    _c.append(spec)

                try:
                    impl.function(register=register)
                    for spec in collected:
                        spec.validate()
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:
                    if strict():
                        raise
                    problem = f"{hookname} raised {_describe(exc)}"
                    record.problems.append(problem)
                    self._messages.append(f"brainsynth: plugin {record.name!r}: {problem}; its {kind}s are left out")
                    continue
                for spec in collected:
                    try:
                        registries[kind].add(spec, record.name)
                    except PluginError as exc:
                        if strict():
                            raise
                        record.problems.append(str(exc))
                        self._messages.append(f"brainsynth: {exc}")
                        continue
                    record.provides.setdefault(kind, []).append(spec.name)
        return registries

    def register_commands(self, app: Any) -> None:
        """Let every loaded plugin add its commands to ``app`` (guarded like loading).

        Commands already on ``app`` belong to the kernel. A plugin that registers a command
        under a name already taken (by the kernel or an earlier plugin) does not replace it:
        its command is left out and the clash is reported in one line naming both plugins.
        """
        for record in self.records.values():
            record.provides.pop("command", None)
            record.problems = [p for p in record.problems if not p.startswith("register_commands")]
        owners: dict[str, str] = {_command_name(info): "kernel" for info in (*app.registered_commands, *app.registered_groups)}
        for impl in self.pm.hook.register_commands.get_hookimpls():
            record = self.records.get(impl.plugin_name)
            if record is None or record.status != "loaded":
                continue
            before_cmds, before_groups = list(app.registered_commands), list(app.registered_groups)
            try:
                impl.function(app=app)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                app.registered_commands[:], app.registered_groups[:] = before_cmds, before_groups
                if strict():
                    raise
                problem = f"register_commands raised {_describe(exc)}"
                record.problems.append(problem)
                self._messages.append(f"brainsynth: plugin {impl.plugin_name!r}: {problem}; its commands are left out")
                continue
            kept_cmds: list[Any] = []
            kept_groups: list[Any] = []
            names: list[str] = []
            for kind, before, kept in (("command", before_cmds, kept_cmds), ("group", before_groups, kept_groups)):
                current = app.registered_commands if kind == "command" else app.registered_groups
                for info in current[len(before):]:
                    name = _command_name(info)
                    owner = owners.get(name)
                    if owner is not None:
                        first = "the kernel (built-in)" if owner == "kernel" else f"plugin {owner!r}"
                        problem = (f"register_commands: command {name!r} is registered by both {first} and plugin "
                                   f"{impl.plugin_name!r}; the first is kept")
                        if strict():
                            raise PluginError(problem)
                        record.problems.append(problem)
                        self._messages.append(f"brainsynth: command {name!r} is registered by both {first} and plugin "
                                              f"{impl.plugin_name!r}; plugin {impl.plugin_name!r}'s is left out "
                                              "(disable one with BRAINSYNTH_DISABLE_PLUGINS)")
                        continue
                    owners[name] = impl.plugin_name
                    kept.append(info)
                    names.append(name)
            app.registered_commands[:] = before_cmds + kept_cmds
            app.registered_groups[:] = before_groups + kept_groups
            record.provides.setdefault("command", []).extend(names)

    # -- reporting -----------------------------------------------------------------------
    def flush_messages(self, stream: TextIO | None = None) -> None:
        """Print each plugin problem once, one line each."""
        stream = stream or sys.stderr
        for msg in self._messages:
            print(msg, file=stream)
        self._messages.clear()

    def report(self) -> list[dict[str, Any]]:
        regs = self.registries
        return [rec.as_dict(regs) for rec in self.records.values()]


def _command_name(info: Any) -> str:
    name = getattr(info, "name", None)
    if name:
        return str(name)
    callback = getattr(info, "callback", None)
    if callback is None and getattr(info, "typer_instance", None) is not None:
        return str(info.typer_instance.info.name)
    return str(getattr(callback, "__name__", "?")).replace("_", "-")


_manager: PluginManager | None = None


def get_manager() -> PluginManager:
    """The process-wide plugin manager, loaded on first use."""
    global _manager
    if _manager is None:
        manager = PluginManager()
        manager.load()
        _manager = manager
    return _manager


def reset_manager() -> None:
    """Forget the loaded plugins (the next :func:`get_manager` loads them again)."""
    global _manager
    _manager = None


def registry(kind: str) -> Registry:
    """Shortcut: the registry of ``kind`` of the process-wide manager."""
    return get_manager().registry(kind)
