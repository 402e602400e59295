"""What a BIDS derivative needs beside its label maps, shared by the commands that write one
(``segment --bids``, ``simulate``'s truth labels): the ``dseg.tsv`` look-up table, a NIfTI
header that states its units, and ``bids:raw:`` links to the images the labels belong to."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from brainsynth_cli.structures import Rules


def lookup_table(label_ids: Any, rules: Rules) -> str:
    """BIDS ``dseg.tsv``: ``index``, ``name`` (FreeSurfer LUT names from the rules), ``color``
    (the pictures' outline colours), for every label of the rules and every id present."""
    from brainsynth_cli.figures import label_colour

    ids = sorted({int(k) for k in rules.labels} | {int(k) for k in label_ids})
    lines = ["index\tname\tcolor"]
    for i in ids:
        r, g, b = label_colour(i) if i else (0, 0, 0)
        lines.append(f"{i}\t{rules.labels.get(i, f'label-{i}')}\t#{r:02x}{g:02x}{b:02x}")
    return "\n".join(lines) + "\n"


def units_header(header: Any = None) -> Any:
    """A copy of a NIfTI header (a new one when there is none or it is not NIfTI) with units set
    to mm and seconds: brainsynth reads every affine in mm, and BIDS asks for the units."""
    import nibabel as nib

    hdr = header.copy() if isinstance(header, nib.Nifti1Header) else nib.Nifti1Header()
    hdr.set_xyzt_units("mm", "sec")
    return hdr


def source_uri(image_path: str | os.PathLike[str], raw_root: str | os.PathLike[str] | None) -> str:
    """``bids:raw:<path>`` of an image inside the raw dataset (``DatasetLinks`` ``raw``), else its file URI."""
    p = Path(image_path).resolve()
    if raw_root is not None:
        rel = Path(os.path.relpath(p, Path(raw_root).resolve()))
        if not rel.as_posix().startswith("../"):
            return f"bids:raw:{rel.as_posix()}"
    return p.as_uri()
