"""Progress reporting for long work: a rich bar on a terminal, nothing otherwise."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from brainsynth_cli.interfaces import Progress


@contextlib.contextmanager
def progress_bar(description: str, total: float | None = None, *, enabled: bool | None = None) -> Iterator[Progress]:
    """Yield a :data:`~brainsynth_cli.interfaces.Progress` callback ``(done, total, message)``.

    The bar is drawn on stderr only when it is a terminal (or ``enabled=True``); otherwise the
    callback does nothing, so logs and pipes stay clean.
    """
    show = sys.stderr.isatty() if enabled is None else enabled
    if not show:
        yield lambda done, tot, message="": None
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
