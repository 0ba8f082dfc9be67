"""The HDF5 cache: round trip, fingerprint, refusal of foreign or damaged files, atomic commit."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from emocli import cache
from emocli.corpus.records import LABEL_SETS, Utterance
from emocli.errors import CacheError

INPUTS = {"feature_config": {"n_mels": 8}, "label_set": LABEL_SETS["4class"].to_json(), "source": {"path": "x"}}


def _utt(i: int) -> Utterance:
    return Utterance(f"Ses01F_impro01_F{i:03d}", Path(f"/x/{i}.wav"), f"text {i}", "ang", "ang", "Ses01F", "Ses01")


def _write(path: Path, lengths=(3, 5, 2), inputs=INPUTS) -> list[np.ndarray]:
    writer = cache.CacheWriter(path, n_mels=8, max_tokens=4)
    specs = []
    for i, n in enumerate(lengths):
        spec = np.random.default_rng(i).standard_normal((8, n)).astype(np.float32)
        specs.append(spec)
        writer.append(_utt(i), 0, spec, np.arange(4), np.ones(4), float(n))
    writer.commit(inputs, {"utterances": len(lengths)})
    return specs


def test_round_trip(tmp_path):
    path = tmp_path / "c.h5"
    specs = _write(path)
    data = cache.read_cache(path)
    assert len(data) == 3 and data.spec.shape == (10, 8) and list(data.spec_lengths) == [3, 5, 2]
    for i, spec in enumerate(specs):
        np.testing.assert_allclose(data.spectrogram(i), spec, atol=1e-2)  # float16 storage
    assert data.utt_ids[1] == "Ses01F_impro01_F001" and data.texts[2] == "text 2"
    assert data.meta.fingerprint == cache.fingerprint(INPUTS)
    assert data.meta.classes == ("ang", "hap", "sad", "neu")
    assert not list(tmp_path.glob(".c.h5.tmp-*"))


def test_fingerprint_changes_with_any_input():
    assert cache.fingerprint(INPUTS) == cache.fingerprint(dict(INPUTS))
    changed = {**INPUTS, "feature_config": {"n_mels": 16}}
    assert cache.fingerprint(INPUTS) != cache.fingerprint(changed)


def test_missing_foreign_and_old_version_refused(tmp_path):
    with pytest.raises(CacheError, match="no cache"):
        cache.read_meta(tmp_path / "nope.h5")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as h5:
        h5["x"] = 1
    with pytest.raises(CacheError, match="not an emocli cache"):
        cache.read_meta(foreign)
    old = tmp_path / "old.h5"
    _write(old)
    with h5py.File(old, "a") as h5:
        h5.attrs["format_version"] = 0
    with pytest.raises(CacheError, match="format 0"):
        cache.read_meta(old)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(CacheError, match="not a readable emocli cache"):
        cache.read_meta(text)


def test_abort_leaves_previous_cache_intact(tmp_path):
    path = tmp_path / "c.h5"
    _write(path)
    before = path.read_bytes()
    writer = cache.CacheWriter(path, n_mels=8, max_tokens=4)
    writer.append(_utt(0), 0, np.zeros((8, 3), np.float32), np.arange(4), np.ones(4), 1.0)
    writer.abort()
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".c.h5.tmp-*"))


def test_stale_temporaries_removed(tmp_path):
    path = tmp_path / "c.h5"
    (tmp_path / ".c.h5.tmp-99999").write_bytes(b"half")
    with cache.build_lock(path):
        removed = cache.remove_stale_temporaries(path)
    assert [p.name for p in removed] == [".c.h5.tmp-99999"] and not (tmp_path / ".c.h5.tmp-99999").exists()


def test_the_file_lock_works_without_fcntl(tmp_path, monkeypatch):
    """Where fcntl does not exist (Windows) the filelock package's lock takes over: still mutual exclusion."""
    from emocli import atomic

    monkeypatch.setattr(atomic, "fcntl", None)
    lock = tmp_path / "x.lock"
    with atomic.file_lock(lock):
        with pytest.raises(atomic.LockBusy):
            with atomic.file_lock(lock, wait=False):
                pass
    with atomic.file_lock(lock, wait=False):  # free again
        pass
