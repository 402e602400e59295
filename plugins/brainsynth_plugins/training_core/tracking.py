"""Training metrics besides ``logs/loss.csv``: accelerate's experiment trackers (``--report-to``).

A generator's ``train`` runs inside :func:`reporting`, which says which tracker the run reports
to (``none`` or ``tensorboard``: event files in ``MODEL/logs/tensorboard``, one set per stage;
``tensorboard --logdir MODEL/logs`` shows them). ``StagedTrainer`` builds each stage's
``Accelerator(log_with=...)``, calls ``init_trackers`` and logs every loss row as
``STAGE/COLUMN`` at the row's step; the trackers are ended (their files flushed) when the next
stage starts and when the run ends, interrupted or not. Nothing here imports accelerate.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: The tracker's run name: its files go to ``MODEL/logs/<RUN_NAME>``.
RUN_NAME = "tensorboard"


class Reporting:
    """The tracker of one training run and the accelerators whose trackers are open."""

    def __init__(self, report_to: str | None, output: Path) -> None:
        self.report_to = None if report_to in (None, "", "none") else str(report_to)
        self.logs = Path(output) / "logs"
        self.open: list[Any] = []

    def accelerator_options(self) -> dict[str, Any]:
        """Extra keyword arguments of ``Accelerator`` (none when the run reports to no tracker)."""
        if self.report_to is None:
            return {}
        return {"log_with": self.report_to, "project_dir": str(self.logs)}

    def start(self, acc: Any) -> None:
        """Before a stage: end the trackers of the previous stage, open ``acc``'s."""
        if self.report_to is None:
            return
        self.end()
        acc.init_trackers(RUN_NAME)
        self.open.append(acc)
        log.debug("reporting the training metrics to %s in %s", self.report_to, self.logs / RUN_NAME)

    def end(self) -> None:
        """Finish (flush and close) the open trackers. Not ``accelerator.end_training()``: that also
        destroys the process group, which the next stage of a multi-GPU run still needs."""
        while self.open:
            acc = self.open.pop()
            for tracker in acc.trackers:
                try:
                    tracker.finish()
                except Exception as exc:  # noqa: BLE001 - closing a tracker must not hide the run's own outcome
                    log.warning("brainsynth: warning: could not close the %s tracker (%s)", self.report_to, exc)
            acc.trackers = []


_current: contextvars.ContextVar[Reporting | None] = contextvars.ContextVar("brainsynth_reporting", default=None)


def current() -> Reporting | None:
    """The reporting of the training run under way, or None (no tracker)."""
    return _current.get()


@contextlib.contextmanager
def reporting(report_to: str | None, output: Path) -> Iterator[Reporting]:
    """Run a training under ``report_to`` (``none`` or an accelerate tracker name); the trackers
    are ended on the way out, whatever happened."""
    rep = Reporting(report_to, output)
    token = _current.set(rep)
    try:
        yield rep
    finally:
        rep.end()
        _current.reset(token)


def metrics(row: dict[str, Any]) -> dict[str, float]:
    """A loss-log row as tracker values: ``STAGE/COLUMN`` for every number but the step."""
    stage = row.get("stage", "train")
    return {f"{stage}/{k}": float(v) for k, v in row.items()
            if k not in ("stage", "step") and isinstance(v, (int, float)) and not isinstance(v, bool)}
