"""Logging of progress and diagnostics on stderr (results stay on stdout).

Modules use ``logging.getLogger(__name__)``: every name under ``brainsynth_cli`` and
``brainsynth_plugins`` (third-party plugins may log under ``brainsynth_plugins.NAME`` or ask
:func:`get_logger`) goes to one stderr handler that :func:`configure` sets up from the global
``-v/--verbose`` and ``-q/--quiet`` options:

- default: info lines (progress off a terminal, checkpoints written, ...), warnings, errors;
- ``-q``: warnings and errors only (no progress, no info); ``-qq``: errors only;
- ``-v``: debug lines of brainsynth too; ``-vv``: also the debug lines of the libraries
  (accelerate, diffusers, ...).

On a terminal a line is just the message; otherwise (a log file, a cluster job) it starts with
the time and the level, e.g. ``2025-01-31 14:02:11 INFO train: stage 2 (unet) step 120/400 ...``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator

#: The logger namespaces brainsynth configures (the kernel's modules and the plugins').
NAMESPACES: tuple[str, ...] = ("brainsynth_cli", "brainsynth_plugins")

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%d %H:%M:%S"

_state = {"depth": 0}


class StderrHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is when a record is emitted (so output
    redirection and test captures set up after configuration are honoured)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):  # the current stderr
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # the base class assigns it once; we always follow sys.stderr
        pass


class _Formatter(logging.Formatter):
    """The message alone on a terminal; time and level first otherwise (decided per record)."""

    def __init__(self) -> None:
        super().__init__(PLAIN_FORMAT, DATE_FORMAT)
        self._bare = logging.Formatter("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if _is_tty(sys.stderr):
            return self._bare.format(record)
        return super().format(record)


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def level_for(verbose: int = 0, quiet: int = 0) -> int:
    """The level of the brainsynth loggers for ``-v`` x ``verbose`` and ``-q`` x ``quiet``."""
    score = verbose - quiet
    if score >= 1:
        return logging.DEBUG
    if score == 0:
        return logging.INFO
    if score == -1:
        return logging.WARNING
    return logging.ERROR


def _snapshot() -> list[tuple[logging.Logger, list[logging.Handler], int, bool]]:
    loggers = [logging.getLogger(name) for name in NAMESPACES] + [logging.getLogger()]
    return [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers]


def configure(verbose: int = 0, quiet: int = 0) -> Callable[[], None]:
    """(Re)configure the brainsynth loggers (one stderr handler each, replacing ours); returns a
    function that puts back what was there before (the CLI calls it when the command ends, so
    library use after a command, and an outer command after a nested one, are as they were)."""
    before = _snapshot()
    level = level_for(verbose, quiet)
    for name in NAMESPACES:
        logger = logging.getLogger(name)
        for h in [h for h in logger.handlers if isinstance(h, StderrHandler)]:
            logger.removeHandler(h)
        handler = StderrHandler()
        handler.setFormatter(_Formatter())
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False  # no second copy through a root handler someone else configured
    root = logging.getLogger()
    for h in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(h)
    if verbose - quiet >= 2:  # -vv: the libraries' debug lines as well
        handler = StderrHandler()
        handler.setFormatter(_Formatter())
        root.addHandler(handler)
        root.setLevel(logging.DEBUG)

    def restore() -> None:
        for logger, handlers, lvl, propagate in before:
            for h in list(logger.handlers):
                logger.removeHandler(h)
            for h in handlers:
                logger.addHandler(h)
            logger.setLevel(lvl)
            logger.propagate = propagate

    return restore


def get_logger(name: str) -> logging.Logger:
    """A logger under the configured namespace: ``brainsynth_plugins.NAME`` unless ``name``
    already starts with one of :data:`NAMESPACES` (for third-party plugins)."""
    if name.split(".")[0] in NAMESPACES:
        return logging.getLogger(name)
    return logging.getLogger(f"brainsynth_plugins.{name}")


@contextlib.contextmanager
def command() -> Iterator[None]:
    """Around each run of the CLI: a command run inside another (the demo's steps) keeps the
    caller's ``-v``/``-q`` unless it gives its own (see :func:`depth`)."""
    _state["depth"] += 1
    try:
        yield
    finally:
        _state["depth"] -= 1


def depth() -> int:
    """How many CLI runs are under way, the outermost counting 1 (0 outside :func:`command`)."""
    return _state["depth"]
