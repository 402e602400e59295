"""An example brainsynth plugin: the template for plugin authors.

It registers one segmenter (``kmeans-tissue``) and one prompt builder (``direction``). The
hook functions only describe the components; the algorithms live in their own modules and are
imported when a user selects them, so ``brainsynth --help`` stays fast.
"""

from brainsynth_cli import hookimpl
from brainsynth_cli.specs import Spec


@hookimpl
def register_segmenters(register):
    register(
        Spec(
            name="kmeans-tissue",
            factory="brainsynth_example.kmeans:KMeansTissueSegmenter",
            help="Otsu head mask + 3-class k-means: CSF (24), cortex/GM (3), white matter (2)",
        )
    )


@hookimpl
def register_prompt_builders(register):
    register(
        Spec(
            name="direction",
            factory="brainsynth_example.direction:DirectionPromptBuilder",
            help="says only which way each structure changed ('ventricle grows, cortex shrinks')",
        )
    )
