"""Hostile and damaged archives through `emocli prepare` as a user runs it: one `error:` line on stderr, exit 1, no
traceback, no cache, and nothing written anywhere but the work folder (which keeps only its lock files).

tests/test_corpus_archive.py checks the reader's refusals one by one; this adds the CLI view of each, and the
members it did not try: pax and GNU long names that hide a '..', a symlink followed by a file written through it,
a hostile member placed first, zip character and block devices and sockets, and a zip member that inflates past
the size it declares.
"""

from __future__ import annotations

import gzip
import io
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest

from corpus_fixtures import (ROOT_NAME, build_corpus, make_tar, make_zip, tar_with_extra, wav_rel, write_file,
                             zip_with_extra, zip_with_member_data_zeroed)
from emocli.synth import SynthConfig, synthesize
from test_corpus_archive import _hostile_tar_members, _info, _zip_info
from test_reliability_common import assert_refused, cli, tree

REFUSED_ARCHIVE = "refusing to unpack it"


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("staged")
    build_corpus(folder)
    return folder


def _prepare_refuses(source: Path, tmp_path: Path, bert: Path, *words: str) -> str:
    """Run the CLI on `source`; check the refusal and that only lock files appeared, all inside `out/`."""
    before = tree(tmp_path)
    line = assert_refused(cli("prepare", source, "--cache", tmp_path / "out" / "c.h5", "--text-model", bert,
                              "--n-mels", 64), *words)
    created = tree(tmp_path) - before
    allowed = {"out", "out/c.h5.lock", "out/.emocli-work"}
    assert {p for p in created if p not in allowed and not (p.startswith("out/.emocli-work/extract-")
                                                             and p.endswith((".lock", ".use")))} == set(), created
    return line


# --------------------------------------------------------------------------------------------- hostile tar members


def _tar_members(outside: Path) -> dict[str, tuple[list[tuple[tarfile.TarInfo, bytes | None]], str]]:
    """name -> (members appended after the good ones, words the refusal must contain)."""
    cases = {name: ([(info, data)], words) for name, (info, data, words) in _hostile_tar_members(outside).items()}
    long_dir = "IEMOCAP_full_release/" + "d" * 120  # past ustar's 100 bytes: stored as a pax or GNU long name
    pax = _info("IEMOCAP_full_release/innocent.txt", size=4)
    pax.pax_headers = {"path": "IEMOCAP_full_release/../../outside/evil.txt"}
    through = _info("IEMOCAP_full_release/Session1/dialog/EmoEvaluation/out", tarfile.SYMTYPE, link=str(outside))
    cases.update({
        "pax-path-dotdot": ([(pax, b"evil")], "'..'"),
        "long-name-dotdot": ([(_info(f"{long_dir}/../../../outside/evil.txt", size=4), b"evil")], "'..'"),
        "symlink-then-write-through-it": (
            [(through, None), (_info("IEMOCAP_full_release/Session1/dialog/EmoEvaluation/out/evil.txt", size=4),
                               b"evil")], "symlink"),
        "hardlink-to-outside": ([(_info("IEMOCAP_full_release/passwd.txt", tarfile.LNKTYPE, link="/etc/passwd"),
                                  None)], "hardlink"),
    })
    return cases


def _hostile_tar(staged: Path, out: Path, members: list, first: bool = False, format=tarfile.PAX_FORMAT) -> Path:
    with tarfile.open(out, "w:gz", format=format) as tar:
        if first:
            for info, data in members:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        tar.add(staged / ROOT_NAME, arcname=ROOT_NAME)
        if not first:
            for info, data in members:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out


@pytest.mark.parametrize("case", sorted(_tar_members(Path("/x"))))
def test_cli_refuses_hostile_tar_member(staged, tmp_path, tiny_bert_dir, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    members, words = _tar_members(outside)[case]
    fmt = tarfile.GNU_FORMAT if case == "long-name-dotdot" else tarfile.PAX_FORMAT
    source = _hostile_tar(staged, tmp_path / "hostile.tar.gz", members, format=fmt)
    line = _prepare_refuses(source, tmp_path, tiny_bert_dir, "hostile.tar.gz holds member", words, REFUSED_ARCHIVE)
    assert tree(outside) == set(), line


@pytest.mark.parametrize("case", ["absolute", "symlink", "dotdot"])
def test_cli_refuses_hostile_tar_member_placed_first(staged, tmp_path, tiny_bert_dir, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    info, data, words = _hostile_tar_members(outside)[case]
    source = _hostile_tar(staged, tmp_path / "hostile.tar.gz", [(info, data)], first=True)
    _prepare_refuses(source, tmp_path, tiny_bert_dir, words, REFUSED_ARCHIVE)
    assert tree(outside) == set()


# --------------------------------------------------------------------------------------------- hostile zip members


ZIP_CASES = {
    "absolute": (_zip_info("/abs/evil.txt"), "absolute path"),
    "drive": (_zip_info("C:/evil.txt"), "absolute path"),
    "dotdot": (_zip_info("IEMOCAP_full_release/../../evil.txt"), "'..'"),
    "backslash-dotdot": (_zip_info("IEMOCAP_full_release\\..\\..\\evil.txt"), "'..'"),
    "symlink": (_zip_info("IEMOCAP_full_release/Session1/dialog/EmoEvaluation/link.txt", stat.S_IFLNK | 0o777),
                "symlink"),
    "fifo": (_zip_info("IEMOCAP_full_release/fifo", stat.S_IFIFO | 0o644), "device or fifo"),
    "chardev": (_zip_info("IEMOCAP_full_release/Session1/dialog/EmoEvaluation/tty.txt", stat.S_IFCHR | 0o644),
                "device or fifo"),
    "blockdev": (_zip_info("IEMOCAP_full_release/sda", stat.S_IFBLK | 0o644), "device or fifo"),
    "socket": (_zip_info("IEMOCAP_full_release/sock", stat.S_IFSOCK | 0o644), "device or fifo"),
}


@pytest.mark.parametrize("case", sorted(ZIP_CASES))
def test_cli_refuses_hostile_zip_member(staged, tmp_path, tiny_bert_dir, case):
    info, words = ZIP_CASES[case]
    source = zip_with_extra(staged, tmp_path / "hostile.zip", info, b"/etc/passwd")
    _prepare_refuses(source, tmp_path, tiny_bert_dir, "hostile.zip holds member", words, REFUSED_ARCHIVE)


def test_cli_refuses_zip_member_claiming_an_absurd_size(staged, tmp_path, tiny_bert_dir):
    source = zip_with_extra(staged, tmp_path / "big.zip", _zip_info("IEMOCAP_full_release/x.wav"), b"tiny")
    data = bytearray(source.read_bytes())
    entry = data.rfind(b"PK\x01\x02")  # the last member's central directory entry: uncompressed size at +24
    data[entry + 24:entry + 28] = (3 * 1024**3).to_bytes(4, "little")
    source.write_bytes(bytes(data))
    _prepare_refuses(source, tmp_path, tiny_bert_dir, "absurd size", REFUSED_ARCHIVE)


def test_cli_refuses_zip_member_inflating_past_its_declared_size(staged, tmp_path, tiny_bert_dir):
    """A zip bomb's trick: a small declared size over a large deflated stream. Reading stops at the declared
    size, whose CRC then fails: nothing large is ever written."""
    name = f"{ROOT_NAME}/{wav_rel('Ses01F_impro01_F009')}"  # a wanted member, so it is read
    source = zip_with_extra(staged, tmp_path / "bomb.zip", zipfile.ZipInfo(name), bytes(1 << 20))
    with zipfile.ZipFile(source) as zf:
        info = zf.getinfo(name)
    data = bytearray(source.read_bytes())
    small = (100).to_bytes(4, "little")
    data[info.header_offset + 22:info.header_offset + 26] = small  # local header: uncompressed size
    entry = data.rfind(b"PK\x01\x02")
    data[entry + 24:entry + 28] = small  # central directory: uncompressed size
    source.write_bytes(bytes(data))
    _prepare_refuses(source, tmp_path, tiny_bert_dir, "bomb.zip is truncated or corrupt")


# --------------------------------------------------------------------------------------------- damaged archives


def _cut(fraction: float):
    def damage(good: bytes) -> bytes:
        return good[: int(len(good) * fraction)]
    return damage


def _flip_middle(good: bytes) -> bytes:
    data = bytearray(good)
    for i in range(len(data) // 2, len(data) // 2 + 64):
        data[i] ^= 0xFF
    return bytes(data)


def _tar_cut_at_member(staged: Path, tmp: Path) -> bytes:
    good = make_tar(staged, tmp / "g.tar", "")
    with tarfile.open(good) as tar:
        cut = tar.getmembers()[len(tar.getmembers()) // 2].offset
    return good.read_bytes()[:cut]


def _zip_member_zeroed(staged: Path, tmp: Path) -> bytes:
    return zip_with_member_data_zeroed(staged, tmp / "g.zip")


DAMAGED = {
    # name: (file name, bytes from (staged, tmp), words)
    "tar.gz-cut-30%": ("c.tar.gz", lambda s, t: _cut(0.3)(make_tar(s, t / "g.tar.gz").read_bytes()),
                       "truncated or corrupt"),
    "tar.gz-cut-99%": ("c.tar.gz", lambda s, t: _cut(0.99)(make_tar(s, t / "g.tar.gz").read_bytes()),
                       "truncated or corrupt"),
    "tar.gz-without-trailer": ("c.tar.gz", lambda s, t: make_tar(s, t / "g.tar.gz").read_bytes()[:-4],
                               "truncated or corrupt"),
    "tar.gz-flipped-bytes": ("c.tar.gz", lambda s, t: _flip_middle(make_tar(s, t / "g.tar.gz").read_bytes()),
                             "truncated or corrupt"),
    "tar-cut-at-a-member": ("c.tar", _tar_cut_at_member, "truncated or corrupt"),
    "gz-of-a-cut-tar": ("c.tar.gz", lambda s, t: gzip.compress(_tar_cut_at_member(s, t)), "truncated or corrupt"),
    "zip-cut-50%": ("c.zip", lambda s, t: _cut(0.5)(make_zip(s, t / "g.zip").read_bytes()), "truncated or corrupt"),
    "zip-member-data-zeroed": ("c.zip", _zip_member_zeroed, "truncated or corrupt"),
    "gzip-of-plain-text": ("c.tar.gz", lambda s, t: gzip.compress(b"not a tar\n" * 200), "truncated or corrupt"),
    "raw-deflate": ("c.tar.gz", lambda s, t: zlib.compress(b"x" * 1000), "is not a .tar.gz, .tgz, .tar or .zip"),
    "empty-file": ("c.zip", lambda s, t: b"", "is not a .tar.gz, .tgz, .tar or .zip"),
    "zeros": ("c.tar", lambda s, t: bytes(4096), "is not a .tar.gz, .tgz, .tar or .zip"),
    "wav-named-tar.gz": ("c.tar.gz", lambda s, t: b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(64),
                         "is not a .tar.gz, .tgz, .tar or .zip"),
}


@pytest.mark.parametrize("case", sorted(DAMAGED))
def test_cli_damaged_archive_is_one_clear_line(staged, tmp_path, tiny_bert_dir, case):
    name, make, words = DAMAGED[case]
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    source = tmp_path / name
    source.write_bytes(make(staged, scratch))
    _prepare_refuses(source, tmp_path, tiny_bert_dir, name, words)


@pytest.mark.parametrize("maker, name", [(make_tar, "other.tar.gz"), (make_zip, "other.zip")])
def test_cli_archive_without_iemocap_inside(tmp_path, tiny_bert_dir, maker, name):
    write_file(tmp_path / "src/stuff/readme.txt", "hi")
    source = maker(tmp_path / "src", tmp_path / name)
    _prepare_refuses(source, tmp_path, tiny_bert_dir, name, "does not look like IEMOCAP_full_release")


def test_previous_cache_survives_a_hostile_archive(tmp_path, tiny_bert_dir):
    """A good cache first, then a hostile archive for the same cache path: refused, the cache byte for byte."""
    folder = synthesize(tmp_path / "synth", SynthConfig(per_class=4, seed=5, mean_seconds=0.6, fmt="dir")).archive
    good = make_tar(folder.parent, tmp_path / "good.tar.gz")
    cache_path = tmp_path / "out" / "c.h5"
    assert cli("prepare", good, "--cache", cache_path, "--text-model", tiny_bert_dir, "--n-mels", 64,
               "--workers", 1).exit_code == 0
    before = cache_path.read_bytes()
    hostile = tar_with_extra(folder.parent, tmp_path / "hostile.tar.gz", _info("/etc/evil", size=0), b"")
    assert_refused(cli("prepare", hostile, "--cache", cache_path, "--text-model", tiny_bert_dir, "--n-mels", 64),
                   "absolute path")
    assert cache_path.read_bytes() == before
    assert not [p for p in tree(tmp_path / "out") if ".tmp" in p]


# --------------------------------------------------------------------------------------------- issue 13, items 2 and 3


def test_a_sparse_member_is_refused_before_it_fills_the_disk(staged, tmp_path, tiny_bert_dir):
    """GNU sparse: a few KB in the archive, gigabytes of zeros when unpacked (the issue's 3.98 GB reproducer)."""
    import subprocess

    wav = staged / ROOT_NAME / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F999.wav"
    wav.parent.mkdir(parents=True, exist_ok=True)
    with open(wav, "wb") as handle:
        handle.truncate(1 << 30)  # 1 GiB of holes
    try:
        archive = tmp_path / "sparse.tar"
        subprocess.run(["tar", "--sparse", "-cf", str(archive), "-C", str(staged), ROOT_NAME], check=True)
    finally:
        wav.unlink()
    assert archive.stat().st_size < 50 << 20
    _prepare_refuses(archive, tmp_path, tiny_bert_dir, "sparse file")


def test_a_zip_of_zeros_is_stopped_at_the_expansion_bound(staged, tmp_path, tiny_bert_dir, monkeypatch):
    from emocli.corpus import archive as archive_module

    monkeypatch.setattr(archive_module, "MIN_EXPANSION_BYTES", 0)
    bomb = tmp_path / "bomb.zip"
    zeros = bytes(64 << 20)
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted((staged / ROOT_NAME).rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(staged).as_posix())
        zf.writestr(f"{ROOT_NAME}/Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F998.wav", zeros)
    assert bomb.stat().st_size < (64 << 20) // 20
    _prepare_refuses(bomb, tmp_path, tiny_bert_dir, f"more than {archive_module.MAX_EXPANSION_RATIO}x")


def test_unpacking_stops_in_one_line_before_the_disk_is_full(staged, tmp_path, tiny_bert_dir, monkeypatch):
    from collections import namedtuple

    from emocli.corpus import archive as archive_module

    archive = make_tar(staged, tmp_path / "c.tar")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(archive_module.shutil, "disk_usage",
                        lambda path: usage(1 << 40, 1 << 40, archive_module.FREE_SPACE_RESERVE_BYTES + 1000))
    _prepare_refuses(archive, tmp_path, tiny_bert_dir, "free on the disk")


def test_a_tar_of_many_members_is_streamed_in_flat_memory(tmp_path):
    """1M empty members took prepare from 87 to 546 MB: tarfile kept a record of each. Now it keeps none."""
    import tracemalloc

    from emocli.corpus.archive import _extract_tar

    archive = tmp_path / "many.tar"
    with tarfile.open(archive, "w", format=tarfile.GNU_FORMAT) as tar:
        for k in range(20_000):
            tar.addfile(tarfile.TarInfo(f"{ROOT_NAME}/junk/{k}.bin"), io.BytesIO(b""))
    dest = tmp_path / "out"
    dest.mkdir()
    tracemalloc.start()
    _extract_tar(archive, "tar", dest, None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3 << 20, peak  # 20k records held would be ~9 MB
