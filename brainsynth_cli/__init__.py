"""brainsynth: text-editable brain MRI, as a plugin-based command-line toolbox.

This package is the kernel: hook specifications, plugin loading and registries, image I/O,
structure definitions and the command line. It knows no algorithm; every algorithm is a
plugin (see ``brainsynth_plugins`` and ``docs/writing-a-plugin.md``).
"""

__version__ = "0.1.0"

from brainsynth_cli.hookspecs import hookimpl  # noqa: E402  (the decorator plugin authors need)

__all__ = ["__version__", "hookimpl"]
