"""An archive's unpacked copy lives only while something is computed from it: prepare removes it once the cache (and
a stage asked for) are written, a copy of an older version of the archive is removed when a newer one is unpacked,
a copy in use by another process is never removed, and a stage needed later unpacks the archive again."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from emocli import cache
from emocli.atomic import file_lock
from emocli.corpus import archive
from emocli.synth import SynthConfig, synthesize
from test_reliability_common import assert_refused, cli


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth"), SynthConfig(per_class=8, seed=5, mean_seconds=0.5))


def copies(work: Path) -> list[str]:
    """The unpacked copies (and partial ones) in a work folder; lock files are not copies."""
    return sorted(p.name for p in work.glob("extract-*") if p.is_dir())


def prepare(corpus_archive: Path, cache_path: Path, bert: Path, *extra) -> None:
    result = cli("prepare", corpus_archive, "--cache", cache_path, "--text-model", bert, "--n-mels", 64,
                 "--workers", 1, *extra)
    assert result.exit_code == 0, result.output


def test_prepare_removes_the_unpacked_copy_once_the_cache_is_written(corpus, tmp_path, tiny_bert_dir):
    path = tmp_path / "c.h5"
    prepare(corpus.archive, path, tiny_bert_dir)
    assert copies(tmp_path / ".emocli-work") == []
    assert len(cache.read_cache(path)) > 0
    prepare(corpus.archive, path, tiny_bert_dir)  # a cache hit needs no audio either
    assert copies(tmp_path / ".emocli-work") == []


def test_keep_audio_keeps_it_and_a_newer_archive_replaces_the_older_copy(corpus, tmp_path, tiny_bert_dir):
    source = tmp_path / "corpus.tar.gz"
    source.write_bytes(corpus.archive.read_bytes())
    work = tmp_path / "work"
    prepare(source, tmp_path / "c.h5", tiny_bert_dir, "--workdir", work, "--keep-audio")
    (first,) = copies(work)
    assert (work / first / archive.MARKER_NAME).is_file()
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the same archive, touched: a new version
    prepare(source, tmp_path / "c.h5", tiny_bert_dir, "--workdir", work, "--keep-audio")
    (second,) = copies(work)
    assert second != first


def test_a_copy_in_use_by_another_process_is_not_removed(corpus, tmp_path):
    work = tmp_path / "work"
    archive.open_source(corpus.archive, work)
    key = archive.extraction_key(corpus.archive)
    with file_lock(work / f"extract-{key}.use", shared=True):  # as a concurrent prepare reading it holds
        assert archive.remove_extraction(work, key) is False
    assert copies(work) == [f"extract-{key}"]
    assert archive.remove_extraction(work, key) is True
    assert copies(work) == []


def test_a_removal_interrupted_halfway_is_never_served_and_is_cleared(corpus, tmp_path):
    work = tmp_path / "work"
    archive.open_source(corpus.archive, work)
    key = archive.extraction_key(corpus.archive)
    # kill -9 in the middle of removing: the copy was renamed first, so what is left is not a copy
    os.replace(work / f"extract-{key}", work / f"extract-{key}.removing")
    root = archive.open_source(corpus.archive, work)
    assert root.is_relative_to(work / f"extract-{key}") and copies(work) == [f"extract-{key}"]


def test_a_stage_needed_after_the_copy_was_removed_says_how_and_prepare_unpacks_again(corpus, tmp_path,
                                                                                      tiny_bert_dir):
    path = tmp_path / "c.h5"
    prepare(corpus.archive, path, tiny_bert_dir)
    result = cli("train", path, "--run", tmp_path / "run", "--audio-encoder", "whisper", "--modality", "audio", "--protocol", "loso", "--val-fraction", 0.3,
                 "--epochs", 1)
    line = assert_refused(result, "is gone", "emocli prepare", "--audio-encoder whisper`")
    assert str(corpus.archive.resolve()) in line and str(path) in line
    assert not (tmp_path / "run").exists()
    prepare(corpus.archive, path, tiny_bert_dir, "--audio-encoder", "whisper")
    assert len(list((tmp_path / "c.h5.stages").glob("*.h5"))) == 1
    assert copies(tmp_path / ".emocli-work") == []
