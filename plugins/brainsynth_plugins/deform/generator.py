"""The ``deform`` generator: an editor that needs no model.

``load()`` returns a :class:`DeformEditor`. Its ``edit(images, prompt, labels=...)`` reads the
prompt with the ``quantized`` prompt builder against the rules and deforms every image (2D
slice or 3D volume, any size) so that each structure the prompt names changes by its
interval's ``target`` rate (docs/rules.md): "moderate ventricle enlargement" aims at +15 %,
"cortex atrophy" at -2 % with the built-in rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from brainsynth_cli.errors import UserError
from brainsynth_cli.interfaces import Progress, TrainOptions

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from brainsynth_cli.structures import Rules
    from brainsynth_plugins.deform.deformation import Deformed


class DeformGenerator:
    """Generator ``deform``: model-free, so ``train`` is refused and ``load`` needs no folder."""

    name = "deform"
    kind = "editing"
    needs_training = False

    def train(self, options: TrainOptions, progress: Progress | None = None) -> Path:
        raise UserError("deform needs no training: use `brainsynth edit deform INPUT ...`")

    def load(self, model_dir: Path | None = None, device: str = "auto", rules: Rules | None = None) -> DeformEditor:
        return DeformEditor(rules=rules)


def _spacings(spacing: Any, n: int) -> list[tuple[float, ...] | None]:
    """One spacing for all images, or one per image."""
    if spacing is None:
        return [None] * n
    items = list(spacing)
    if items and all(isinstance(s, (int, float)) for s in items):
        return [tuple(float(s) for s in items)] * n
    if len(items) != n:
        raise UserError(f"spacing gives {len(items)} voxel sizes for {n} images; give one for all or one per image")
    return [None if s is None else tuple(float(x) for x in s) for s in items]


class DeformEditor:
    """Edits by deformation. ``resolution = None``: any size; ``dims``: 2D slices and 3D volumes.

    After ``edit``, ``last_labels`` holds the deformed label maps, ``last_results`` the full
    :class:`~brainsynth_plugins.deform.deformation.Deformed` results (rates, partial-volume
    rates, magnitudes; ``None`` for an image left unchanged) and ``last_notes`` one line per
    image left unchanged (with ``strict=False``).
    """

    name = "deform"
    resolution = None
    dims = ("2d", "3d")

    def __init__(self, rules: Rules | None = None) -> None:
        from brainsynth_cli.plugin_manager import get_manager
        from brainsynth_cli.structures import default_rules

        self.rules = rules or default_rules()
        self.prompts: list[str] = []
        self.builder = get_manager().registry("prompt-builder").create("quantized", rules=self.rules)
        self.last_labels: list[Any] = []
        self.last_results: list[Deformed | None] = []
        self.last_notes: list[str] = []

    def targets(self, prompt: str) -> dict[str, float]:
        """The target rate (percent) per structure the prompt names: its interval's ``target``."""
        return {name: float(iv.target) for name, iv in self.builder.parse(prompt).items()}

    def edit_with_labels(self, images: Sequence[Any], prompt: str, *, labels: Sequence[Any] | None, spacing: Any = None,
                         progress: Progress | None = None, strict: bool = True) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Deformed images (float32, same shapes) and their deformed label maps.

        ``labels``: one label map per image (FreeSurfer aseg ids, same shape). ``spacing``: the
        voxel size in mm, one for all images or one per image (default 1 mm). ``strict=False``
        leaves an image whose labels lack a named structure, or cannot reach the target,
        unchanged (noted in ``last_notes``) instead of raising the one-line error.
        """
        import numpy as np

        from brainsynth_plugins.deform.deformation import deform

        images = list(images)
        if labels is None:
            raise UserError("deform edits need a label map per image (labels=[...]); give --labels or segment the input first")
        labels = list(labels)
        if len(labels) != len(images):
            raise UserError(f"deform got {len(images)} images but {len(labels)} label maps; give one label map per image")
        targets = self.targets(prompt)
        spacings = _spacings(spacing, len(images))
        out_images: list[np.ndarray] = []
        out_labels: list[np.ndarray] = []
        self.last_results, self.last_notes = [], []
        for i, (image, lab, sp) in enumerate(zip(images, labels, spacings)):
            try:
                result = deform(image, lab, targets, rules=self.rules, spacing=sp)
            except UserError as exc:
                if strict:
                    raise
                self.last_notes.append(f"image {i}: left unchanged ({exc})")
                out_images.append(np.asarray(image, dtype=np.float32).copy())
                out_labels.append(np.asarray(lab).copy())
                self.last_results.append(None)
            else:
                out_images.append(result.image.astype(np.float32, copy=False))
                out_labels.append(result.labels)
                self.last_results.append(result)
            if progress is not None:
                progress(i + 1, len(images), "slices")
        self.last_labels = out_labels
        return out_images, out_labels

    def edit(self, images: Sequence[Any], prompt: str, *, labels: Sequence[Any] | None = None, spacing: Any = None,
             seed: int = 0, progress: Progress | None = None, strict: bool = True, **ignored: Any) -> list[np.ndarray]:
        """Deform each image (2D or 3D float array) so that every structure the prompt names
        reaches its interval's target rate; returns float32 arrays of the same shapes (the
        deformed labels are in ``last_labels``). ``seed`` and other sampling options are
        accepted and ignored: the deformation is deterministic."""
        edited, _ = self.edit_with_labels(images, prompt, labels=labels, spacing=spacing, progress=progress, strict=strict)
        return edited
