"""Guarding outputs: never write over an input, check every output location before any work,
write several files all-or-nothing, keep writes inside the output folder, and lock an output
folder against a second run.

Commands use these helpers in this order::

    refuse_overwriting_inputs([out, qc], [image])     # outputs that resolve to an input
    check_writable([out, qc])                          # every location, before any work
    ... the work ...
    with staged_outputs([out, qc]) as staged:          # all-or-nothing
        write_labels(staged[out], ...)
        write_qc(staged[qc], ...)

and for a command that fills an output folder::

    with locked_output(folder, command="make-pairs", keep=lambda: any_pair_finished()):
        ...  # a second run into the same folder gets a one-line error naming this process

Everything here raises :class:`~brainsynth_cli.errors.InputError` (one line, exit status 2).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from brainsynth_cli.errors import InputError

#: The lock file an output folder holds while a run writes into it (removed when the run ends).
LOCK_NAME = ".brainsynth.lock"
_LOCK_PREFIX = ".brainsynth"
_LOCK_SUFFIX = ".lock"


# ---------------------------------------------------------------------------------------------
# paths
# ---------------------------------------------------------------------------------------------
def resolved(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute with every symbolic link and ``..`` resolved (it need not exist)."""
    return Path(os.path.realpath(os.path.abspath(os.fspath(path))))


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when ``a`` and ``b`` name the same file: equal after resolving links, or hard links."""
    if resolved(a) == resolved(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def is_inside(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> bool:
    """True when ``path`` (resolved) is ``folder`` (resolved) or lies below it."""
    p, f = resolved(path), resolved(folder)
    return p == f or f in p.parents


def check_inside(path: str | os.PathLike[str], folder: str | os.PathLike[str], *, what: str = "an output") -> Path:
    """Refuse ``path`` when it would lie outside ``folder`` (``..``, absolute parts, links); returns it."""
    if not is_inside(path, folder):
        raise InputError(folder, f"{what} would be written outside this folder ({path})",
                         "check the subject and session ids: they must be letters and digits only")
    return Path(path)


def lock_file_name(name: str) -> bool:
    """True for the lock files brainsynth keeps in an output folder while a run writes there."""
    return name.startswith(_LOCK_PREFIX) and name.endswith(_LOCK_SUFFIX)


def is_empty_folder(folder: str | os.PathLike[str]) -> bool:
    """True when ``folder`` does not exist or holds nothing but brainsynth lock files."""
    d = Path(folder)
    if not d.exists():
        return True
    if not d.is_dir():
        return False
    return not any(not lock_file_name(p.name) for p in d.iterdir())


# ---------------------------------------------------------------------------------------------
# output = input
# ---------------------------------------------------------------------------------------------
def _paths(items: Iterable[Any]) -> list[Path]:
    return [Path(p) for p in items if p is not None]


def refuse_overwriting_inputs(outputs: Iterable[Any], inputs: Iterable[Any]) -> None:
    """Refuse an output file that is one of the inputs (resolving links and relative paths, hard
    links included) or that is given for two outputs."""
    outs, ins = _paths(outputs), _paths(inputs)
    for out in outs:
        for src in ins:
            if same_file(out, src):
                raise InputError(out, f"is the input {src}; brainsynth never writes over its inputs",
                                 "give the output another name")
    for i, a in enumerate(outs):
        for b in outs[i + 1:]:
            if same_file(a, b):
                raise InputError(b, f"is given for two outputs ({a})", "give each output its own name")


def refuse_folder_over_input(folder: Any, inputs: Mapping[str, Any], *, fix: str = "choose another output folder") -> None:
    """Refuse an output folder that is one of the input folders (``inputs``: what -> folder)."""
    for what, src in inputs.items():
        if src is not None and Path(src).exists() and same_file(folder, src):
            raise InputError(folder, f"is the {what}; brainsynth never writes its outputs into its inputs", fix)


# ---------------------------------------------------------------------------------------------
# writable locations
# ---------------------------------------------------------------------------------------------
def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink():
        if p.parent == p:
            break
        p = p.parent
    return p


def _probe(folder: Path, target: Path) -> None:
    """Create and remove a file in ``folder``: the one test that is true for every file system."""
    try:
        fd, name = tempfile.mkstemp(prefix=".brainsynth-probe-", dir=folder)
    except OSError as exc:
        raise InputError(target, f"cannot be written: {folder} is not writable ({exc.strerror})",
                         "choose a writable location") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)


def check_writable(paths: Iterable[Any]) -> None:
    """Refuse, before any work, an output file that cannot be written: it is a folder or not a
    regular file, or its folder is a file, does not exist and cannot be made, or is read-only."""
    for out in _paths(paths):
        if out.is_dir():
            raise InputError(out, "is a folder", "give a file name")
        if out.exists() and not out.is_file():
            raise InputError(out, "exists and is not a regular file", "give another output name")
        parent = out.parent if str(out.parent) else Path(".")
        base = _nearest_existing(parent)
        if not base.is_dir():
            raise InputError(out, f"cannot be written: {base} is not a folder", "choose another output location")
        _probe(base, out)


def check_writable_folder(folder: Any) -> None:
    """Refuse an output folder that is a file, or that cannot be made or written."""
    d = Path(folder)
    if d.exists() and not d.is_dir():
        raise InputError(d, "exists and is not a folder", "give a folder name for the output")
    base = _nearest_existing(d)
    if not base.is_dir():
        raise InputError(d, f"cannot be made: {base} is not a folder", "choose another output location")
    _probe(base, d)


# ---------------------------------------------------------------------------------------------
# all-or-nothing writes of several files
# ---------------------------------------------------------------------------------------------
def _suffix(path: Path) -> str:
    name = path.name.lower()
    for multi in (".nii.gz", ".tar.gz"):
        if name.endswith(multi):
            return path.name[-len(multi):]
    return path.suffix


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


class StagedOutputs:
    """Temporary files next to each target; all renamed into place at the end, or none.

    ``staged[target]`` is the temporary path to write (same suffix, so writers that choose the
    format by suffix work). When the block raises, every temporary file and every folder made for
    them is removed and no target is touched. When it completes, the targets are replaced one by
    one; if a replacement fails, the targets already replaced are put back as they were.
    """

    def __init__(self, targets: Iterable[Any]) -> None:
        self.targets = _paths(targets)
        self.tmp: dict[Path, Path] = {}
        self._made_dirs: list[Path] = []

    def __getitem__(self, target: Any) -> Path:
        return self.tmp[Path(target)]

    def _mkdirs(self, folder: Path) -> None:
        missing = []
        p = folder
        while not p.exists():
            missing.append(p)
            if p.parent == p:
                break
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise InputError(d, f"cannot create the output folder ({exc.strerror})", "choose a writable location") from None
            self._made_dirs.append(d)

    def __enter__(self) -> Self:
        try:
            for target in self.targets:
                parent = target.parent if str(target.parent) else Path(".")
                self._mkdirs(parent)
                try:
                    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + _suffix(target), dir=parent)
                except OSError as exc:
                    raise InputError(target, f"cannot write here ({exc.strerror})", "choose a writable location") from None
                os.close(fd)
                self.tmp[target] = Path(name)
        except BaseException:
            self._discard()
            raise
        return self

    def _discard(self) -> None:
        for tmp in self.tmp.values():
            with contextlib.suppress(OSError):
                tmp.unlink()
        for d in reversed(self._made_dirs):
            with contextlib.suppress(OSError):
                d.rmdir()

    def _commit(self) -> None:
        mode = 0o666 & ~_umask()
        backups: dict[Path, Path | None] = {}
        done: list[Path] = []
        try:
            for target in self.targets:
                backups[target] = _backup(target)
            for target in self.targets:
                tmp = self.tmp[target]
                with contextlib.suppress(OSError):
                    os.chmod(tmp, mode)
                os.replace(tmp, target)
                done.append(target)
        except OSError as exc:
            for target in done:  # put back what was there
                with contextlib.suppress(OSError):
                    if backups.get(target) is not None:
                        os.replace(backups[target], target)
                    else:
                        target.unlink()
            for b in backups.values():
                if b is not None:
                    with contextlib.suppress(OSError):
                        b.unlink()
            self._discard()
            where = Path(exc.filename) if exc.filename else self.targets[0]
            raise InputError(where, f"cannot be written ({exc.strerror}); no output was changed", "free space or choose another location") from None
        for b in backups.values():
            if b is not None:
                with contextlib.suppress(OSError):
                    b.unlink()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> bool:
        if exc_type is not None:
            self._discard()
            return False
        self._commit()
        return False


def _backup(target: Path) -> Path | None:
    """A second name for ``target``'s current content (a hard link, else a copy), or None."""
    import secrets

    if not target.is_file():
        return None
    name = target.parent / f".{target.name}.{secrets.token_hex(6)}.bak"
    try:
        os.link(target, name)
    except OSError:
        shutil.copy2(target, name)
    return name


def staged_outputs(targets: Iterable[Any]) -> StagedOutputs:
    """``with staged_outputs([a, b]) as staged: write(staged[a]); write(staged[b])``: both or neither."""
    return StagedOutputs(targets)


# ---------------------------------------------------------------------------------------------
# output-folder lock
# ---------------------------------------------------------------------------------------------
try:  # POSIX; elsewhere the lock is not taken (brainsynth targets Linux and macOS)
    import fcntl as _fcntl
except ImportError:  # pragma: no cover
    _fcntl = None  # type: ignore[assignment]


def _holder(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("pid") else None


def _describe_holders(folder: Path, names: Sequence[str]) -> str:
    seen = []
    for name in names:
        paths = [folder / name] if "*" not in name else sorted(folder.glob(name))
        for p in paths:
            info = _holder(p)
            if info is not None:
                where = "" if info.get("host") in (None, socket.gethostname()) else f" on {info['host']}"
                seen.append(f"{info.get('command') or 'brainsynth'}, process {info['pid']}{where}")
    return "; ".join(dict.fromkeys(seen)) or "process not known yet"


class FolderLock:
    """An advisory lock (``flock``) on ``FOLDER/.brainsynth.lock`` naming the process that holds it.

    ``shared=True`` with a ``slot`` (e.g. ``"shard-2-of-8"``, or several: one per participant)
    lets several runs that write disjoint parts share the folder (make-pairs shards, participant
    jobs): each holds the folder lock shared and its slot locks exclusively. A run that needs the
    whole folder takes it exclusively. The kernel drops a killed process's locks; a lock file left
    behind is reused.
    """

    def __init__(self, folder: Any, *, command: str, shared: bool = False,
                 slot: str | Sequence[str] | None = None) -> None:
        self.folder = Path(folder)
        self.command = command
        self.shared = shared
        self.slot = slot
        self.slots = [slot] if isinstance(slot, str) else list(slot or [])
        self._fds: list[tuple[int, Path, bool]] = []  # (fd, path, exclusive)

    def _info(self) -> str:
        return json.dumps({"pid": os.getpid(), "command": self.command, "host": socket.gethostname()}) + "\n"

    def _take(self, path: Path, exclusive: bool, holders: Sequence[str]) -> None:
        for _ in range(20):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
            try:
                _fcntl.flock(fd, (_fcntl.LOCK_EX if exclusive else _fcntl.LOCK_SH) | _fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise InputError(self.folder, f"is in use by another brainsynth run ({_describe_holders(self.folder, holders)})",
                                     "wait for it to finish, or write to another folder") from None
                if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    import sys

                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    print(f"brainsynth: warning: {self.folder}: this file system cannot lock files; make sure no other run "
                          "writes into this folder", file=sys.stderr)
                    return
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                if exclusive:
                    os.ftruncate(fd, 0)
                    os.write(fd, self._info().encode())
                self._fds.append((fd, path, exclusive))
                return
            os.close(fd)  # the file was removed by its last holder meanwhile: take the new one
        raise InputError(self.folder, "its lock file keeps changing", "try again")  # pragma: no cover

    def acquire(self) -> Self:
        if _fcntl is None:  # pragma: no cover
            return self
        try:
            main = self.folder / LOCK_NAME
            if self.shared:
                self._take(main, False, [LOCK_NAME])
                for slot in self.slots:
                    name = f"{_LOCK_PREFIX}-{slot}{_LOCK_SUFFIX}"
                    self._take(self.folder / name, True, [name])
            else:
                self._take(main, True, [LOCK_NAME, f"{_LOCK_PREFIX}-*{_LOCK_SUFFIX}"])
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        while self._fds:
            fd, path, exclusive = self._fds.pop()
            try:
                if not exclusive:  # remove the shared file only when no other run holds it
                    try:
                        _fcntl.flock(fd, _fcntl.LOCK_EX | _fcntl.LOCK_NB)
                        exclusive = True
                    except OSError:
                        pass
                if exclusive:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
            finally:
                os.close(fd)

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def locked_output(folder: Any, *, command: str, keep: Callable[[], bool] | None = None, shared: bool = False,
                  slot: str | Sequence[str] | None = None) -> Iterator[FolderLock]:
    """Lock an output folder (made when missing) for one run.

    A second run into the same folder gets ``FOLDER: is in use by another brainsynth run
    (COMMAND, process PID); wait ...``. When the block raises and the folder was new or empty
    before, what this run wrote there is removed unless ``keep()`` says it is finished work worth
    keeping (resumable results); a folder made by this run is removed with it.
    """
    d = Path(folder)
    check_writable_folder(d)
    made: list[Path] = []
    p = d
    while not p.exists():
        made.append(p)
        if p.parent == p:
            break
        p = p.parent
    was_empty = is_empty_folder(d)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(d, f"cannot create the output folder ({exc.strerror})", "choose a writable location") from None
    lock = FolderLock(d, command=command, shared=shared, slot=slot)
    try:
        lock.acquire()
    except BaseException:
        _remove_made(made)
        raise
    try:
        yield lock
    except BaseException:
        if not shared and was_empty and not (keep is not None and _safe(keep)):
            for child in list(d.iterdir()):
                if lock_file_name(child.name):
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    with contextlib.suppress(OSError):
                        child.unlink()
            lock.release()
            _remove_made(made)
        else:
            lock.release()
            _remove_made(made)  # only while empty: another run's files keep it
        raise
    lock.release()


def _safe(fn: Callable[[], bool]) -> bool:
    try:
        return bool(fn())
    except Exception:  # noqa: BLE001 - when in doubt, keep
        return True


def _remove_made(made: list[Path]) -> None:
    """Remove the folders this run made, deepest first, as long as they are empty (a lock file
    of another run that started meanwhile keeps its folder)."""
    for d in made:
        try:
            d.rmdir()
        except OSError:
            return


# ---------------------------------------------------------------------------------------------
# what an interruption leaves
# ---------------------------------------------------------------------------------------------
_interrupt_note: list[str | Callable[[], str]] = []

DEFAULT_INTERRUPT_NOTE = "files finished before the interruption are kept, none is left half-written; run the command again"


def on_interrupt(note: str | Callable[[], str]) -> None:
    """Say what an interruption (Ctrl-C) of the running command keeps and how to resume; the CLI
    prints ``brainsynth: interrupted; NOTE`` and exits with status 130. ``note`` may be a
    function, called after the command's clean-up has run (so it can look at what is left)."""
    _interrupt_note[:] = [note]


def interrupt_note() -> str:
    if not _interrupt_note:
        return DEFAULT_INTERRUPT_NOTE
    note = _interrupt_note[0]
    if callable(note):
        try:
            return str(note())
        except Exception:  # noqa: BLE001 - a note must never hide the interruption
            return DEFAULT_INTERRUPT_NOTE
    return note


def clear_interrupt_note() -> None:
    _interrupt_note.clear()
