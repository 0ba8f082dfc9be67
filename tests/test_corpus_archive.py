"""Archives: every format gives the folder's records; hostile or damaged archives are refused, nothing escapes."""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from corpus_fixtures import (ROOT_NAME, build_corpus, make_tar, make_zip, tar_with_extra, wav_rel, write_file,
                             zip_with_extra, zip_with_member_data_zeroed)
from emocli.corpus import archive
from emocli.corpus.archive import MARKER_NAME, detect_format, locate_root, open_source
from emocli.corpus.iemocap import ReaderConfig, read_iemocap
from emocli.errors import ArchiveError, CorpusError


@pytest.fixture(scope="module")
def staged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the miniature corpus, to be archived in each test's own way."""
    folder = tmp_path_factory.mktemp("staged")
    build_corpus(folder)
    return folder


def comparable(report, root: Path) -> list[tuple]:
    return [(u.utt_id, u.audio_path.relative_to(root).as_posix(), u.text, u.label, u.raw_label, u.speaker,
             u.session) for u in report.utterances]


def read_any(source: Path, work: Path) -> list[tuple]:
    root = open_source(source, work)
    return comparable(read_iemocap(source, ReaderConfig(), work), root.absolute())


def tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")} if folder.exists() else set()


@pytest.fixture
def folder_records(staged: Path, tmp_path: Path) -> list[tuple]:
    return read_any(staged, tmp_path / "unused")


# ---- every format gives the folder's records ---------------------------------------------------------------

@pytest.mark.parametrize("name, maker", [
    ("IEMOCAP_full_release.tar.gz", lambda src, out: make_tar(src, out, "gz")),
    ("IEMOCAP_full_release.tgz", lambda src, out: make_tar(src, out, "gz")),
    ("IEMOCAP_full_release.tar", lambda src, out: make_tar(src, out, "")),
    ("IEMOCAP_full_release.zip", make_zip),
    ("zip_named_like_a.tar.gz", make_zip),  # detected by content, not by suffix
    ("tar_gz_without_suffix", lambda src, out: make_tar(src, out, "gz")),
])
def test_each_format_gives_the_folder_records(staged: Path, tmp_path: Path, folder_records: list, name: str,
                                              maker) -> None:
    path = maker(staged, tmp_path / name)
    assert read_any(path, tmp_path / "work") == folder_records
    assert len(folder_records) == 11


def test_folder_is_used_in_place(staged: Path, tmp_path: Path) -> None:
    assert open_source(staged, tmp_path / "work") == staged / ROOT_NAME
    assert not (tmp_path / "work").exists()


def test_only_the_needed_members_are_extracted(staged: Path, tmp_path: Path) -> None:
    root = open_source(make_tar(staged, tmp_path / "c.tar.gz"), tmp_path / "work")
    files = {p for p in tree(root) if (root / p).is_file()}
    assert f"{wav_rel('Ses01F_impro01_F000')}" in files
    assert "Session1/dialog/transcriptions/Ses01F_impro01.txt" in files
    unwanted = ("/avi/", "/dialog/wav/", "MOCAP_", "ForcedAlignment", "Categorical", "Attribute", "Self-evaluation",
                "README", "Documentation", "._")
    assert not [f for f in files if any(u in f for u in unwanted)]


@pytest.mark.parametrize("top", ["IEMOCAP_full_release/IEMOCAP_full_release", "renamed", "a/b/c"])
@pytest.mark.parametrize("fmt", ["gz", "zip"])
def test_doubled_or_renamed_root_inside_archive(tmp_path: Path, folder_records: list, top: str, fmt: str) -> None:
    build_corpus(tmp_path / "src", top)
    out = tmp_path / "c.archive"
    make_zip(tmp_path / "src", out) if fmt == "zip" else make_tar(tmp_path / "src", out)
    assert read_any(out, tmp_path / "work") == folder_records


def test_archive_without_a_top_folder(staged: Path, tmp_path: Path, folder_records: list) -> None:
    out = make_tar(staged / ROOT_NAME, tmp_path / "flat.tar.gz")  # members start at Session1/
    assert read_any(out, tmp_path / "work") == folder_records


def test_dot_slash_member_names(staged: Path, tmp_path: Path, folder_records: list) -> None:
    out = tmp_path / "dot.tar"
    with tarfile.open(out, "w") as tar:
        tar.add(staged / ROOT_NAME, arcname=f"./{ROOT_NAME}")
    assert read_any(out, tmp_path / "work") == folder_records


# ---- extracted once, reused, redone after an interruption -------------------------------------------------

def test_second_call_reuses_the_extraction(staged: Path, tmp_path: Path) -> None:
    source = make_tar(staged, tmp_path / "c.tar.gz")
    calls: list[tuple[int, int]] = []
    root = open_source(source, tmp_path / "work", lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1] == source.stat().st_size
    assert (root.parent / MARKER_NAME).is_file()
    (root / wav_rel("Ses01F_impro01_F000")).unlink()  # would come back if it were extracted again
    calls.clear()
    assert open_source(source, tmp_path / "work", lambda done, total: calls.append((done, total))) == root
    assert calls == [] and not (root / wav_rel("Ses01F_impro01_F000")).exists()


def test_changed_archive_is_extracted_again(staged: Path, tmp_path: Path) -> None:
    source = make_tar(staged, tmp_path / "c.tar.gz")
    first = open_source(source, tmp_path / "work")
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    second = open_source(source, tmp_path / "work")
    assert second != first and (second / wav_rel("Ses01F_impro01_F000")).is_file()


def test_emptied_extraction_is_redone(staged: Path, tmp_path: Path) -> None:
    source = make_tar(staged, tmp_path / "c.tar.gz")
    root = open_source(source, tmp_path / "work")
    for session in ("Session1", "Session3", "Session5"):
        shutil.rmtree(root / session)
    assert (open_source(source, tmp_path / "work") / wav_rel("Ses01F_impro01_F000")).is_file()


def test_leftover_tmp_from_an_interrupted_run_is_redone(staged: Path, tmp_path: Path) -> None:
    source = make_tar(staged, tmp_path / "c.tar.gz")
    work = tmp_path / "work"
    stale = work / f"extract-{archive.extraction_key(source)}.tmp"
    write_file(stale / "IEMOCAP_full_release/Session1/dialog/EmoEvaluation/half.txt", "half")
    root = open_source(source, work)
    assert not stale.exists()
    assert not (root / "Session1/dialog/EmoEvaluation/half.txt").exists()
    assert (root / wav_rel("Ses05M_script01_1b_M000")).is_file()


def test_interruption_mid_extraction_leaves_no_final_folder(staged: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    source = make_tar(staged, tmp_path / "c.tar.gz")
    copy = archive._copy_member
    copied = []

    def interrupted(*args) -> None:
        copied.append(args)
        if len(copied) == 5:
            raise KeyboardInterrupt
        copy(*args)

    monkeypatch.setattr(archive, "_copy_member", interrupted)
    with pytest.raises(KeyboardInterrupt):
        open_source(source, tmp_path / "work")
    assert not [p for p in (tmp_path / "work").iterdir() if p.is_dir()]
    monkeypatch.setattr(archive, "_copy_member", copy)
    assert (open_source(source, tmp_path / "work") / wav_rel("Ses01F_impro01_F000")).is_file()


# ---- hostile members: the whole archive is refused, nothing is written outside the work folder -------------

def assert_only_the_lock_was_left(tmp_path: Path, before: set[str]) -> None:
    created = tree(tmp_path) - before
    assert created <= {"work"} | {p for p in created if p.startswith("work/extract-") and p.endswith(".lock")}


def _info(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    return info


def _hostile_tar_members(outside: Path) -> dict[str, tuple[tarfile.TarInfo, bytes | None, str]]:
    target = str(outside / "evil.txt")
    return {
        "absolute": (_info(target, size=4), b"evil", "absolute path"),
        "dotdot": (_info("IEMOCAP_full_release/../../outside/evil.txt", size=4), b"evil", "'..'"),
        "dotdot_wanted": (_info("IEMOCAP_full_release/Session1/dialog/EmoEvaluation/../../../../outside/x.txt",
                                size=4), b"evil", "'..'"),
        "symlink": (_info("IEMOCAP_full_release/Session1/dialog/EmoEvaluation/link.txt", tarfile.SYMTYPE,
                          link=target), None, "symlink"),
        "hardlink": (_info("IEMOCAP_full_release/README2.txt", tarfile.LNKTYPE, link="IEMOCAP_full_release/README.txt"),
                     None, "hardlink"),
        "chardev": (_info("IEMOCAP_full_release/dev0", tarfile.CHRTYPE), None, "device or fifo"),
        "blockdev": (_info("IEMOCAP_full_release/dev1", tarfile.BLKTYPE), None, "device or fifo"),
        "fifo": (_info("IEMOCAP_full_release/Session1/dialog/EmoEvaluation/fifo.txt", tarfile.FIFOTYPE), None,
                 "device or fifo"),
        # Headers only: the claimed data is never written, so the check must come before any read.
        "huge_wav": (_info(f"IEMOCAP_full_release/{wav_rel('Ses01F_impro01_F009')}", size=3 * 1024**3), None,
                     "absurd size"),
        "huge_other": (_info("IEMOCAP_full_release/Session1/dialog/avi/DivX/x.avi", size=40 * 1024**3), None,
                       "absurd size"),
    }


@pytest.mark.parametrize("case", sorted(_hostile_tar_members(Path("/x"))))
@pytest.mark.parametrize("compression", ["gz", ""])
def test_hostile_tar_member_refuses_the_archive(staged: Path, tmp_path: Path, case: str, compression: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    info, data, words = _hostile_tar_members(outside)[case]
    source = tar_with_extra(staged, tmp_path / "hostile.tar", info, data, compression)
    before = tree(tmp_path)
    with pytest.raises(ArchiveError, match=rf"hostile\.tar holds member .*{words}"):
        open_source(source, tmp_path / "work")
    assert tree(outside) == set()
    assert_only_the_lock_was_left(tmp_path, before)


def _zip_info(name: str, mode: int = 0o100644) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = mode << 16
    return info


@pytest.mark.parametrize("info, words", [
    (_zip_info("/abs/evil.txt"), "absolute path"),
    (_zip_info("C:/evil.txt"), "absolute path"),
    (_zip_info("IEMOCAP_full_release/../../evil.txt"), "'..'"),
    (_zip_info("IEMOCAP_full_release\\..\\..\\evil.txt"), "'..'"),
    (_zip_info("IEMOCAP_full_release/Session1/dialog/EmoEvaluation/link.txt", stat.S_IFLNK | 0o777), "symlink"),
    (_zip_info("IEMOCAP_full_release/fifo", stat.S_IFIFO | 0o644), "device or fifo"),
], ids=["absolute", "drive", "dotdot", "backslash-dotdot", "symlink", "fifo"])
def test_hostile_zip_member_refuses_the_archive(staged: Path, tmp_path: Path, info: zipfile.ZipInfo,
                                                words: str) -> None:
    source = zip_with_extra(staged, tmp_path / "hostile.zip", info, b"/etc/passwd")
    before = tree(tmp_path)
    with pytest.raises(ArchiveError, match=rf"hostile\.zip holds member .*{words}"):
        open_source(source, tmp_path / "work")
    assert_only_the_lock_was_left(tmp_path, before)


def test_zip_member_claiming_an_absurd_size(staged: Path, tmp_path: Path) -> None:
    source = zip_with_extra(staged, tmp_path / "big.zip", _zip_info("IEMOCAP_full_release/x.wav"), b"tiny")
    data = bytearray(source.read_bytes())
    # Patch the central directory's uncompressed size of the last member to 3 GiB.
    entry = data.rfind(b"PK\x01\x02")
    data[entry + 24:entry + 28] = (3 * 1024**3).to_bytes(4, "little")
    source.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="absurd size"):
        open_source(source, tmp_path / "work")


# ---- damaged archives and files that are no archive --------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6, 0.9, 0.999])
def test_truncated_tar_gz(staged: Path, tmp_path: Path, fraction: float) -> None:
    good = make_tar(staged, tmp_path / "good.tar.gz").read_bytes()
    source = tmp_path / "cut.tar.gz"
    source.write_bytes(good[:int(len(good) * fraction)])
    with pytest.raises(ArchiveError, match=r"cut\.tar\.gz is truncated or corrupt \("):
        open_source(source, tmp_path / "work")
    assert not list((tmp_path / "work").glob("extract-*[!k]"))  # only the .lock may remain


@pytest.mark.parametrize("cut", [1, 4, 8, 20])
def test_tar_gz_missing_its_trailer(staged: Path, tmp_path: Path, cut: int) -> None:
    # tarfile's own stream decoder never reads the gzip trailer (CRC, length): these cuts pass it silently.
    good = make_tar(staged, tmp_path / "good.tar.gz").read_bytes()
    source = tmp_path / "cut.tar.gz"
    source.write_bytes(good[:-cut])
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        open_source(source, tmp_path / "work")


def test_tar_cut_at_a_member_boundary(staged: Path, tmp_path: Path) -> None:
    # tarfile itself ends quietly here: the missing end-of-archive marker is the only sign.
    good = make_tar(staged, tmp_path / "good.tar", "")
    with tarfile.open(good) as tar:
        members = tar.getmembers()
    cut = members[len(members) // 2].offset
    source = tmp_path / "cut.tar"
    source.write_bytes(good.read_bytes()[:cut])
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        open_source(source, tmp_path / "work")


def test_tar_gz_of_a_tar_cut_at_a_member_boundary(staged: Path, tmp_path: Path) -> None:
    good = make_tar(staged, tmp_path / "good.tar", "")
    with tarfile.open(good) as tar:
        cut = tar.getmembers()[-3].offset
    source = tmp_path / "cut.tar.gz"
    source.write_bytes(gzip.compress(good.read_bytes()[:cut]))  # a valid gzip around a cut tar
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        open_source(source, tmp_path / "work")


def test_corrupt_tar_gz(staged: Path, tmp_path: Path) -> None:
    data = bytearray(make_tar(staged, tmp_path / "good.tar.gz").read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    source = tmp_path / "bad.tar.gz"
    source.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        open_source(source, tmp_path / "work")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.99])
def test_truncated_zip(staged: Path, tmp_path: Path, fraction: float) -> None:
    good = make_zip(staged, tmp_path / "good.zip").read_bytes()
    source = tmp_path / "cut.zip"
    source.write_bytes(good[:int(len(good) * fraction)])
    with pytest.raises(ArchiveError, match=r"cut\.zip is truncated or corrupt \("):
        open_source(source, tmp_path / "work")


def test_corrupt_zip_member_data(staged: Path, tmp_path: Path) -> None:
    source = tmp_path / "bad.zip"
    source.write_bytes(zip_with_member_data_zeroed(staged, source))
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        open_source(source, tmp_path / "work")


@pytest.mark.parametrize("content", [b"just some text, not an archive\n" * 40, b"", b"\x00" * 2048,
                                     b"RIFF\x00\x00\x00\x00WAVEfmt "])
def test_file_that_is_not_an_archive(tmp_path: Path, content: bytes) -> None:
    source = tmp_path / "corpus.tar.gz"
    source.write_bytes(content)
    with pytest.raises(ArchiveError, match=r"corpus\.tar\.gz is not a \.tar\.gz, \.tgz, \.tar or \.zip archive"):
        open_source(source, tmp_path / "work")


def test_gzip_that_holds_no_tar(tmp_path: Path) -> None:
    source = tmp_path / "notes.tar.gz"
    source.write_bytes(gzip.compress(b"hello, this is plain text inside gzip\n" * 100))
    with pytest.raises(ArchiveError, match=r"notes\.tar\.gz is truncated or corrupt"):
        open_source(source, tmp_path / "work")


def test_archive_without_iemocap_inside(tmp_path: Path) -> None:
    write_file(tmp_path / "src/stuff/readme.txt", "hi")
    source = make_tar(tmp_path / "src", tmp_path / "other.tar.gz")
    with pytest.raises(CorpusError, match=r"other\.tar\.gz does not look like IEMOCAP_full_release"):
        open_source(source, tmp_path / "work")
    assert not [p for p in (tmp_path / "work").iterdir() if p.is_dir()]


def test_v7_tar_without_magic_is_recognised(tmp_path: Path) -> None:
    write_file(tmp_path / "src/a.txt", "a")
    source = tmp_path / "old.tar"
    with tarfile.open(source, "w", format=tarfile.USTAR_FORMAT) as tar:
        tar.add(tmp_path / "src/a.txt", arcname="a.txt")
    data = bytearray(source.read_bytes())
    data[257:265] = bytes(8)  # drop "ustar\x0000" and fix the checksum, as a V7 writer would have it
    data[148:156] = b" " * 8
    data[148:155] = f"{sum(data[:512]):06o}\0".encode()
    source.write_bytes(bytes(data))
    assert detect_format(source) == "tar"


# ---- locating the root in a folder ----------------------------------------------------------------------

def test_locate_root_ignores_apple_double_and_hidden(tmp_path: Path) -> None:
    build_corpus(tmp_path, "IEMOCAP_full_release")
    write_file(tmp_path / "._IEMOCAP_full_release", b"\x00\x05\x16\x07")
    (tmp_path / ".cache/IEMOCAP_full_release/Session1/dialog/EmoEvaluation").mkdir(parents=True)
    assert locate_root(tmp_path) == tmp_path / "IEMOCAP_full_release"


def test_locate_root_needs_emo_evaluation(tmp_path: Path) -> None:
    (tmp_path / "x/Session1/dialog/transcriptions").mkdir(parents=True)
    with pytest.raises(CorpusError, match=rf"no Session1..5 folders with dialog/EmoEvaluation found under {tmp_path}"):
        locate_root(tmp_path)


def test_work_folder_holds_nothing_after_a_refusal_but_the_lock(staged: Path, tmp_path: Path) -> None:
    source = tar_with_extra(staged, tmp_path / "h.tar.gz", _info("/etc/evil", size=0), b"")
    with pytest.raises(ArchiveError):
        open_source(source, tmp_path / "work")
    assert [p.name.endswith(".lock") for p in (tmp_path / "work").iterdir()] == [True]
    shutil.rmtree(tmp_path / "work")
