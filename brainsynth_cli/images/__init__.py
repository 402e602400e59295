"""Image I/O for the kernel: NIfTI volumes and PNG slices, validated, written atomically.

Heavy libraries (nibabel, Pillow, numpy) are imported inside the functions so that importing
this package costs nothing on the path of ``brainsynth --help``.
"""

from brainsynth_cli.images.atomic import atomic_output, atomic_write_bytes, atomic_write_text, write_text_once
from brainsynth_cli.images.nifti import read_labels, read_volume, write_labels, write_volume
from brainsynth_cli.images.png import read_png, write_png
from brainsynth_cli.images.validate import check_same_grid
from brainsynth_cli.images.volume import Volume

__all__ = [
    "Volume",
    "atomic_output",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_same_grid",
    "read_labels",
    "read_png",
    "read_volume",
    "write_labels",
    "write_png",
    "write_text_once",
    "write_volume",
]
