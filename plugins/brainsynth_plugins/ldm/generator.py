"""The ``ldm`` generator: train a model folder, load it for sampling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brainsynth_cli.interfaces import Progress, TrainOptions


class LatentDiffusion:
    """Conditional latent diffusion (Brain LDM covariates, DALL-E Brain captions), 2D or 3D."""

    name = "ldm"
    kind = "generative"

    def train(self, options: TrainOptions, progress: Progress | None = None) -> Path:
        from brainsynth_plugins.ldm.training import train
        from brainsynth_plugins.training_core.tracking import reporting

        with reporting(options.extra.get("report_to"), options.output):  # --report-to: accelerate's trackers
            return train(options, progress)

    def load(self, model_dir: Path, device: str = "auto") -> Any:
        from brainsynth_plugins.ldm.model import LDMModel

        return LDMModel(Path(model_dir), device)

    def check(self, model_dir: Path) -> dict[str, Any]:
        """Validate a model folder without loading weights; returns its brainsynth.json."""
        from brainsynth_plugins.ldm.model import read_info

        return read_info(Path(model_dir))
