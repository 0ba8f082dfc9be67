"""Two `emocli prepare` runs on one cache path at once: they take turns on the lock, the second finds the first's
cache (or rebuilds it for other settings), and what ends on disk is always one whole valid cache, never a mix.

The overlap is made certain, not hoped for: the first run is frozen (SIGSTOP) half-way through writing its cache,
the second is started and seen waiting on the lock file, then the first is resumed, or killed.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from emocli.features import FeatureConfig
from emocli.prepare import PrepareConfig, prepare
from emocli.synth import SynthConfig, synthesize
from test_reliability_common import assert_same_cache, cache_content, kill_9, spawn, temporaries, wait_stopped, wait_until
from test_reliability_interrupt import DRIVER

N_MELS = 64


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth"), SynthConfig(per_class=5, seed=11, mean_seconds=0.6))


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("driver") / "stop_at.py"
    path.write_text(DRIVER)
    return path


def _reference(corpus, bert: Path, folder: Path, n_mels: int) -> dict:
    prepare(corpus.archive, folder / "c.h5", PrepareConfig(text_model=str(bert), features=FeatureConfig(n_mels=n_mels),
                                                           workers=1))
    return cache_content(folder / "c.h5")


@pytest.fixture(scope="module")
def references(corpus, tiny_bert_dir, tmp_path_factory) -> dict[int, dict]:
    return {n: _reference(corpus, tiny_bert_dir, tmp_path_factory.mktemp(f"ref{n}"), n) for n in (N_MELS, 80)}


def _args(corpus, cache_path: Path, bert: Path, n_mels: int = N_MELS) -> list:
    return ["prepare", corpus.archive, "--cache", cache_path, "--text-model", bert, "--n-mels", n_mels,
            "--workers", 1, "--json"]


def _holds_open(pid: int, path: Path) -> bool:
    try:
        return any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def _finish(proc) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in out + err
    return json.loads(out)


def _start_second_while_first_writes(corpus, driver, bert, tmp_path, second_n_mels: int):
    """The first run frozen with its temporary cache half written and the lock held; the second waiting on it."""
    target = tmp_path / "c.h5"
    first = spawn(driver, "features", 5, *_args(corpus, target, bert))
    wait_stopped(first)
    assert list(tmp_path.glob(".c.h5.tmp-*"))
    second = spawn("-m", "emocli", *_args(corpus, target, bert, second_n_mels))
    wait_until(lambda: _holds_open(second.pid, tmp_path / "c.h5.lock"), proc=second, timeout=90, step=0.01)
    return first, second


@pytest.mark.parametrize("second_n_mels", [N_MELS, 80], ids=["same-settings", "other-settings"])
def test_second_prepare_waits_for_the_first_and_one_valid_cache_remains(corpus, driver, tiny_bert_dir, references,
                                                                         tmp_path, second_n_mels):
    first, second = _start_second_while_first_writes(corpus, driver, tiny_bert_dir, tmp_path, second_n_mels)
    try:
        assert second.poll() is None and not (tmp_path / "c.h5").exists()  # waiting, not writing alongside
        os.kill(first.pid, signal.SIGCONT)
        first_result, second_result = _finish(first), _finish(second)
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert first_result["cache_hit"] is False
    # Same settings: the second finds the first's cache once it gets the lock. Other settings: it rebuilds after.
    assert second_result["cache_hit"] is (second_n_mels == N_MELS)
    assert_same_cache(tmp_path / "c.h5", references[second_n_mels])
    assert temporaries(tmp_path) == []


def test_first_prepare_killed_while_second_waits(corpus, driver, tiny_bert_dir, references, tmp_path):
    """The lock dies with its holder (flock); the second run clears the dead one's temporary file and builds."""
    first, second = _start_second_while_first_writes(corpus, driver, tiny_bert_dir, tmp_path, N_MELS)
    try:
        kill_9(first)
        result = _finish(second)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    assert result["cache_hit"] is False
    assert_same_cache(tmp_path / "c.h5", references[N_MELS])
    assert temporaries(tmp_path) == []

