"""Built-in evaluation plugin: measurements of achieved structure change in edited images."""

from brainsynth_cli import hookimpl
from brainsynth_cli.specs import Spec, module


@hookimpl
def register_measures(register):
    register(Spec(
        name="registration",
        factory="brainsynth_plugins.evaluate.measures:RegistrationMeasure",
        help="demons registration of the prior onto the edited image; prior labels carried along",
        requires=(module("SimpleITK"),),
    ))
    register(Spec(
        name="tissue",
        factory="brainsynth_plugins.evaluate.measures:TissueMeasure",
        help="intensity classification near each structure, class means learned from the prior",
    ))


@hookimpl
def register_commands(app):
    from brainsynth_plugins.evaluate.command import register

    register(app)
