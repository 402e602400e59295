"""Built-in blenders: put a structure of one image into another (2D or 3D, float images).

- ``poisson``: Poisson image editing, Delta f = Delta target inside the mask with f = prior on
  its boundary, solved matrix-free by multigrid-preconditioned CG in numba.
- ``copy-paste``: target voxels inside the mask, prior outside (a hard seam; the baseline).
- ``warp``: the prior deformed (demons registration onto the target) inside the mask: walls move,
  the prior's own texture and contrast stay.
- ``none``: the prior unchanged (no structure is put in; a control).

This module only registers specs; the algorithms (numpy, numba, SimpleITK) are imported when a blender
is created.
"""

from __future__ import annotations

from brainsynth_cli.hookspecs import hookimpl
from brainsynth_cli.specs import Spec, module

#: The built-in blenders, in the order they are listed.
BLENDERS = (
    Spec(
        name="poisson",
        factory="brainsynth_plugins.blend.poisson:PoissonBlender",
        help="Poisson image editing (guidance = target's Laplacian, prior on the boundary); numba multigrid-CG",
        requires=(module("numba"),),
    ),
    Spec(name="copy-paste", factory="brainsynth_plugins.blend.simple:CopyPasteBlender",
         help="target inside the mask, prior outside (hard seam)"),
    Spec(
        name="warp",
        factory="brainsynth_plugins.blend.warp:WarpBlender",
        help="the prior deformed onto the target inside the mask (demons registration; the prior's own voxels moved)",
        requires=(module("SimpleITK"),),
    ),
    Spec(name="none", factory="brainsynth_plugins.blend.simple:NoneBlender",
         help="the prior unchanged (no structure put in; a control)"),
)


@hookimpl
def register_blenders(register):
    for spec in BLENDERS:
        register(spec)
