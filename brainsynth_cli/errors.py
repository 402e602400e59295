"""Errors. A :class:`UserError` is something the user can fix: the CLI prints its message
as one line on stderr and exits with status 2 (a traceback only with ``--debug``)."""

from __future__ import annotations

from pathlib import Path


class BrainsynthError(Exception):
    """Base class of brainsynth's own errors."""


class UserError(BrainsynthError):
    """A problem with the user's input, options or environment (exit status 2)."""

    exit_code = 2


class InputError(UserError):
    """A file the user gave cannot be used. The message names the file and the fix."""

    def __init__(self, path: str | Path | None, problem: str, fix: str = "") -> None:
        self.path = Path(path) if path is not None else None
        self.problem = problem
        self.fix = fix
        where = f"{path}: " if path is not None else ""
        super().__init__(f"{where}{problem}" + (f"; {fix}" if fix else ""))


class PluginError(BrainsynthError):
    """A plugin failed to import or registered something invalid."""


def caused_by_interrupt(exc: BaseException) -> bool:
    """True when ``exc`` is, or was raised while handling, a KeyboardInterrupt (Ctrl-C arriving
    inside compiled code such as numba comes back as another exception)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False
