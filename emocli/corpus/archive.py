"""Getting at the IEMOCAP files: an extracted folder in place, or only the needed members of an archive.

The release is one 17.7 GB tar.gz of which the reader needs about 1.4 GB (utterance wavs, label and
transcript text). A tar.gz cannot seek, so members are checked and extracted in one sequential pass. Every
member is checked, extracted or not: one hostile member refuses the whole archive, and whatever was already
unpacked into the temporary folder is removed.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from emocli.atomic import LockBusy, file_lock
from emocli.errors import ArchiveError, CorpusError

Progress = Callable[[int, int], None]  # (done, total): archive bytes read for tar, members for zip

SESSION_NAMES = tuple(f"Session{n}" for n in range(1, 6))
# The largest real member the reader wants is a ~1 MB wav; 2 GiB can only be a forged header.
MAX_WANTED_MEMBER_BYTES = 2 * 1024**3
# Larger than the whole 17.7 GB release, so no honest member (video, mocap) comes near it.
MAX_ANY_MEMBER_BYTES = 32 * 1024**3
# What may be unpacked in all: at most this many times the archive's own size (IEMOCAP's wanted members are a tenth
# of its .tar.gz; a zip of zeros or a sparse tar claims thousands of times more), and never the last of the disk.
MAX_EXPANSION_RATIO = 20
MIN_EXPANSION_BYTES = 256 << 20  # tiny test archives may expand more than 20x
FREE_SPACE_RESERVE_BYTES = 512 << 20
# Bump when the member selection changes, so an older extraction is not served as a complete one.
EXTRACT_VERSION = 1
MARKER_NAME = ".emocli-extracted.json"
_COPY_CHUNK = 1 << 20
# tarfile's stream copies its whole read-ahead on every 512-byte header read, so larger reads are slower.
_TAR_READ_SIZE = tarfile.RECORDSIZE
_PROGRESS_STEP_BYTES = 64 << 20
_TAR_BLOCK = 512
_ROOT_SEARCH_DEPTH = 3  # folder / renamed top / doubled top / Session*
_ROOT_SEARCH_MAX_DIRS = 5000  # stop a search started from "/" or a home folder from walking everything
_FORMATS = ".tar.gz, .tgz, .tar or .zip"


def locate_root(folder: Path) -> Path:
    """The folder that holds Session1..Session5, found at `folder` or up to three levels below it."""
    folder = Path(folder)
    level = [folder]
    seen = 0
    for _ in range(_ROOT_SEARCH_DEPTH + 1):
        found = [d for d in level if _is_root(d)]
        if len(found) == 1:
            return found[0]
        if found:
            names = ", ".join(str(d) for d in found)
            raise CorpusError(f"found {len(found)} IEMOCAP copies under {folder} ({names}); pass one of them")
        level = [child for d in level for child in _subdirs(d)]
        seen += len(level)
        if not level or seen > _ROOT_SEARCH_MAX_DIRS:
            break
    raise CorpusError(f"{folder} does not look like IEMOCAP_full_release: no Session1..5 folders with "
                      f"dialog/EmoEvaluation found under {folder}; pass the extracted corpus folder or its archive")


def _is_root(folder: Path) -> bool:
    return any((folder / name / "dialog" / "EmoEvaluation").is_dir() for name in SESSION_NAMES)


def _subdirs(folder: Path) -> list[Path]:
    # Dot entries cover AppleDouble `._*` files and our own hidden work folders; __MACOSX is zip debris.
    try:
        with os.scandir(folder) as entries:
            names = sorted(e.name for e in entries
                           if not e.name.startswith(".") and e.name != "__MACOSX" and e.is_dir())
    except OSError:
        return []
    return [folder / name for name in names]


def open_source(source: Path, workdir: Path, progress: Progress | None = None) -> Path:
    """The IEMOCAP root for `source`: a folder is used in place; an archive is unpacked (once) under `workdir`."""
    source = Path(source)
    if source.is_dir():
        return locate_root(source)
    if not source.is_file():
        raise CorpusError(f"{source} does not exist; pass the IEMOCAP_full_release folder or archive")
    kind = detect_format(source)
    return _extracted_root(source, kind, Path(workdir), progress)


def detect_format(path: Path) -> str:
    """'tar.gz', 'tar' or 'zip', from the content (a renamed file is still recognised), never the suffix."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_TAR_BLOCK)
    except OSError as e:
        raise ArchiveError(f"cannot read {path} ({e.strerror or e}); check the path and its permissions") from None
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[257:262] == b"ustar" or _is_v7_tar_header(head):
        return "tar"
    raise ArchiveError(f"{path} is not a {_FORMATS} archive (checked by content, not by name); "
                       "pass the IEMOCAP_full_release archive or its extracted folder")


def _is_v7_tar_header(block: bytes) -> bool:
    # Pre-POSIX tars carry no magic string; their header checksum is the only sign.
    if len(block) < _TAR_BLOCK or not block.strip(b"\0"):
        return False
    try:
        stored = int(block[148:156].strip(b"\0 ") or b"-", 8)
    except ValueError:
        return False
    return stored == sum(block[:148]) + 8 * ord(" ") + sum(block[156:_TAR_BLOCK])


def extraction_key(archive: Path) -> str:
    """Short hash of what identifies an unchanged archive: its resolved path, size and mtime."""
    st = archive.stat()
    ident = f"{archive.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0v{EXTRACT_VERSION}"
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def _extracted_root(archive: Path, kind: str, workdir: Path, progress: Progress | None) -> Path:
    key = extraction_key(archive)
    final = workdir / f"extract-{key}"
    tmp = workdir / f"extract-{key}.tmp"
    workdir.mkdir(parents=True, exist_ok=True)
    # Two `prepare` runs on different caches may share a work folder; only one may unpack a given archive.
    with file_lock(workdir / f"extract-{key}.lock"):
        if _marker_matches(final, archive):
            try:
                root = locate_root(final)
                _remove_superseded(workdir, archive, key)
                return root
            except CorpusError:
                pass  # emptied by hand since: extract again rather than fail on our own leftovers
        for stale in (tmp, final):  # an interrupted run, or a folder from an older selection rule
            if stale.exists():
                shutil.rmtree(stale)
        tmp.mkdir()
        try:
            if kind == "zip":
                count = _extract_zip(archive, tmp, progress)
            else:
                count = _extract_tar(archive, kind, tmp, progress)
            relative = _root_in_extraction(tmp, archive).relative_to(tmp)
            _write_marker(tmp, archive, kind, count)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        os.replace(tmp, final)
    _remove_superseded(workdir, archive, key)
    return final / relative


# ---- the lifetime of an extraction ------------------------------------------------------------------------
# An unpacked copy is ~1.4 GB on the real corpus and is needed only while a cache or an embedding stage is being
# computed from it. A process that reads it holds a shared lock on `extract-<key>.use` from before it looks for
# the copy until it is done; removal takes that lock exclusively without waiting, so a copy in use is never
# removed, and a reader that arrives after a removal simply unpacks again.

@contextlib.contextmanager
def extraction_in_use(source: Path, workdir: Path, remove_after: bool) -> Iterator[None]:
    """Hold the unpacked copy of archive `source` (if it is one) for the duration; on a clean exit with
    `remove_after`, remove that copy unless another process is still using it. A failed run keeps it for the retry."""
    source = Path(source)
    if not source.is_file():
        yield
        return
    key = extraction_key(source)
    with file_lock(Path(workdir) / f"extract-{key}.use", shared=True):
        yield
    if remove_after:
        remove_extraction(Path(workdir), key)


def remove_extraction(workdir: Path, key: str) -> bool:
    """Remove `extract-<key>` unless a process is using it; True if it is gone. The folder is first renamed, so
    a run killed halfway leaves a `.removing` folder (cleared by the next run), never a partial copy that still
    looks complete."""
    final = workdir / f"extract-{key}"
    try:
        with file_lock(workdir / f"extract-{key}.use", wait=False):
            if final.exists():
                doomed = workdir / f"extract-{key}.removing"
                shutil.rmtree(doomed, ignore_errors=True)
                os.replace(final, doomed)
                try:
                    shutil.rmtree(doomed, ignore_errors=True)
                except BaseException:  # interrupted (Ctrl-C, SIGTERM): finish removing what was started first
                    shutil.rmtree(doomed, ignore_errors=True)
                    raise
    except LockBusy:
        return False
    except OSError:  # a read-only work folder: the copy stays, which costs disk but loses nothing
        return False
    return not final.exists()


def _remove_superseded(workdir: Path, archive: Path, key: str) -> None:
    """Copies of earlier versions of the same archive (another size or modification time) are never served
    again: remove them, and what an interrupted removal left."""
    source = str(archive.resolve())
    for folder in workdir.glob("extract-*"):
        if folder.name.endswith(".removing"):
            shutil.rmtree(folder, ignore_errors=True)
            continue
        other = folder.name[len("extract-"):]
        if not folder.is_dir() or "." in other or other == key:
            continue
        try:
            marker = json.loads((folder / MARKER_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # not a finished copy of ours: leave it
        if marker.get("source") == source:
            remove_extraction(workdir, other)


def _marker_matches(final: Path, archive: Path) -> bool:
    try:
        marker = json.loads((final / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    st = archive.stat()
    return (marker.get("version") == EXTRACT_VERSION and marker.get("size") == st.st_size
            and marker.get("mtime_ns") == st.st_mtime_ns)


def _write_marker(folder: Path, archive: Path, kind: str, count: int) -> None:
    st = archive.stat()
    marker = {"source": str(archive.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "format": kind,
              "files": count, "version": EXTRACT_VERSION}
    (folder / MARKER_NAME).write_text(json.dumps(marker, indent=1), encoding="utf-8")


def _root_in_extraction(folder: Path, archive: Path) -> Path:
    try:
        return locate_root(folder)
    except CorpusError:
        raise CorpusError(f"{archive} does not look like IEMOCAP_full_release: no Session1..5 folders with "
                          f"dialog/EmoEvaluation found in it; pass the IEMOCAP_full_release archive") from None


# ---- member checks and selection -------------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    """What the safety check needs of a tar or zip member."""

    name: str
    size: int
    kind: str  # "file", "dir", "symlink", "hardlink", "special" (device, fifo, socket)


def member_parts(name: str) -> list[str]:
    # Both separators: zips made on Windows use backslashes, and a `..` hidden behind one is still a `..`.
    return [p for p in re.split(r"[\\/]", name) if p not in ("", ".")]


def check_member(member: Member, archive: Path) -> None:
    """Refuse any member that could write outside the extraction folder or is absurd; name it."""
    name = member.name
    refuse = f"{archive} holds member {name!r}"
    advice = "refusing to unpack it; use the official IEMOCAP_full_release archive"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ArchiveError(f"{refuse} with an absolute path; {advice}")
    if ".." in member_parts(name):
        raise ArchiveError(f"{refuse} with a '..' component; {advice}")
    if member.kind in ("symlink", "hardlink"):
        raise ArchiveError(f"{refuse}, which is a {member.kind}; {advice}")
    if member.kind == "special":
        raise ArchiveError(f"{refuse}, which is a device or fifo; {advice}")
    wanted_like = name.lower().endswith((".wav", ".txt"))
    limit = MAX_WANTED_MEMBER_BYTES if wanted_like else MAX_ANY_MEMBER_BYTES
    if member.size > limit or member.size < 0:
        raise ArchiveError(f"{refuse} claiming an absurd size of {member.size} bytes (limit {limit}); {advice}")


def is_wanted(parts: list[str]) -> bool:
    """Top-level EmoEvaluation/*.txt, transcriptions/*.txt and sentences/wav/<dialog>/*.wav of a session."""
    if not parts or any(p.startswith("._") or p == "__MACOSX" for p in parts):
        return False
    n = len(parts)
    if (n >= 4 and parts[-4] in SESSION_NAMES and parts[-3] == "dialog"
            and parts[-2] in ("EmoEvaluation", "transcriptions") and parts[-1].endswith(".txt")):
        return True
    return (n >= 5 and parts[-5] in SESSION_NAMES and parts[-4] == "sentences" and parts[-3] == "wav"
            and parts[-1].endswith(".wav"))


class _ExpansionBudget:
    """The bytes an archive may unpack to, in total: a ratio of its size, and the free space less a reserve."""

    def __init__(self, archive: Path, dest: Path) -> None:
        free = shutil.disk_usage(dest).free - FREE_SPACE_RESERVE_BYTES
        by_ratio = max(MAX_EXPANSION_RATIO * archive.stat().st_size, MIN_EXPANSION_BYTES)
        self.archive, self.limit, self.used = archive, min(by_ratio, free), 0
        self.by_disk = free < by_ratio

    def charge(self, n: int, name: str) -> None:
        self.used += n
        if self.used > self.limit:
            why = (f"more than the {self.limit >> 20} MB free on the disk (less a reserve); free some space or pass "
                   f"--workdir on a larger disk") if self.by_disk else (
                   f"more than {MAX_EXPANSION_RATIO}x the archive's size; a real IEMOCAP archive expands far less — "
                   f"this one is forged or not IEMOCAP")
            raise ArchiveError(f"{self.archive} unpacks to {why} (stopped at member {name!r}); nothing was kept")


def _copy_member(src: BinaryIO, dest: Path, parts: list[str], name: str, archive: Path,
                 budget: _ExpansionBudget) -> None:
    target = dest.joinpath(*parts)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as out:
            while block := src.read(_COPY_CHUNK):
                budget.charge(len(block), name)
                out.write(block)
    except (FileExistsError, NotADirectoryError, IsADirectoryError):
        raise ArchiveError(f"{archive} holds member {name!r} that collides with another member; "
                           "the archive is corrupt, download it again") from None
    except OSError as exc:  # a full disk, most often: the half-unpacked folder is removed by the caller
        raise ArchiveError(f"cannot unpack {archive} into {dest}: {exc.strerror or exc}; free some space or pass "
                           f"--workdir on a larger disk") from None


# ---- tar ---------------------------------------------------------------------------------------------------

class _TrackedStream:
    """A read-only pass-through that counts bytes and keeps the last few chunks for the end-of-archive check."""

    def __init__(self, inner: BinaryIO, on_read: Callable[[int], None] | None = None, keep: int = 4) -> None:
        self._inner = inner
        self._on_read = on_read
        self.position = 0
        self._recent: deque[tuple[int, bytes]] = deque(maxlen=keep)

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        if data:
            self._recent.append((self.position, data))
            self.position += len(data)
            if self._on_read:
                self._on_read(self.position)
        return data

    def readinto(self, buffer) -> int:  # ISA-L's gzip reader reads through this
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def block_at(self, offset: int) -> bytes:
        """The bytes at [offset, offset + 512) if they are among the recent chunks; fewer if not."""
        out = bytearray()
        for start, data in self._recent:
            lo, hi = max(offset, start), min(offset + _TAR_BLOCK, start + len(data))
            if lo < hi and lo == offset + len(out):
                out += data[lo - start:hi - start]
        return bytes(out)

    def drain(self) -> None:
        while self.read(_COPY_CHUNK):
            pass


try:  # Intel's ISA-L inflates 2.2x faster than zlib: half of unpacking IEMOCAP's 1.2 GB tar.gz was gzip
    from isal import igzip_threaded as _fast_gzip
    from isal.isal_zlib import error as _isal_error

    _GUNZIP_ERRORS: tuple[type[BaseException], ...] = (_isal_error,)
except ImportError:  # no wheel for this platform: the standard library's reader, same checks, slower
    _fast_gzip, _GUNZIP_ERRORS = None, ()


def _gunzip(raw: BinaryIO) -> BinaryIO:
    """A reader of the decompressed stream that checks CRC, length and trailer (truncation is an error).

    With ISA-L, a thread inflates (outside the GIL) while the caller parses the tar and writes the files: one
    after the other, they were 5 s + 3-6 s of unpacking an IEMOCAP-sized archive. Close it to stop the thread.
    """
    if _fast_gzip is not None:
        return _fast_gzip.open(raw, "rb", threads=1)
    return gzip.GzipFile(fileobj=raw, mode="rb")


def _tar_member(info: tarfile.TarInfo) -> Member:
    if info.issym():
        kind = "symlink"
    elif info.islnk():
        kind = "hardlink"
    elif info.ischr() or info.isblk() or info.isfifo():
        kind = "special"
    elif info.isdir():
        kind = "dir"
    else:
        kind = "file"
    return Member(info.name, info.size, kind)


def _extract_tar(archive: Path, kind: str, dest: Path, progress: Progress | None) -> int:
    total = archive.stat().st_size
    ticker = _Ticker(progress, total)
    count = 0
    try:
        with open(archive, "rb") as raw_fh, contextlib.ExitStack() as stack:
            raw = _TrackedStream(raw_fh, keep=0)  # counted only: its chunks are 8 MB for the inflating thread
            # A gzip reader, unlike tarfile's own stream decoder, checks the gzip trailer, so truncation is caught.
            inner = stack.enter_context(_gunzip(raw)) if kind == "tar.gz" else raw
            # Progress is reported from this thread, not from the one inflating, which only counts bytes.
            body = _TrackedStream(inner, lambda _: ticker.at(raw.position))
            budget = _ExpansionBudget(archive, dest)
            with tarfile.open(fileobj=body, mode="r|", bufsize=_TAR_READ_SIZE) as tar:
                for info in tar:
                    check_member(_tar_member(info), archive)
                    if info.issparse():  # a few KB in the archive that claim gigabytes of zeros on disk
                        raise ArchiveError(f"{archive} holds member {info.name!r}, a sparse file; refusing to unpack "
                                           f"it; use the official IEMOCAP_full_release archive")
                    parts = member_parts(info.name)
                    if info.isreg() and is_wanted(parts):
                        _copy_member(tar.extractfile(info), dest, parts, info.name, archive, budget)
                        count += 1
                    tar.members = []  # streamed: a member's record is not kept once it is unpacked
                end = tar.offset
            # tarfile ends quietly on a missing or garbled header; only a zero block marks a complete archive.
            if body.block_at(end) != bytes(_TAR_BLOCK):
                raise tarfile.ReadError(f"no end-of-archive marker at byte {end}")
            body.drain()
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, *_GUNZIP_ERRORS) as e:
        raise ArchiveError(f"{archive} is truncated or corrupt ({e}); download it again") from None
    ticker.done()
    return count


class _Ticker:
    """Calls `progress` every few tens of MB of archive read, and once at the end."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self._progress, self._total, self._last = progress, total, 0

    def at(self, done: int) -> None:
        if self._progress and done - self._last >= _PROGRESS_STEP_BYTES:
            self._last = done
            self._progress(done, self._total)

    def done(self) -> None:
        if self._progress:
            self._progress(self._total, self._total)


# ---- zip ---------------------------------------------------------------------------------------------------

def _zip_member(info: zipfile.ZipInfo) -> Member:
    mode = info.external_attr >> 16  # unix mode bits; 0 for zips made elsewhere
    if info.is_dir():
        kind = "dir"
    elif stat.S_ISLNK(mode):
        kind = "symlink"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
        kind = "special"
    else:
        kind = "file"
    return Member(info.filename, info.file_size, kind)


def _extract_zip(archive: Path, dest: Path, progress: Progress | None) -> int:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                check_member(_zip_member(info), archive)
            wanted = [i for i in infos if not i.is_dir() and is_wanted(member_parts(i.filename))]
            budget = _ExpansionBudget(archive, dest)
            for done, info in enumerate(wanted, 1):
                with zf.open(info) as src:
                    _copy_member(src, dest, member_parts(info.filename), info.filename, archive, budget)
                if progress:
                    progress(done, len(wanted))
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise ArchiveError(f"{archive} is truncated or corrupt ({e}); download it again") from None
    except (RuntimeError, NotImplementedError) as e:  # encrypted members, unsupported compression methods
        raise ArchiveError(f"{archive} cannot be unpacked ({e}); re-create it as a plain zip or tar.gz") from None
    return len(wanted)
