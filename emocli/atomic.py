"""Writing files so that a crash, kill -9 or full disk leaves the previous version or the new one, never half."""

from __future__ import annotations

import contextlib
try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
import os
import stat
from pathlib import Path
from typing import Iterator

from emocli.errors import EmocliError


def temporary_name(path: Path) -> Path:
    """A hidden sibling on the same filesystem (so the final rename is atomic), unique per process."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def create_temporary(path: Path) -> Path:
    """Create the temporary sibling of `path` ourselves, empty, with the mode `path` has (or a new file's):
    O_EXCL and O_NOFOLLOW, so a file or symlink planted under that name is never written through; a leftover of
    ours (same name, e.g. a reused pid) is removed first, which removes a planted link, never what it points to."""
    if Path(path).is_symlink():  # a link planted where an output goes: replacing it would not be ours to do
        raise EmocliError(f"{path} is a symbolic link; emocli never writes over links it did not make — remove "
                          f"it, or write elsewhere")
    tmp = temporary_name(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for attempt in range(2):
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            if attempt:
                raise
            tmp.unlink()
    try:
        if mode is not None:
            os.fchmod(fd, mode)  # a chmod 600 file stays 600 when it is rewritten
    finally:
        os.close(fd)
    return tmp


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        tmp = create_temporary(path)
        with open(tmp, "wb") as handle:  # the fresh file just made ours (truncating it changes nothing)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EmocliError(f"cannot write {path}: {exc.strerror or exc}; the previous version, if any, is intact") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class LockBusy(Exception):
    """`file_lock(..., wait=False)` found the lock held by another process."""


@contextlib.contextmanager
def file_lock(lock_path: Path, wait: bool = True, shared: bool = False) -> Iterator[None]:
    """An flock on `lock_path`, exclusive or shared: the OS drops it when its holder dies, kill -9 included.
    Where there is no fcntl (Windows) the `filelock` package's lock is used, exclusive even when `shared` is asked
    (readers then take turns, which is slower but never unsafe)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        with _portable_lock(lock_path, wait):
            yield
        return
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, mode if wait else mode | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockBusy(str(lock_path)) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _portable_lock(lock_path: Path, wait: bool) -> Iterator[None]:
    import filelock

    lock = filelock.FileLock(str(lock_path), timeout=-1 if wait else 0)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise LockBusy(str(lock_path)) from None
    try:
        yield
    finally:
        lock.release()


def check_folder(folder: Path, option: str, given: Path, writable: bool) -> None:
    """One line, before any work, when `folder` cannot be a folder (it, or a folder above it, is a file) or, when
    something is to be written there, when the nearest existing folder is not writable."""
    for part in (folder, *folder.parents):
        if part.exists():
            if not part.is_dir():
                raise EmocliError(f"{option} {given}: {part} is a file, not a folder; choose another path")
            if writable and not os.access(part, os.W_OK | os.X_OK):
                raise EmocliError(f"{option} {given}: folder {part} is not writable; make it writable or choose "
                                  f"another path")
            return
