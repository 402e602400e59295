"""Hook specifications: the whole plugin API of brainsynth.

A plugin is a module (or object) with functions decorated by :data:`hookimpl` whose names
match the specs below. Built-in plugins and third-party plugins use exactly these hooks.

Each ``register_*`` hook receives a ``register`` callable. Call it once per component the
plugin provides, with a :class:`brainsynth_cli.specs.Spec`. Specs are cheap: the factory is
a ``"module:attribute"`` string (or a callable) that is imported only when the component is
used, so registering never imports heavy libraries.

The docstrings of this module are the hook reference; ``docs/plugins.md`` repeats them and a
test checks that every hook is documented there and exercised by the test-suite.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    import typer

    from brainsynth_cli.specs import Spec

PROJECT = "brainsynth"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[["Spec"], None]


@hookspec
def register_segmenters(register: Register) -> None:
    """Register segmenters: image in, label map out.

    Call ``register(Spec(name=..., factory=..., help=..., requires=...))`` for each one.
    The factory is called with keyword options (may be none) and returns an object that
    follows :class:`brainsynth_cli.interfaces.Segmenter`: ``segment(volume, progress=None)``
    returns a :class:`brainsynth_cli.images.Volume` of integer FreeSurfer aseg label ids on
    the input grid (same shape and affine). Optionally the object has ``labels``: the aseg ids
    it can produce (an iterable of ints, or a method returning one); structure groups none of
    whose ids it produces are reported as missing (n/a, null) rather than 0. Without it,
    every label of its output counts.
    """


@hookspec
def register_prompt_builders(register: Register) -> None:
    """Register prompt builders: structure change rates in, text prompt out.

    The factory is called with ``rules=`` (a :class:`brainsynth_cli.structures.Rules`) and
    returns an object that follows :class:`brainsynth_cli.interfaces.PromptBuilder`:
    ``build(change)`` returns the prompt for a :class:`brainsynth_cli.interfaces.Change`
    (or ``None`` when nothing is worth describing) and ``parse(prompt)`` returns the
    requested interval per structure group, the inverse that evaluation needs.
    """


@hookspec
def register_blenders(register: Register) -> None:
    """Register blenders: put a structure of one image into another.

    The factory returns an object that follows :class:`brainsynth_cli.interfaces.Blender`:
    ``blend(prior, target, mask)`` takes two float arrays of the same 2D or 3D shape and a
    boolean mask of the region to take from ``target``, and returns a new float32 array
    that equals ``prior`` outside the region.
    """


@hookspec
def register_text_encoders(register: Register) -> None:
    """Register text encoders for conditioning diffusion models on prompts.

    The factory is called with ``path=`` (a local folder or hub id, or ``None`` for the
    encoder's own default) and returns an object that follows
    :class:`brainsynth_cli.interfaces.TextEncoder`: it knows its ``hidden_size`` and
    ``max_length`` and ``load()`` returns ``(tokenizer, model)``.
    """


@hookspec
def register_generators(register: Register) -> None:
    """Register generators: trainable image models (editing or generation).

    The factory returns an object that follows :class:`brainsynth_cli.interfaces.Generator`:
    ``train(options, progress)`` writes a model folder and ``load(model_dir, device)``
    returns a model with ``edit`` or ``sample`` methods.
    """


@hookspec
def register_measures(register: Register) -> None:
    """Register measurements: how big each structure is in an edited image.

    The factory is called with keyword options (may be none) and returns an object that
    follows :class:`brainsynth_cli.interfaces.Measure`: ``measure(reference, reference_labels,
    image)`` takes a reference image whose labels are known (the prior of an edit), those
    labels, and an image of the same shape (the edited image, or a real target), and returns
    the size of each label id in ``image`` in voxels (fractions allowed, so partial-volume
    estimates are possible). ``brainsynth evaluate --measure NAME`` picks one.
    """


@hookspec
def register_commands(app: "typer.Typer") -> None:
    """Add sub-commands to the ``brainsynth`` command line.

    ``app`` is the root :class:`typer.Typer`; decorate functions with ``@app.command()``.
    Keep heavy imports inside the command body so ``brainsynth --help`` stays fast. Raise
    :class:`brainsynth_cli.errors.UserError` for errors the user can fix: the CLI prints it
    as one line and exits with status 2.
    """
