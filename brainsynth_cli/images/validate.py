"""Checks between images: same grid."""

from __future__ import annotations

from brainsynth_cli.errors import InputError
from brainsynth_cli.images.volume import Volume


def check_same_grid(image: Volume, labels: Volume, *, atol: float = 1e-3) -> None:
    """Raise a one-line InputError when ``labels`` is not on ``image``'s grid (shape or affine)."""
    import numpy as np

    if image.shape != labels.shape:
        raise InputError(
            labels.path,
            f"label map has shape {labels.shape} but image {image.label()} has shape {image.shape}",
            "resample the labels to the image grid (or pass the matching image)",
        )
    if not np.allclose(np.asarray(image.affine), np.asarray(labels.affine), atol=atol):
        delta = float(np.abs(np.asarray(image.affine) - np.asarray(labels.affine)).max())
        raise InputError(
            labels.path,
            f"label map affine differs from image {image.label()} by up to {delta:.3g} mm",
            "resample the labels to the image grid (or pass the matching image)",
        )
