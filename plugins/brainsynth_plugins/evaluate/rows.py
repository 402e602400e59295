"""Scoring the rows of an evaluation: one row's baselines and measurements, here or in worker processes.

The model's edit of a row is made in the main process (it holds the model); everything else a row
needs (the ``deform`` and chance rows, the registrations of every method's image, the metrics) is
:func:`score`. With ``jobs > 1`` the scoring runs in that many worker processes while the main
process edits the next rows. Every registration runs on one thread, so a row's result is the same
whichever process scored it: ``--jobs`` changes the time, not the numbers.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np

from brainsynth_cli.edit_path import EditSettings
from brainsynth_cli.edit_path import apply as apply_edit
from brainsynth_cli.pairs_folder import PairRow, read_pairs_folder
from brainsynth_cli.structures import Rules, default_rules, rules_from_text
from brainsynth_plugins.evaluate import engine


@dataclass
class SharedContext:
    """What scoring a 2D or a 3D row needs alike (:func:`context_parts` builds the first five)."""

    pairs: Any
    rules: Rules
    parser: Any
    deform: Any
    path_settings: EditSettings
    settings: engine.EvalSettings
    out_dir: Path


@dataclass
class RowContext(SharedContext):
    """What scoring a 2D row needs, built once per process (:meth:`build`): the shared parts and the measurement."""

    measure: Any = None

    @classmethod
    def build(cls, pairs_dir: Path, settings: engine.EvalSettings, out_dir: Path, device: str = "cpu",
              pairs: Any = None) -> RowContext:
        """``pairs``: the folder already read (else it is read from ``pairs_dir``)."""
        from brainsynth_cli.plugin_manager import registry

        parts = context_parts(pairs_dir, settings, device, pairs)
        return cls(**parts, measure=registry("measure").create(settings.measure), settings=settings, out_dir=Path(out_dir))

    def inputs(self, row: PairRow) -> RowInputs:
        """The row's slices, labels, requested intervals, named structures and pixel spacing."""
        prior, target = engine.load_slice(row.prior), engine.load_slice(row.target)
        prior_labels, target_labels = engine.row_labels(row)
        requested = engine.requested_intervals(self.parser, row.prompt)
        structures = [self.rules[name] for name in (requested or {})]
        spacing = engine.pixel_spacing(row, self.pairs, self.settings.margin_mm)
        return RowInputs(prior, target, prior_labels, target_labels, requested, structures, spacing)


def context_parts(pairs_dir: Path, settings: engine.EvalSettings, device: str = "cpu", pairs: Any = None) -> dict[str, Any]:
    """What the 2D and 3D row contexts share: the pairs folder, its rules and prompt parser, the
    deform baseline (when baselines are on) and the edit path's settings (checked)."""
    from brainsynth_cli.plugin_manager import registry

    pairs = pairs if pairs is not None else read_pairs_folder(pairs_dir)
    rules = rules_from_text(pairs.info["rules"], f"{pairs_dir / 'pairs.json'} rules") if pairs.info.get("rules") else default_rules()
    deform = None
    if settings.baselines and "deform" in registry("generator"):
        deform = registry("generator").create("deform").load(None, device, rules=rules)  # the pairs' targets
    path_settings = EditSettings(residual=settings.residual, restrict=settings.restrict, margin_mm=settings.margin_mm,
                                 blender=settings.blender, change_floor=settings.change_floor, feather=settings.feather)
    path_settings.check()
    return {"pairs": pairs, "rules": rules, "parser": engine.prompt_parser(pairs, rules), "deform": deform, "path_settings": path_settings}


@dataclass
class RowInputs:
    prior: np.ndarray
    target: np.ndarray
    prior_labels: np.ndarray
    target_labels: np.ndarray
    requested: dict[str, Any] | None
    structures: list[Any]
    spacing: tuple[float, float]


def edited_slice(prior: np.ndarray, change: np.ndarray, labels: np.ndarray, structures: list[Any], spacing: tuple[float, float],
                 settings: EditSettings) -> np.ndarray:
    """The prior with ``change`` put in through the edit path, clipped to [0, 1] as stored slices are."""
    out, _ = apply_edit(prior, change, labels, structures, spacing, settings)
    return np.clip(out, 0, 1).astype(np.float32)


def method_images(ctx: SharedContext, row: PairRow, x: Any, model_image: np.ndarray | None) -> dict[str, Any]:
    """The images a row scores besides the identity and the target, 2D slices or 3D volumes alike:
    the model's edit (when given), the ``deform`` baseline put in through the edit path (no change
    floor, no feather, and the blender given by ``--blender``, else ``poisson``: a blender the model
    recommends is the model's) and the ``chance`` row (the prior plus faint noise)."""
    images: dict[str, Any] = {}
    if model_image is not None:
        images["model"] = model_image
    if ctx.deform is not None and x.structures:
        moved = ctx.deform.edit([x.prior], row.prompt, labels=[x.prior_labels], spacing=x.spacing, strict=False)[0]
        images["deform"] = edited_slice(x.prior, np.asarray(moved, np.float32) - x.prior, x.prior_labels, x.structures, x.spacing,
                                        replace(ctx.path_settings, change_floor=0.0, feather=False,
                                                blender=ctx.settings.deform_blender))
    if ctx.settings.baselines:
        noise = np.random.default_rng([ctx.settings.seed, row.number]).normal(0.0, engine.CHANCE_NOISE, x.prior.shape)
        images["chance"] = np.clip(x.prior + noise.astype(np.float32), 0, 1)
    return images


def score(ctx: RowContext, row: PairRow, model_image: np.ndarray | None, inputs: RowInputs | None = None) -> dict[str, Any]:
    """One row's record: the deform and chance rows (when baselines are on) and every method's
    measurements and metrics, next to the model's already edited slice ``model_image`` (None:
    no model). ``inputs``: the row's slices when the caller has read them already."""
    from brainsynth_cli.images import write_png
    from brainsynth_cli.slices import to_png16

    x = inputs if inputs is not None else ctx.inputs(row)
    images = method_images(ctx, row, x, model_image)
    if "deform" in images:
        write_png(ctx.out_dir / "edits" / f"deform-{row.number:05d}.png", to_png16(images["deform"]))
    result = engine.score_row(row, x.prior, x.target, images, x.prior_labels, x.target_labels, x.requested, ctx.measure, ctx.rules)
    result["requested_known"] = x.requested is not None
    return result


# -- worker processes ----------------------------------------------------------------------
_WORKER: RowContext | None = None


def _worker_init(build: Callable[..., Any], pairs_dir: str, settings: engine.EvalSettings, out_dir: str) -> None:
    global _WORKER
    _WORKER = build(Path(pairs_dir), settings, Path(out_dir))


def _worker_score(score_fn: Callable[..., dict[str, Any]], row: PairRow, model_image: np.ndarray | None,
                  inputs: Any) -> dict[str, Any]:
    assert _WORKER is not None
    return score_fn(_WORKER, row, model_image, inputs)


class Scorer:
    """Scores rows in submission order: inline (``jobs == 1``) or in ``jobs`` spawned worker
    processes (the plugins are loaded again there, so a measurement registered at runtime needs
    ``--jobs 1``). :meth:`submit` queues a row; finished rows are handed to ``on_done`` in the
    order they were submitted. ``score_fn`` and ``build`` score a row and build its context (:func:`score` and
    :meth:`RowContext.build` for 2D slices; the 3D ones for volumes)."""

    def __init__(self, ctx: Any, pairs_dir: Path, jobs: int, on_done: Callable[[PairRow, dict[str, Any]], None],
                 score_fn: Callable[..., dict[str, Any]] | None = None, build: Callable[..., Any] | None = None) -> None:
        self.ctx, self.on_done, self.jobs = ctx, on_done, max(1, int(jobs))
        self.score_fn = score_fn or score
        self.pending: deque[tuple[PairRow, Any]] = deque()
        self.pool = None
        if self.jobs > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn, not fork: a forked child would inherit torch's and numba's threads mid-state
            self.pool = ProcessPoolExecutor(max_workers=self.jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                                            initargs=(build or RowContext.build, str(pairs_dir), ctx.settings, str(ctx.out_dir)))

    def __enter__(self) -> Scorer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def submit(self, row: PairRow, model_image: np.ndarray | None, done: dict[str, Any] | None = None,
               inputs: Any = None) -> None:
        """Queue ``row`` (``done``: its record from an earlier run, handed on in its turn;
        ``inputs``: its slices, when already read)."""
        if done is not None:
            self.pending.append((row, done))
        elif self.pool is None:
            self.pending.append((row, self.score_fn(self.ctx, row, model_image, inputs)))
        else:
            self.pending.append((row, self.pool.submit(_worker_score, self.score_fn, row, model_image, inputs)))
        self.drain(wait=len(self.pending) > 4 * self.jobs)  # bounded: edits do not run far ahead of the scoring

    def drain(self, wait: bool = False) -> None:
        """Hand on the finished rows at the head of the queue (``wait``: wait for the head)."""
        from concurrent.futures.process import BrokenProcessPool

        while self.pending:
            row, item = self.pending[0]
            if hasattr(item, "result"):
                if not (wait or item.done()):
                    return
                try:
                    item = item.result()
                except BrokenProcessPool:
                    from brainsynth_cli.errors import UserError

                    raise UserError(f"an evaluate worker process died while scoring row {row.number} (out of memory?); "
                                    "re-run with fewer --jobs: the rows scored so far are kept") from None
            self.pending.popleft()
            wait = False
            self.on_done(row, item)

    def finish(self) -> None:
        while self.pending:
            self.drain(wait=True)
