"""brainsynth's built-in plugins.

Each sub-module listed in ``brainsynth_cli.plugin_manager.BUILTIN_PLUGINS`` is a plugin: it
registers its components through the same hooks a third-party plugin uses, and imports the
algorithms (and their heavy libraries) only when a component is used.
"""
