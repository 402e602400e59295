"""A simple tissue segmenter: Otsu threshold for the head, 3-class k-means on intensities.

It does not know hemispheres or ventricles; it labels dark tissue as CSF (24), intermediate as
cortex/grey matter (3) and bright as white matter (2). Good enough to show the plugin path on a
skull-stripped T1 image, and a fair baseline.
"""

from __future__ import annotations

import numpy as np

from brainsynth_cli.errors import InputError
from brainsynth_cli.images import Volume

CSF, GM, WM = 24, 3, 2


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    hist, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between))])


def kmeans_1d(values: np.ndarray, k: int = 3, iterations: int = 50) -> np.ndarray:
    """Cluster centres (sorted) of 1D values, initialised at quantiles: deterministic."""
    centres = np.quantile(values, np.linspace(0.15, 0.85, k))
    for _ in range(iterations):
        assign = np.argmin(np.abs(values[:, None] - centres[None, :]), axis=1)
        new = np.array([values[assign == j].mean() if np.any(assign == j) else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


class KMeansTissueSegmenter:
    #: the aseg ids it writes: structure groups of none of them (ventricles, hippocampus) are n/a
    labels = (WM, GM, CSF)

    def __init__(self, classes: int = 3) -> None:
        if classes != 3:
            raise ValueError("kmeans-tissue knows 3 classes: CSF, grey matter, white matter")

    def segment(self, image: Volume, progress=None) -> Volume:
        data = np.asarray(image.data, dtype=np.float32)
        if not np.any(data > 0):
            raise InputError(image.path, "image is empty (no positive intensities)", "check that this is the right scan")
        # Otsu separates background from head; dark CSF can fall below it, so the region
        # classified is everything brighter than a quarter of the typical head intensity.
        head = data > otsu_threshold(data[data > 0])
        inside = data > 0.25 * float(np.median(data[head]))
        centres = kmeans_1d(data[inside].astype(np.float64))
        assign = np.argmin(np.abs(data[..., None] - centres[None, None, None, :]), axis=-1)
        labels = np.zeros(data.shape, dtype=np.int32)
        labels[inside & (assign == 0)] = CSF
        labels[inside & (assign == 1)] = GM
        labels[inside & (assign == 2)] = WM
        if progress is not None:
            progress(1, 1, "k-means done")
        return image.with_data(labels)
