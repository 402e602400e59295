"""Built-in segmenters: ``atlas`` (default; SimpleITK registration of the bundled template,
label propagation, intensity refinement), ``ants`` (antspyx registration and majority voting
over one or more atlases; ``pip install "brainsynth[ants]"``) and ``freesurfer`` (runs
``mri_synthseg`` from FreeSurfer, or imports an existing ``aseg.mgz``/``aparc+aseg.mgz``).

Only descriptions here; the algorithms live in :mod:`.atlas`, :mod:`.ants` and
:mod:`.freesurfer` and are imported when a segmenter is selected.
"""

from brainsynth_cli.hookspecs import hookimpl
from brainsynth_cli.specs import Spec, module


@hookimpl
def register_segmenters(register):
    register(Spec(
        name="atlas",
        factory="brainsynth_plugins.segment.atlas:AtlasSegmenter",
        help="MNI152 template: SimpleITK affine + demons registration, label propagation, CSF/GM/WM mixture refinement",
    ))
    register(Spec(
        name="ants",
        factory="brainsynth_plugins.segment.ants:AntsSegmenter",
        help="antspyx SyN registration of one or more atlases, labels by majority vote (DALL-E Brain style)",
        requires=(module("ants", extra="ants"),),
    ))
    register(Spec(
        name="freesurfer",
        factory="brainsynth_plugins.segment.freesurfer:FreeSurferSegmenter",
        help="FreeSurfer: runs mri_synthseg ($FREESURFER_HOME), or imports aseg.mgz via -O subject_dir=DIR / -O aseg=FILE",
    ))
