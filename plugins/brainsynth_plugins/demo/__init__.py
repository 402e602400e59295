"""Built-in plugin: ``brainsynth demo``, the whole chain on built-in data."""

from brainsynth_cli import hookimpl


@hookimpl
def register_commands(app):
    from brainsynth_plugins.demo.command import register

    register(app)
