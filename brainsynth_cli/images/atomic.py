"""Atomic writes: write to a temporary file in the target folder, then rename.

A reader never sees a half-written file and a failed command leaves no partial output.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from brainsynth_cli.errors import InputError


def _suffixes(path: Path) -> str:
    name = path.name
    for multi in (".nii.gz", ".tar.gz"):
        if name.endswith(multi):
            return multi
    return path.suffix


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix); on success rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(target, f"cannot create the output folder ({exc.strerror})", "choose a writable location") from None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + _suffixes(target), dir=parent)
    except OSError as exc:
        raise InputError(target, f"cannot write here ({exc.strerror})", "choose a writable location") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)





def write_text_once(path: str | os.PathLike[str], text: str) -> bool:
    """Write ``text`` to ``path`` unless ``path`` exists; returns whether this call wrote it.

    The text goes to a temporary file in the target folder that is then hard-linked to ``path``,
    which fails when the name exists: of several runs writing at once exactly one writes the
    file, none writes over another's, and a reader never sees it half-written. Where the file
    system has no hard links the file is renamed into place when it is still missing."""
    target = Path(path)
    if target.exists():
        return False
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise InputError(target, f"cannot write here ({exc.strerror})", "choose a writable location") from None
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        try:
            os.link(tmp, target)
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system
            if target.exists():
                return False
            os.replace(tmp, target)
        return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
