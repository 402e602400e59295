"""Model weights are loaded from safetensors only: a pickled checkpoint (``.bin``, ``.pt``,
``.ckpt``, ``.pkl``) can run code when it is loaded, so brainsynth refuses folders that hold them
instead of relying on a library default. Loaders pass ``use_safetensors=True`` and never
``trust_remote_code``.
"""

from __future__ import annotations

import os
from pathlib import Path

from brainsynth_cli.errors import InputError

#: File types that hold pickles (PyTorch ``torch.save``, Lightning checkpoints, plain pickles).
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

#: Keyword arguments every ``from_pretrained`` call of brainsynth passes.
SAFE_LOAD = {"use_safetensors": True}


def _weights(folder: Path, depth: int = 3) -> list[Path]:
    found = []
    base = len(folder.parts)
    for root, dirs, files in os.walk(folder):
        if len(Path(root).parts) - base >= depth:
            dirs[:] = []
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(root) / f for f in files if f.lower().endswith(PICKLE_SUFFIXES + (".safetensors",))]
    return sorted(found)


def refuse_pickled_weights(folder: str | os.PathLike[str] | None, *, strict: bool) -> None:
    """Refuse a local model folder with pickled weights (one line naming the file).

    ``strict`` (a brainsynth model folder, which never holds pickles): any pickle file is refused.
    Otherwise (a pretrained folder from elsewhere): a folder whose weights are only pickles is
    refused; pickles next to safetensors are ignored (the safetensors are loaded).
    """
    if folder is None:
        return
    d = Path(folder)
    if not d.is_dir():
        return  # a hub id, or a missing folder that the loader reports
    files = _weights(d)
    for f in files:
        if not f.name.lower().endswith(PICKLE_SUFFIXES):
            continue
        has_safe = any(g.parent == f.parent and g.name.endswith(".safetensors") for g in files)
        if strict or not has_safe:
            raise InputError(f, "holds pickled weights, which can run code when loaded; brainsynth loads only safetensors",
                             "convert the weights to .safetensors (save_pretrained(..., safe_serialization=True)) or use a folder that has them")
