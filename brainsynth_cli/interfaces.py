"""What the hooks promise: the interfaces a registered component's factory returns.

These are structural types (``typing.Protocol``): a plugin's class needs no base class, only
these methods. The kernel and its commands rely on nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from brainsynth_cli.images.volume import Volume
    from brainsynth_cli.structures import Interval, Rules

#: Progress callback: ``progress(done, total, message)``; components call it on long work.
Progress = Callable[[float, float, str], None]


@runtime_checkable
class Segmenter(Protocol):
    """Image in, FreeSurfer aseg label map out, on the same grid.

    ``segment`` receives a float32 :class:`~brainsynth_cli.images.Volume` (3D; skull may be
    present) and returns an integer Volume with the same shape and affine. Problems the user
    can fix (a missing external program, an image that is not a brain) are raised as
    :class:`brainsynth_cli.errors.UserError`.

    Optionally a segmenter says which aseg ids it can produce with a ``labels`` attribute (an
    iterable of ints, or a method returning one). Structure groups none of whose ids it
    produces are then reported as missing (n/a, null) instead of as 0 mm^3. Without it, every
    label of its output counts (a group with no voxels measures 0).
    """

    def segment(self, image: "Volume", progress: Progress | None = None) -> "Volume": ...


def segmenter_labels(segmenter: Any) -> frozenset[int] | None:
    """The aseg ids ``segmenter`` declares it produces (its optional ``labels``), or None when
    it declares nothing (then everything in its output counts)."""
    declared = getattr(segmenter, "labels", None)
    if callable(declared):
        declared = declared()
    if declared is None:
        return None
    try:
        return frozenset(int(i) for i in declared)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Change:
    """What a prompt describes: one prior/target pair.

    ``rates`` maps structure group names to change rates in percent (R = (Vt-Vp)/Vp*100);
    ``volumes`` maps group names to target volumes in mm^3; the rest is optional context
    (age in years, sex ``"F"``/``"M"``, modality such as ``"T1w"``, interval in years).
    ``only`` restricts the description to one group (disentangled pairs).
    """

    rates: Mapping[str, float]
    volumes: Mapping[str, float] = field(default_factory=dict)
    age: float | None = None
    sex: str | None = None
    modality: str = "T1w"
    interval_years: float | None = None
    only: str | None = None


@runtime_checkable
class PromptBuilder(Protocol):
    """Change rates in, prompt out, and the inverse.

    ``build(change)`` returns the prompt text, or ``None`` when no structure's change is
    described by the rules. ``parse(prompt)`` returns, for each structure group the prompt
    speaks of, the :class:`~brainsynth_cli.structures.Interval` it requests; it raises
    :class:`brainsynth_cli.errors.UserError` for text it cannot read.
    """

    rules: "Rules"

    def build(self, change: Change) -> str | None: ...

    def parse(self, prompt: str) -> dict[str, "Interval"]: ...


@runtime_checkable
class Blender(Protocol):
    """Put the region ``mask`` of ``target`` into ``prior``.

    Arrays are 2D or 3D of the same shape; ``mask`` is boolean. The result is float32,
    equals ``prior`` exactly outside the region the blender changes, and is finite.
    """

    def blend(self, prior: "np.ndarray", target: "np.ndarray", mask: "np.ndarray") -> "np.ndarray": ...


@runtime_checkable
class TextEncoder(Protocol):
    """A text encoder for cross-attention conditioning.

    ``hidden_size`` is the width of the embeddings (the UNet's cross-attention width follows
    it); ``max_length`` the tokenizer's length. ``load()`` returns ``(tokenizer, model)``,
    a transformers tokenizer and a torch module whose output's ``last_hidden_state`` (or
    first element) is ``(batch, tokens, hidden_size)``.
    """

    hidden_size: int
    max_length: int

    def load(self) -> tuple[Any, Any]: ...


@runtime_checkable
class Measure(Protocol):
    """How big each labelled structure is in an image, given a labelled reference of the same head.

    ``measure(reference, reference_labels, image, spacing=None)``: ``reference`` and ``image``
    are float arrays of the same 2D or 3D shape (intensities normalised to [0, 1]),
    ``reference_labels`` an integer aseg label array on the reference; returns
    ``{label_id: size in voxels}`` for ``image`` (floats: partial-volume estimates allowed).
    Measured on the reference itself it should return (close to) the label counts. ``spacing``
    (voxel size in mm) is passed when known.
    """

    def measure(
        self, reference: "np.ndarray", reference_labels: "np.ndarray", image: "np.ndarray", spacing: tuple[float, ...] | None = None
    ) -> dict[int, float]: ...


@dataclass
class TrainOptions:
    """What ``brainsynth train`` passes to a generator; ``extra`` holds generator-specific options."""

    data: Path
    output: Path
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Generator(Protocol):
    """A trainable image model.

    ``train(options, progress)`` writes a model folder at ``options.output`` and returns its
    path; ``load(model_dir, device)`` returns a loaded model object whose methods (for an
    editing model ``edit(images, prompt, ...)``, for a generative one ``sample(...)``) the
    commands call.
    """

    def train(self, options: TrainOptions, progress: Progress | None = None) -> Path: ...

    def load(self, model_dir: Path, device: str = "auto") -> Any: ...
