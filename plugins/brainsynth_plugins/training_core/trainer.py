"""What both staged trainers (autoencoder, then UNet, under accelerate) do the same way: the
accelerator, the learning-rate schedule, the loss log, and saving and restoring checkpoints with
the training generator's RNG state. Each trainer keeps its own stages, losses and validation."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from brainsynth_cli.interfaces import Progress
from brainsynth_plugins.training_core import checkpoints, tracking
from brainsynth_plugins.training_core.loss_log import append_log, trim_log
from brainsynth_plugins.training_core.runtime import resolve_device

log = logging.getLogger(__name__)


class StagedTrainer:
    LOSS_FIELDS: tuple[str, ...]  #: the columns of ``logs/loss.csv``, set by each trainer

    def __init__(self, cfg: dict[str, Any], out: Path, *, device: str, progress: Progress) -> None:
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.device_name = resolve_device(device)
        self._reporting = tracking.current()  # --report-to: accelerate's trackers, besides loss.csv
        self._acc: Any = None

    def _accelerator(self) -> Any:
        """A stage's accelerator (with the run's trackers, if it reports to any)."""
        from accelerate import Accelerator

        rep = self._reporting
        _fresh_accelerator_state()
        acc = Accelerator(mixed_precision=self.cfg["mixed_precision"], cpu=self.device_name == "cpu",
                          gradient_accumulation_steps=int(self.cfg.get("gradient_accumulation", 1)),
                          **(rep.accelerator_options() if rep else {}))
        if rep is not None:
            rep.start(acc)
        self._acc = acc
        log.debug("accelerator: device %s, %d process(es), mixed precision %s", acc.device, acc.num_processes,
                  self.cfg["mixed_precision"])
        return acc

    def _lr_scheduler(self, opt: Any, total: int, world: int = 1, name: str | None = None) -> Any:
        """The schedule ``name`` (default ``lr_scheduler``) over ``total`` steps after ``warmup_steps``:
        diffusers' or one of :mod:`.schedules` (``warmup_stable_decay`` decays over the last
        ``lr_decay_fraction`` of the steps); accelerate steps it once per process, hence ``world``."""
        from brainsynth_plugins.training_core import schedules

        name = name or self.cfg["lr_scheduler"]
        warmup = int(self.cfg["warmup_steps"]) * world
        if name in schedules.OWN:
            return schedules.build(name, opt, warmup=warmup, total=total * world,
                                   decay_fraction=float(self.cfg.get("lr_decay_fraction", 0.2)))
        from diffusers.optimization import get_scheduler

        return get_scheduler(name, optimizer=opt, num_warmup_steps=warmup, num_training_steps=total * world)

    @staticmethod
    def _optimizer_step(acc: Any, loss: Any, params: Any, opt: Any, sched: Any, *, clip: float | None = 1.0) -> None:
        """Backward, gradient-norm clipping (when gradients are synchronised this step), the optimizer
        and the schedule's step, gradients cleared: one training step's update, as every stage makes it."""
        acc.backward(loss)
        if clip is not None and acc.sync_gradients:
            acc.clip_grad_norm_(params, clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    def _log(self, row: dict[str, Any]) -> None:
        """One step's losses: a row of ``logs/loss.csv``, and the trackers' values (``--report-to``)."""
        append_log(self.out / "logs" / "loss.csv", self.LOSS_FIELDS, row)
        if self._acc is not None and self._reporting is not None and self._reporting.report_to is not None:
            self._acc.log(tracking.metrics(row), step=int(row["step"]))

    def _trim_log(self, stage: str, step: int) -> None:
        """Drop log rows a killed run wrote after the checkpoint we resume from."""
        trim_log(self.out / "logs" / "loss.csv", self.LOSS_FIELDS, stage, step)

    def _save_checkpoint(self, stage: str, step: int, modules: dict[str, Any], optimizers: dict[str, Any], sched: Any,
                         gen: Any, extra: dict[str, Any] | None = None) -> None:
        """``modules``: state dicts by name; optimizers and scheduler may be accelerate's wrappers."""
        world = int(self._acc.num_processes) if self._acc is not None else 1
        path = checkpoints.save_checkpoint(self.out, stage, step, modules=modules, optimizers=optimizers, scheduler=sched,
                                           rng=checkpoints.rng_state(gen), extra={"processes": world, **(extra or {})},
                                           keep=int(self.cfg["checkpoints_total_limit"]))
        log.info("checkpoint %s written (stage %s, step %d)", path, stage, step)

    def _restore(self, start: checkpoints.Checkpoint, modules: dict[str, Any], optimizers: dict[str, Any], sched: Any,
                 gen: Any, *, world: int = 1, rank: int = 0, seed: int = 0) -> tuple[int, dict[str, Any]]:
        """Load a checkpoint into the modules and optimizers of the same names, the scheduler and the
        RNGs; returns its step and everything it holds.

        A checkpoint holds the main process's RNG state and a schedule counted in that run's process
        count (accelerate steps it once per process). Resumed on ``world`` processes, the schedule is
        re-counted for ``world`` (the learning rate continues from the same step), process 0 continues
        the saved RNG stream and every other process starts its own from ``seed``, its rank and the step.
        """
        log.info("resuming from checkpoint %s (stage %s, step %d)", start.path, start.stage, start.step)
        data = checkpoints.load_checkpoint(start)
        for name, module in modules.items():
            module.load_state_dict(data["modules"][name])
        for name, opt in optimizers.items():
            opt.load_state_dict(data["optimizers"][name])
        step = int(data["state"]["step"])
        sched.load_state_dict(data["state"]["scheduler"])
        saved = int(data["state"].get("processes", 1))
        if saved != world:
            log.info("the checkpoint was written by %d process(es), this run has %d: the schedule is re-counted", saved, world)
            sched.last_epoch = step * world
            sched._step_count = step * world + 1
        if rank == 0:
            checkpoints.set_rng_state(gen, data["rng"])
        else:
            gen.manual_seed(int(seed) * 1_000_003 + rank * 10_007 + step)
        return step, data

    def _mean_over_processes(self, acc: Any, values: dict[str, Any]) -> dict[str, float]:
        """The mean of each scalar tensor over the processes (what a multi-process step's loss is);
        a collective: every process must call it at the same step."""
        import torch

        names = list(values)
        stacked = torch.stack([values[k].detach().float().reshape(()) for k in names])
        if acc.num_processes > 1:
            stacked = acc.reduce(stacked.to(acc.device), reduction="mean")
        return {k: float(v) for k, v in zip(names, stacked.cpu())}


def _fresh_accelerator_state() -> None:
    """Forget the previous Accelerator's settings in this process.

    accelerate keeps one ``AcceleratorState`` per process and refuses a second ``Accelerator``
    with another mixed precision, so a second training in the same process (a notebook, the
    tests, one ``auto`` model after a float32 one) would fail. The distributed ``PartialState``
    (the processes of ``accelerate launch``) is kept."""
    from accelerate.state import AcceleratorState

    reset = getattr(AcceleratorState, "_reset_state", None)
    if callable(reset):
        reset()

