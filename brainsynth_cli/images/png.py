"""2D slices as 8- or 16-bit greyscale PNG."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from brainsynth_cli.errors import InputError
from brainsynth_cli.images.atomic import atomic_output


def read_png(path: str | os.PathLike[str]) -> tuple[Any, int]:
    """Read a greyscale PNG. Returns ``(array, bit_depth)``; RGB with equal channels is accepted."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise InputError(p, "no such file", "check the path")
    if p.is_dir():
        raise InputError(p, "is a folder, not an image file", "give a PNG file")
    from brainsynth_cli.limits import check_png_size

    try:
        with Image.open(p) as im:
            check_png_size(p, *im.size)  # from the header, before the pixels are decoded
            im.load()
            mode = im.mode
            arr = np.array(im)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(p, f"cannot be read as PNG ({first[:160]})", "the file is corrupt or not an image") from None
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        return arr.astype(np.uint16), 16
    if mode == "L":
        return arr.astype(np.uint8), 8
    if mode in ("RGB", "RGBA") and arr.ndim == 3:
        rgb = arr[..., :3]
        if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
            return rgb[..., 0].astype(np.uint8), 8
        raise InputError(p, "is a colour image", "brain MRI slices must be greyscale (8- or 16-bit)")
    raise InputError(p, f"has unsupported PNG mode {mode}", "save it as 8- or 16-bit greyscale")


def write_png(path: str | os.PathLike[str], array: Any, *, bits: int = 16) -> Path:
    """Write an integer array as greyscale PNG (8 or 16 bit), atomically. Values must fit."""
    import numpy as np
    from PIL import Image

    p = Path(path)
    arr = np.asarray(array)
    if arr.ndim != 2:
        raise ValueError(f"PNG needs a 2D array, got shape {arr.shape}")
    if bits not in (8, 16):
        raise ValueError("bits must be 8 or 16")
    top = 255 if bits == 8 else 65535
    if arr.size and (arr.min() < 0 or arr.max() > top):
        raise ValueError(f"values must lie in [0, {top}] for a {bits}-bit PNG")
    if bits == 8:
        im = Image.fromarray(np.ascontiguousarray(arr.astype(np.uint8)))
    else:
        im = Image.fromarray(np.ascontiguousarray(arr.astype(np.uint16)))
    with atomic_output(p) as tmp:
        im.save(tmp, format="PNG")
    return p
