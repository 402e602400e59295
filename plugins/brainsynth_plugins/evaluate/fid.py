"""FID of the model's edits against the real targets: torchmetrics' ``FrechetInceptionDistance``
fed by the feature extractor of ``--fid-weights`` (a local TorchScript file; nothing is downloaded).

The extractor gets each slice as a 1x3xHxW float image in [0, 1] (the grey value in all three
channels) at the size it is stored, and returns its features; torchmetrics accumulates their
means and covariances and computes the Fréchet distance. Without weights, torchmetrics or two
rows, the report's FID row says why it is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from brainsynth_cli.errors import InputError
from brainsynth_cli.pairs_folder import PairRow

FIX = "give a TorchScript file (torch.jit.save) of a module mapping 1x3xHxW images in [0, 1] to features, or leave --fid-weights out"


def load_extractor(weights: Path) -> Any:
    """The TorchScript module of ``weights`` (one line naming the file when it is not one)."""
    import torch

    if not Path(weights).is_file():
        raise InputError(weights, "FID feature extractor not found", FIX)
    try:
        return torch.jit.load(str(weights), map_location="cpu").eval()
    except (RuntimeError, ValueError) as exc:
        raise InputError(weights, f"is not a TorchScript module ({str(exc).strip().splitlines()[0]})", FIX) from None


def frechet_distance(real: list[np.ndarray], fake: list[np.ndarray], net: Any, weights: Path) -> float:
    """FID between two sets of 2D slices in [0, 1], features from the TorchScript module ``net``."""
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    def image(a: np.ndarray) -> Any:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None].repeat(1, 3, 1, 1)

    try:
        with torch.no_grad():
            probe = net(image(real[0]))
    except RuntimeError as exc:
        raise InputError(weights, f"fails on a 1x3x{real[0].shape[0]}x{real[0].shape[1]} image "
                         f"({str(exc).strip().splitlines()[0]})", FIX) from None

    class Features(torch.nn.Module):
        """The extractor's features as one float64 row per image (torchmetrics computes in its dtype)."""

        num_features = int(probe.numel())

        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Any) -> Any:
            return self.net(x).reshape(1, -1).double()

    metric = FrechetInceptionDistance(feature=Features())
    with torch.no_grad():
        for images, is_real in ((real, True), (fake, False)):
            for a in images:
                metric.update(image(a), real=is_real)
    return float(metric.compute())


def fid(out_dir: Path, rows: list[PairRow], weights: Path | None, net: Any = None) -> dict[str, Any]:
    """The report's FID entry: ``value`` (or None) and ``reason`` (where the features came from,
    or why there is no value)."""
    if weights is None:
        return {"value": None, "reason": "no feature-extractor weights given (--fid-weights PATH to a TorchScript model, "
                "e.g. Inception-v3 pool features); none can be downloaded here"}
    if len(rows) < 2:
        return {"value": None, "reason": "FID needs at least 2 rows"}
    try:
        import torchmetrics  # noqa: F401
    except ImportError:
        return {"value": None, "reason": "torchmetrics is not installed (pip install torchmetrics, or the diffusion extra)"}
    from brainsynth_plugins.evaluate import engine

    net = net if net is not None else load_extractor(weights)
    real = [engine.load_slice(r.target) for r in rows]
    fake = [engine.load_slice(out_dir / "edits" / f"row-{r.number:05d}.png") for r in rows]
    return {"value": frechet_distance(real, fake, net, weights), "reason": f"features from {weights}", "rows": len(rows)}
