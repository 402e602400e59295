"""The in-memory image type that segmenters, blenders and commands pass around."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


@dataclass
class Volume:
    """A 2D or 3D image on a grid: voxel ``data``, a 4x4 voxel-to-world ``affine`` (RAS mm) and
    the original NIfTI ``header`` (or ``None``). ``path`` is where it was read from, for
    messages."""

    data: "np.ndarray"
    affine: "np.ndarray"
    header: Any = None
    path: Path | None = field(default=None, compare=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def voxel_size(self) -> tuple[float, ...]:
        """Voxel edge lengths in mm, from the affine."""
        import numpy as np

        n = self.data.ndim
        return tuple(float(v) for v in np.sqrt((np.asarray(self.affine)[:3, :n] ** 2).sum(axis=0)))

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel in mm^3 (area in mm^2 for 2D)."""
        out = 1.0
        for v in self.voxel_size:
            out *= v
        return out

    def with_data(self, data: "np.ndarray") -> "Volume":
        """The same grid and header with other voxel data."""
        return replace(self, data=data)

    def label(self) -> str:
        return str(self.path) if self.path is not None else "<in-memory image>"
