"""The ``instruct-pix2pix`` generator: train a model folder, load it for editing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from brainsynth_cli.interfaces import Progress, TrainOptions


class InstructPix2Pix:
    """InstructPix2Pix latent diffusion: 2D slices (AutoencoderKL + 8-channel UNet2DConditionModel) or,
    with ``--dim 3d``, whole volumes (MONAI's 3D AutoencoderKL and DiffusionModelUNet)."""

    name = "instruct-pix2pix"
    kind = "editing"

    def train(self, options: TrainOptions, progress: Progress | None = None) -> Path:
        from brainsynth_plugins.training_core.tracking import reporting

        if str(options.extra.get("dim") or "2d").lower() == "3d":  # whole volumes (MONAI networks)
            from brainsynth_plugins.ip2p.volume_training import train
        else:
            from brainsynth_plugins.ip2p.training import train
        with reporting(options.extra.get("report_to"), options.output):  # --report-to: accelerate's trackers
            return train(options, progress)

    def load(self, model_dir: Path, device: str = "auto") -> Any:
        from brainsynth_plugins.ip2p.volume_model import is_volume_model

        if is_volume_model(Path(model_dir)):
            from brainsynth_plugins.ip2p.volume_model import VolumeIP2PModel

            return VolumeIP2PModel(Path(model_dir), device)
        from brainsynth_plugins.ip2p.model import IP2PModel

        return IP2PModel(Path(model_dir), device)

    def check(self, model_dir: Path) -> dict[str, Any]:
        """Validate a model folder without loading weights (one-line error if parts are missing)."""
        from brainsynth_plugins.ip2p.volume_model import check_volume_model_dir, is_volume_model

        if is_volume_model(Path(model_dir)):
            return check_volume_model_dir(Path(model_dir))
        from brainsynth_plugins.ip2p.model import check_model_dir

        return check_model_dir(Path(model_dir))
