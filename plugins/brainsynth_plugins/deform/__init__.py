"""Model-free editing by deformation (generator ``deform``).

A smooth, invertible deformation of an image and its label map that reaches requested change
rates of the ventricles and the cortex: the simulator's fields (ventricle walls pushed outward,
cortex thinned from the pial side), in 2D or 3D, at any size, with no training. It is the
baseline every learned editor is compared with, and a way to make training pairs for rates a
cohort lacks (``brainsynth make-pairs --deformed``).

Only the spec here; the code is imported when the generator is used. Python API:
``brainsynth_plugins.deform.deform(image, labels, {"ventricle": 15}, spacing=(2, 2, 2))``
(see :func:`brainsynth_plugins.deform.deformation.deform`).
"""

from __future__ import annotations

from typing import Any

from brainsynth_cli.hookspecs import hookimpl
from brainsynth_cli.specs import Spec


@hookimpl
def register_generators(register) -> None:
    register(Spec(
        "deform", "brainsynth_plugins.deform.generator:DeformGenerator",
        help="model-free baseline: a smooth invertible deformation of the scan and its labels to the prompt's target rates (no training)",
    ))


def deform(*args: Any, **kwargs: Any) -> Any:
    """:func:`brainsynth_plugins.deform.deformation.deform` (imported on first use)."""
    from brainsynth_plugins.deform.deformation import deform as _deform

    return _deform(*args, **kwargs)
