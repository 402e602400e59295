"""The ``ants`` segmenter (optional extra ``brainsynth[ants]``, the antspyx package).

Each atlas (a T1 image and its aseg label map) is registered to the subject with
``ants.registration`` (default ``type_of_transform="SyN"``: rigid + affine + symmetric
normalisation, Mattes MI), the metric masked by the atlas brain so a skull in the subject does
not pull on a skull-stripped atlas; its labels are carried with ``ants.apply_transforms``
(``interpolator="genericLabel"``). With several atlases every voxel takes the label most atlases
agree on (majority voting, as DALL-E Brain builds its atlases; ties go to the earliest atlas).

Options: ``atlases`` ("T1:LABELS,T1:LABELS,...", default the bundled MNI152 template and labels),
``transform`` ("SyN"; any ANTsPy ``type_of_transform``), ``threads`` (1), ``seed`` (0).
The thread count and seed make ANTs deterministic (ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS,
``random_seed``).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

import numpy as np

from brainsynth_cli.errors import InputError, UserError
from brainsynth_cli.images import Volume
from brainsynth_cli.interfaces import Progress


def majority_vote(stack: np.ndarray) -> np.ndarray:
    """Per-voxel most frequent label of ``stack`` (atlases, ...); ties go to the earliest atlas."""
    stack = np.asarray(stack)
    if stack.shape[0] == 1:
        return stack[0].copy()
    ids = np.unique(stack)
    counts = np.zeros((ids.size,) + stack.shape[1:], dtype=np.int16)
    for n, value in enumerate(ids):
        counts[n] = (stack == value).sum(axis=0)
    best = counts.max(axis=0)
    out = np.zeros(stack.shape[1:], dtype=stack.dtype)
    decided = np.zeros(stack.shape[1:], dtype=bool)
    for atlas in stack:  # the earliest atlas whose label reaches the top count wins
        mine = np.take_along_axis(counts, np.searchsorted(ids, atlas)[None], axis=0)[0]
        hit = ~decided & (mine == best)
        out[hit] = atlas[hit]
        decided |= hit
    return out


def _parse_atlases(text: str | None) -> list[tuple[Path, Path]] | None:
    if not text:
        return None
    pairs = []
    for item in str(text).split(","):
        t1, sep, lab = item.strip().partition(":")
        if not sep or not t1 or not lab:
            raise UserError(f"atlas {item!r} is not T1:LABELS; e.g. a_T1.nii.gz:a_dseg.nii.gz (several: comma-separated)")
        for p in (t1, lab):
            if not Path(p).expanduser().is_file():
                raise InputError(p, "atlas file not found", "check the -O atlas/atlases value")
        pairs.append((Path(t1).expanduser(), Path(lab).expanduser()))
    return pairs


class AntsSegmenter:
    """antspyx registration of one or more atlases, labels by majority vote."""

    name = "ants"

    def __init__(self, atlases: str | None = None, transform: str = "SyN", threads: int = 1, seed: int = 0) -> None:
        self.atlas_paths = _parse_atlases(atlases)
        self.transform = str(transform)
        self.threads = int(threads)
        self.seed = int(seed)
        os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(self.threads))
        import ants  # noqa: F401  (the requirement; checked before the factory runs)

    def atlases(self, voxel_mm: float) -> list[tuple[Volume, Volume]]:
        if self.atlas_paths is None:
            from brainsynth_plugins.simulate.template import reference

            return [reference(resolution=1.0 if voxel_mm < 1.5 else 2.0)]
        from brainsynth_cli.images import check_same_grid, read_labels, read_volume

        out = []
        for t1_path, lab_path in self.atlas_paths:
            t1, lab = read_volume(t1_path), read_labels(lab_path)
            check_same_grid(t1, lab)
            out.append((t1, lab))
        return out

    def segment(self, image: Volume, progress: Progress | None = None) -> Volume:
        import ants

        fixed = _to_ants(image.data, image.affine)
        atlases = self.atlases(min(image.voxel_size))
        votes = []
        kwargs: dict[str, Any] = {}
        params = inspect.signature(ants.registration).parameters
        if "random_seed" in params:
            kwargs["random_seed"] = self.seed
        for n, (t1, lab) in enumerate(atlases):
            if progress:
                progress(n, len(atlases), f"atlas {n + 1}")
            moving = _to_ants(t1.data, t1.affine)
            brain = _to_ants((lab.data > 0).astype(np.float32), lab.affine)
            if "moving_mask" in params:
                kwargs["moving_mask"] = ants.morphology(brain, operation="dilate", radius=2, mtype="binary")
            reg = ants.registration(fixed=fixed, moving=moving, type_of_transform=self.transform, **kwargs)
            warped = ants.apply_transforms(fixed=fixed, moving=_to_ants(lab.data.astype(np.float32), lab.affine),
                                           transformlist=reg["fwdtransforms"], interpolator="genericLabel")
            votes.append(np.rint(warped.numpy()).astype(np.int32))
        if progress:
            progress(len(atlases), len(atlases), "vote")
        return image.with_data(majority_vote(np.stack(votes)))


def _to_ants(data: np.ndarray, affine: np.ndarray) -> Any:
    """An ANTsImage (ITK LPS geometry, array indexed [i, j, k]) placed by a RAS ``affine``."""
    import ants

    from brainsynth_plugins.segment.itk import geometry

    spacing, origin, direction = geometry(affine)
    return ants.from_numpy(np.asarray(data, dtype=np.float32), origin=tuple(origin), spacing=tuple(spacing),
                           direction=np.array(direction).reshape(3, 3))
