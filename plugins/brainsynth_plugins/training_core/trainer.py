"""What both staged trainers (autoencoder, then UNet, under accelerate) do the same way: the
accelerator, the learning-rate schedule, the loss log, and saving and restoring checkpoints with
the training generator's RNG state. Each trainer keeps its own stages, losses and validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brainsynth_cli.interfaces import Progress
from brainsynth_plugins.training_core import checkpoints
from brainsynth_plugins.training_core.loss_log import append_log, trim_log
from brainsynth_plugins.training_core.runtime import resolve_device


class StagedTrainer:
    LOSS_FIELDS: tuple[str, ...]  #: the columns of ``logs/loss.csv``, set by each trainer

    def __init__(self, cfg: dict[str, Any], out: Path, *, device: str, progress: Progress) -> None:
        self.cfg, self.out, self.progress = cfg, Path(out), progress
        self.device_name = resolve_device(device)

    def _accelerator(self) -> Any:
        from accelerate import Accelerator

        return Accelerator(mixed_precision=self.cfg["mixed_precision"], cpu=self.device_name == "cpu",
                           gradient_accumulation_steps=int(self.cfg.get("gradient_accumulation", 1)))

    def _lr_scheduler(self, opt: Any, total: int, world: int = 1, name: str | None = None) -> Any:
        """diffusers' schedule ``name`` (default ``lr_scheduler``) over ``total`` steps after
        ``warmup_steps``; accelerate steps it once per process, hence the ``world`` factor."""
        from diffusers.optimization import get_scheduler

        return get_scheduler(name or self.cfg["lr_scheduler"], optimizer=opt, num_warmup_steps=int(self.cfg["warmup_steps"]) * world,
                             num_training_steps=total * world)

    def _log(self, row: dict[str, Any]) -> None:
        append_log(self.out / "logs" / "loss.csv", self.LOSS_FIELDS, row)

    def _trim_log(self, stage: str, step: int) -> None:
        """Drop log rows a killed run wrote after the checkpoint we resume from."""
        trim_log(self.out / "logs" / "loss.csv", self.LOSS_FIELDS, stage, step)

    def _save_checkpoint(self, stage: str, step: int, modules: dict[str, Any], optimizers: dict[str, Any], sched: Any,
                         gen: Any, extra: dict[str, Any] | None = None) -> None:
        """``modules``: state dicts by name; optimizers and scheduler may be accelerate's wrappers."""
        checkpoints.save_checkpoint(self.out, stage, step, modules=modules, optimizers=optimizers, scheduler=sched,
                                    rng=checkpoints.rng_state(gen), extra=extra or {},
                                    keep=int(self.cfg["checkpoints_total_limit"]))

    def _restore(self, start: checkpoints.Checkpoint, modules: dict[str, Any], optimizers: dict[str, Any], sched: Any,
                 gen: Any) -> tuple[int, dict[str, Any]]:
        """Load a checkpoint into the modules and optimizers of the same names, the scheduler and the
        RNGs; returns its step and everything it holds."""
        data = checkpoints.load_checkpoint(start)
        for name, module in modules.items():
            module.load_state_dict(data["modules"][name])
        for name, opt in optimizers.items():
            opt.load_state_dict(data["optimizers"][name])
        sched.load_state_dict(data["state"]["scheduler"])
        checkpoints.set_rng_state(gen, data["rng"])
        return int(data["state"]["step"]), data
