"""Built-in prompt builders: ``quantized`` (BrainEditor phrases), ``numeric`` (exact change
rates) and ``template`` (DALL-E-Brain-style captions of structure volumes and demographics).

Only descriptions here; the builders live in :mod:`brainsynth_plugins.prompts.builders` and
are imported when one is selected. Every factory takes ``rules=`` (a
:class:`brainsynth_cli.structures.Rules`); ``template`` also takes ``seed=``.
"""

from brainsynth_cli.hookspecs import hookimpl
from brainsynth_cli.specs import Spec


@hookimpl
def register_prompt_builders(register):
    register(Spec(
        name="quantized",
        factory="brainsynth_plugins.prompts.builders:QuantizedPromptBuilder",
        help="BrainEditor phrases from the rules' intervals ('cortex atrophy and severe ventricle enlargement')",
    ))
    register(Spec(
        name="numeric",
        factory="brainsynth_plugins.prompts.builders:NumericPromptBuilder",
        help="exact change rates ('ventricle enlarges by 5.5%'); parse maps them to the rules' intervals",
    ))
    register(Spec(
        name="template",
        factory="brainsynth_plugins.prompts.builders:TemplatePromptBuilder",
        help="DALL-E-Brain captions: 20 sentence templates with structure volumes, age, sex, modality (seeded)",
    ))
