"""Progress reporting for long work: a rich bar on a terminal, plain log lines otherwise.

Off a terminal (a log file, a cluster job, a pipe) the progress goes through logging (logger
``brainsynth_cli.progress``, level info) as one plain line at most every N seconds, e.g.::

    2025-01-31 14:02:11 INFO train: stage 2 (unet) loss 0.0612; step 120/400 (30 %), 1.1 s/step, ~5 min left

N is 20 by default, or the environment variable ``BRAINSYNTH_PROGRESS_EVERY`` (seconds; 0: every
update). ``brainsynth -q`` shows neither the bar nor the lines.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator

from brainsynth_cli.interfaces import Progress

log = logging.getLogger(__name__)

#: Seconds between two plain progress lines, unless ``BRAINSYNTH_PROGRESS_EVERY`` says otherwise:
#: 20, so that with a few seconds per item a log file shows progress at least every 30 s (at 30
#: the demo's log had gaps of 31-35 s).
DEFAULT_EVERY = 20.0
ENV_EVERY = "BRAINSYNTH_PROGRESS_EVERY"


def progress_every() -> float:
    """Seconds between two plain progress lines: ``BRAINSYNTH_PROGRESS_EVERY`` or 20."""
    from brainsynth_cli.errors import UserError

    text = os.environ.get(ENV_EVERY, "").strip()
    if not text:
        return DEFAULT_EVERY
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise UserError(f"{ENV_EVERY}={text!r}: expected a number of seconds >= 0 (e.g. 30, or 0 for every step)")
    return value


def _is_tty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


@contextlib.contextmanager
def progress_bar(description: str, total: float | None = None, *, enabled: bool | None = None, unit: str | None = None,
                 every: float | None = None, clock: Callable[[], float] = time.monotonic) -> Iterator[Progress]:
    """Yield a :data:`~brainsynth_cli.interfaces.Progress` callback ``(done, total, message)``.

    ``enabled=None`` (the default): a rich bar on stderr when it is a terminal, plain log lines
    (:class:`PlainProgress`) otherwise, nothing under ``-q``. ``enabled=True`` forces the bar,
    ``enabled=False`` shows nothing. ``unit`` names what is counted (``step``: "step 120/400,
    1.1 s/step"); ``every`` (seconds between lines, default :func:`progress_every`) and ``clock``
    are for the plain lines.
    """
    if enabled is False or (enabled is None and not log.isEnabledFor(logging.INFO)):
        yield lambda done, tot, message="": None
        return
    if enabled is None and not _is_tty(sys.stderr):
        plain = PlainProgress(description, total, unit=unit, every=progress_every() if every is None else every, clock=clock)
        stop = plain.heartbeat()
        try:
            yield plain
        finally:
            stop()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with RichProgress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[message]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=False,
    ) as bar:
        task = bar.add_task(description, total=total, message="")

        def update(done: float, tot: float, message: str = "") -> None:
            bar.update(task, completed=done, total=tot, message=message)

        yield update


class PlainProgress:
    """A progress callback writing one info line at most every ``every`` seconds, with the count,
    the percentage, the time per unit and the time left (measured since the first update of a
    phase: a phase starts again when the total changes or the count goes back, e.g. stage 2).
    The last update of a phase (done == total) is written too when the phase wrote a line."""

    def __init__(self, description: str, total: float | None = None, *, unit: str | None = None, every: float = DEFAULT_EVERY,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger | None = None) -> None:
        self.description, self.total, self.unit, self.every, self.clock = description, total, unit, float(every), clock
        self.log = logger or log
        self.last = clock()  # the first line comes after `every` seconds: short work stays silent
        self.start: tuple[float, float] | None = None  # (time, done) of the phase's first update
        self.done = -math.inf
        self.wrote = False
        self.message = ""
        self.lock = threading.Lock()

    def __call__(self, done: float, total: float | None = None, message: str = "") -> None:
        with self.lock:
            now = self.clock()
            total = self.total if total is None else total
            if self.start is None or total != self.total or done < self.done:
                self.start, self.wrote = (now, done), False
            self.total, self.done, self.message = total, done, message
            finished = bool(total) and done >= total
            if not (now - self.last >= self.every or (finished and self.wrote)):
                return
            self.last, self.wrote = now, True
            line = self.line(done, total, message, now)
        self.log.info("%s", line)

    def heartbeat(self) -> Callable[[], None]:
        """Start a background thread that repeats the state when no update has come for ``every``
        seconds (work that reports in bursts, e.g. parallel workers, still shows a line at least that
        often); returns the function that stops it. Nothing with ``every`` 0 or before the first update."""
        if self.every <= 0:
            return lambda: None
        halt = threading.Event()

        def beat() -> None:
            while not halt.wait(min(self.every, 1.0)):
                with self.lock:
                    now = self.clock()
                    if self.start is None or now - self.last < self.every:
                        continue
                    self.last, self.wrote = now, True
                    line = self.line(self.done, self.total, self.message, now)
                self.log.info("%s (still working)", line)

        thread = threading.Thread(target=beat, name="brainsynth-progress", daemon=True)
        thread.start()

        def stop() -> None:
            halt.set()
            thread.join(timeout=5)

        return stop

    def line(self, done: float, total: float | None, message: str, now: float) -> str:
        unit = self.unit
        count = f"{_num(done)}/{_num(total)} ({100 * done / total:.0f} %)" if total else _num(done)
        parts = [f"{unit} {count}" if unit else count]
        t0, d0 = self.start or (now, done)
        if done > d0 and now > t0:
            per = (now - t0) / (done - d0)
            parts.append(f"{_seconds(per)} s/{unit}" if unit else f"{_seconds(per)} s each")
            if total and done < total:
                parts.append(f"~{_duration(per * (total - done))} left")
        head = f"{self.description}: {message}" if message else self.description
        return f"{head}; {', '.join(parts)}"


def _num(x: float | None) -> str:
    if x is None:
        return "?"
    return str(int(x)) if float(x).is_integer() else f"{x:.3g}"


def _seconds(s: float) -> str:
    return f"{s:.2g}" if s < 10 else f"{s:.0f}"


def _duration(s: float) -> str:
    if s < 90:
        return f"{max(1, round(s))} s"
    if s < 90 * 60:
        return f"{round(s / 60)} min"
    return f"{s / 3600:.1f} h"
