"""Interruptions: `emocli prepare` killed with SIGKILL at each stage of its work, and a disk that fills up while
`emocli train` writes. After each, the previous cache or run is intact (or absent), and the next run leaves no
temporary file behind and ends exactly where an uninterrupted run does.

kill -9 of `train` mid-epoch, with identical numbers after the rerun, is tests/test_train.py's
test_kill_9_then_rerun_gives_identical_numbers; a full disk while `prepare` writes is test_prepare.py's.

Each kill point is hit deterministically without a hook in the product: a small driver runs the real CLI in its own
process with one library function wrapped so the process stops itself (SIGSTOP) at that point; the test looks at
the disk while it is frozen, then kills it with SIGKILL, which no handler can intercept or clean up after.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

from emocli import atomic, bundle
from emocli.features import FeatureConfig, parallel_map
from emocli.prepare import PrepareConfig, prepare
from emocli.synth import SynthConfig, synthesize
from test_reliability_common import (assert_refused, assert_same_cache, cache_content, children, cli, kill_9, lines, no_traceback,
                                     process_state, spawn, temporaries, wait_stopped, wait_until)
from test_train import make_cache, numbers

N_MELS = 64
DRIVER = '''
"""`emocli ARGS...`, stopping itself (SIGSTOP) at one point of prepare: argv = POINT N ARGS..."""
import inspect, os, signal, sys

point, nth = sys.argv[1], int(sys.argv[2])
sys.argv = ["emocli", *sys.argv[3:]]
calls = 0


def reached():
    global calls
    calls += 1
    return calls == nth


if point == "unpack":  # after the nth member was copied into the temporary extraction folder
    from emocli.corpus import archive

    copy = archive._copy_member

    def copy_then_stop(*args):
        copy(*args)
        if reached():
            os.kill(os.getpid(), signal.SIGSTOP)

    archive._copy_member = copy_then_stop
elif point in ("features", "features-pool"):  # before the nth utterance's log-mel; a pool worker stops its parent
    from emocli import prepare

    extract = prepare._extract_one
    driver = os.path.abspath(__file__)

    def first_worker_here():  # each worker counts its own calls: only the first to reach nth stops the parent
        try:
            os.close(os.open(f"{driver}.{os.getppid()}.stopped", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return False
        return True

    def stop_then_extract(job):
        if reached():
            if point == "features":
                os.kill(os.getpid(), signal.SIGSTOP)
            elif first_worker_here():
                os.kill(os.getppid(), signal.SIGSTOP)
        return extract(job)

    prepare._extract_one = stop_then_extract
elif point == "commit":  # inside CacheWriter.commit: every dataset written, no attribute yet
    from emocli import cache

    digest = cache.fingerprint

    def stop_in_commit(inputs):
        if inspect.currentframe().f_back.f_code.co_name == "commit":
            os.kill(os.getpid(), signal.SIGSTOP)
        return digest(inputs)

    cache.fingerprint = stop_in_commit
elif point == "rename":  # the temporary cache complete and synced, not yet renamed over the old one
    replace = os.replace

    def stop_then_replace(src, dst):
        if str(dst).endswith(".h5"):
            os.kill(os.getpid(), signal.SIGSTOP)
        return replace(src, dst)

    os.replace = stop_then_replace
from emocli.cli import main

main()
'''


# --------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth"), SynthConfig(per_class=5, seed=7, mean_seconds=0.6))


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("driver") / "stop_at.py"
    path.write_text(DRIVER)
    return path


def _config(bert: Path, n_mels: int = N_MELS) -> PrepareConfig:
    return PrepareConfig(text_model=str(bert), features=FeatureConfig(n_mels=n_mels), workers=1)


@pytest.fixture(scope="module")
def reference(corpus, tiny_bert_dir, tmp_path_factory) -> dict:
    """The cache an uninterrupted run makes, with the same settings as `_args`."""
    path = tmp_path_factory.mktemp("reference") / "c.h5"
    prepare(corpus.archive, path, _config(tiny_bert_dir))
    return cache_content(path)


@pytest.fixture(scope="module")
def older_cache(corpus, tiny_bert_dir, tmp_path_factory) -> bytes:
    """A valid cache made with other settings: what a killed rebuild must leave byte for byte."""
    path = tmp_path_factory.mktemp("older") / "c.h5"
    prepare(corpus.archive, path, _config(tiny_bert_dir, n_mels=80))
    return path.read_bytes()


def _args(corpus, cache_path: Path, bert: Path, workers: int = 1) -> list:
    return ["prepare", corpus.archive, "--cache", cache_path, "--text-model", bert, "--n-mels", N_MELS,
            "--workers", workers, "--json"]


def _rerun_matches_reference(corpus, folder: Path, bert: Path, reference: dict) -> None:
    """The next run: exit 0, a fresh build identical to the uninterrupted one, and no temporary file anywhere."""
    result = cli(*_args(corpus, folder / "c.h5", bert))
    assert result.exit_code == 0, result.stderr
    no_traceback(result)
    assert json.loads(result.stdout)["cache_hit"] is False
    assert_same_cache(folder / "c.h5", reference)
    assert temporaries(folder) == []


# --------------------------------------------------------------------------------------------- kill -9 of prepare


# (point, nth call, whether a valid older cache sits at the target, what must exist while frozen there)
KILL_POINTS = [
    ("unpack", 3, False, "extraction"),
    ("unpack", 3, True, "extraction"),
    ("features", 5, True, "cache tmp"),
    ("commit", 1, False, "cache tmp"),
    ("rename", 1, True, "cache tmp"),
]


@pytest.mark.parametrize("point, nth, older, frozen_with", KILL_POINTS,
                         ids=[f"{p}-{'older' if o else 'none'}" for p, _, o, _ in KILL_POINTS])
def test_kill_9_of_prepare_leaves_old_cache_or_none_and_rerun_is_identical(
        corpus, driver, tiny_bert_dir, reference, older_cache, tmp_path, point, nth, older, frozen_with):
    target = tmp_path / "c.h5"
    if older:
        target.write_bytes(older_cache)
    proc = spawn(driver, point, nth, *_args(corpus, target, tiny_bert_dir))
    try:
        wait_stopped(proc)
        work = tmp_path / ".emocli-work"
        if frozen_with == "extraction":  # members half unpacked, nothing final yet
            (partial,) = work.glob("extract-*.tmp")
            assert any(p.is_file() for p in partial.rglob("*.wav"))
            assert not [p for p in work.glob("extract-*") if p.is_dir() and not p.name.endswith(".tmp")]
        else:
            assert list(tmp_path.glob(".c.h5.tmp-*"))
    finally:
        kill_9(proc)
    if older:
        assert target.read_bytes() == older_cache
    else:
        assert not target.exists()
    _rerun_matches_reference(corpus, tmp_path, tiny_bert_dir, reference)


def test_kill_9_while_pool_workers_extract_features(corpus, driver, tiny_bert_dir, reference, older_cache, tmp_path):
    """The main process killed while two forked workers compute features: the workers exit on their own."""
    target = tmp_path / "c.h5"
    target.write_bytes(older_cache)
    proc = spawn(driver, "features-pool", 2, *_args(corpus, target, tiny_bert_dir, workers=2), capture=False)
    workers: list[int] = []
    try:
        wait_stopped(proc)
        workers = children(proc.pid)
        assert len(workers) == 2
    finally:
        kill_9(proc)
    try:
        wait_until(lambda: all(process_state(pid) in ("", "Z") for pid in workers), timeout=30, step=0.05)
    finally:
        for pid in workers:  # never leave an orphan behind, even when the check above fails
            if process_state(pid) not in ("", "Z"):
                os.kill(pid, signal.SIGKILL)
    assert target.read_bytes() == older_cache
    _rerun_matches_reference(corpus, tmp_path, tiny_bert_dir, reference)


def test_kill_9_when_the_temporary_cache_appears(corpus, tiny_bert_dir, reference, older_cache, tmp_path):
    """No instrumentation at all: the plain CLI, killed the moment its temporary cache file shows up."""
    target = tmp_path / "c.h5"
    target.write_bytes(older_cache)
    proc = spawn("-m", "emocli", *_args(corpus, target, tiny_bert_dir))
    try:
        wait_until(lambda: any(tmp_path.glob(".c.h5.tmp-*")), proc=proc, timeout=90)
    finally:
        kill_9(proc)
    assert target.read_bytes() == older_cache
    _rerun_matches_reference(corpus, tmp_path, tiny_bert_dir, reference)


def _signal_stopped(driver, point: str, nth: int, args: list, send) -> tuple[int, str, str]:
    """Run prepare to the kill point, `send(pid)` a signal while it is stopped there, resume it; its exit and output."""
    proc = spawn(driver, point, nth, *args, new_session=True)
    try:
        wait_stopped(proc)
        send(proc.pid)
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out, err


@pytest.mark.parametrize("point, nth, workers", [("unpack", 3, 1), ("commit", 1, 1), ("features-pool", 2, 2)],
                         ids=["unpack", "commit", "pool-workers"])
def test_ctrl_c_of_prepare_is_one_line_exit_130_and_cleans_up(corpus, driver, tiny_bert_dir, older_cache, tmp_path,
                                                               point, nth, workers):
    """SIGINT to the whole process group, as a terminal's Ctrl-C sends it: unlike SIGKILL it can be handled, so the
    half-unpacked folder and the temporary cache are removed on the spot, the feature workers stop without a word,
    and the user reads one line."""
    target = tmp_path / "c.h5"
    target.write_bytes(older_cache)
    # SIGINT to the group: the main process takes it on resuming, inside the stopped call
    returncode, out, err = _signal_stopped(driver, point, nth, _args(corpus, target, tiny_bert_dir, workers),
                                           lambda pid: os.killpg(pid, signal.SIGINT))
    assert returncode == 130 and out == ""
    assert lines(err) == ["interrupted; nothing already written was changed"], err
    assert target.read_bytes() == older_cache
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
@pytest.mark.parametrize("to, point, nth, workers", [("process", "commit", 1, 1), ("group", "features-pool", 2, 2)],
                         ids=["to-the-process", "to-the-group"])
def test_sigterm_and_sighup_of_prepare_clean_up_as_ctrl_c_does(corpus, driver, tiny_bert_dir, older_cache, tmp_path,
                                                                signum, to, point, nth, workers):
    """A batch system's SIGTERM or a closed terminal's SIGHUP: the temporary cache is removed, one line, exit 128 + the
    signal (issue 13, item 16: they used to end the command silently, temporaries left). Sent to the whole group it
    also reaches the feature workers: the parent used to wait forever on their futures (and CPython's executor
    printed a traceback); it stops, says one line, and leaves nothing behind."""
    target = tmp_path / "c.h5"
    target.write_bytes(older_cache)
    send = os.kill if to == "process" else os.killpg
    returncode, out, err = _signal_stopped(driver, point, nth, _args(corpus, target, tiny_bert_dir, workers),
                                           lambda pid: send(pid, signum))
    assert returncode == 128 + signum and out == ""
    assert lines(err) == ["interrupted; nothing already written was changed"], err
    assert target.read_bytes() == older_cache
    assert temporaries(tmp_path) == []


def _sigint_disposition(_) -> bool:
    return signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN


def test_feature_workers_leave_ctrl_c_to_the_parent():
    """A terminal's Ctrl-C (or its hang-up) reaches every process of the group: workers that took it would each
    print a traceback or die under the parent. They ignore both; the parent stops the pool and prints its one line."""
    with parallel_map(16, workers=2) as feature_map:
        assert all(feature_map(_sigint_disposition, range(16)))


# --------------------------------------------------------------------------------------------- a full disk in train


TRAIN_ARGS = ["--repeats", "1", "--epochs", "3", "--batch-size", "8", "--lr", "3e-3", "--audio-width", "0.0625",
              "--freeze-text", "--json"]


class FullDisk:
    """`open` for emocli.atomic that fails the `nth` write of one file half-way with ENOSPC, as a full disk does,
    after noting what the file held before."""

    def __init__(self, run: Path, relative: str, nth: int):
        self.target, self.nth, self.calls, self.before = run / relative, nth, 0, None

    def __call__(self, file, mode="r", *args, **kwargs):
        handle = builtins.open(file, mode, *args, **kwargs)
        path = Path(file)
        if "w" in mode and path.parent == self.target.parent and path.name.startswith(f".{self.target.name}.tmp-"):
            self.calls += 1
            if self.calls == self.nth:
                self.before = self.target.read_bytes() if self.target.exists() else None
                return _FailingWrites(handle)
        return handle


class _FailingWrites:
    def __init__(self, handle):
        self._handle = handle

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()

    def write(self, data: bytes) -> int:
        self._handle.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")


@pytest.fixture(scope="module")
def train_cache(tiny_bert_dir, tmp_path_factory) -> Path:
    return make_cache(tmp_path_factory.mktemp("train-cache") / "cache.h5", tiny_bert_dir)


@pytest.fixture(scope="module")
def train_reference_run(train_cache, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("train-reference") / "run"
    result = cli("train", train_cache, "--run", run, *TRAIN_ARGS)
    assert result.exit_code == 0, result.stderr
    return run


@pytest.fixture(scope="module")
def train_reference(train_reference_run) -> dict:
    return numbers(train_reference_run)


@pytest.mark.parametrize("relative, nth", [
    ("folds/random-0/checkpoint/checkpoint.safetensors", 2),  # the second epoch's checkpoint
    ("folds/random-0/metrics.jsonl", 3),  # written at the fold's start, then after each epoch
    ("folds/random-0/model.safetensors", 1),  # the final weights
    ("summary.json", 1),
], ids=["checkpoint", "metrics", "final-weights", "summary"])
def test_full_disk_while_training_keeps_the_previous_file_says_so_and_resumes_identically(
        train_cache, train_reference, tmp_path, monkeypatch, relative, nth):
    run = tmp_path / "run"
    full = FullDisk(run, relative, nth)
    monkeypatch.setattr(atomic, "open", full, raising=False)
    result = cli("train", train_cache, "--run", run, *TRAIN_ARGS)
    monkeypatch.undo()
    assert full.calls == nth
    errors = [line for line in lines(result.stderr) if not line.startswith("warning:")]
    assert result.exit_code == 1 and len(errors) == 1, result.stderr
    assert errors[0].startswith(f"error: cannot write {run / relative}: No space left on device; the previous "
                                f"version, if any, is intact"), errors[0]
    no_traceback(result)
    target = run / relative
    assert (target.read_bytes() if target.exists() else None) == full.before
    assert temporaries(run) == []
    if relative.endswith("checkpoint.safetensors"):
        _, state = bundle.open_run(run).fold("random-0").load_checkpoint()
        assert state["epoch"] == 1  # the previous checkpoint, whole and loadable

    again = cli("train", train_cache, "--run", run, *TRAIN_ARGS)
    assert again.exit_code == 0, again.stderr
    no_traceback(again)
    assert numbers(run) == train_reference
    assert temporaries(run) == []



def test_full_disk_while_eval_or_predict_write_keeps_the_previous_output(train_reference_run, tmp_path, monkeypatch):
    import soundfile as sf

    from test_reliability_common import tone

    run = Path(shutil.copytree(train_reference_run, tmp_path / "run"))
    assert cli("eval", run).exit_code == 0
    wav = tmp_path / "clip.wav"
    sf.write(wav, tone(1.0), 16_000, subtype="PCM_16")
    output = tmp_path / "predictions.csv"
    assert cli("predict", run, wav, "--output", output).exit_code == 0
    for relative, command in (("metrics.json", ("eval", run)), ("predictions.csv", ("predict", run, wav, "--output",
                                                                                      output))):
        target = run / relative if relative == "metrics.json" else output
        before = target.read_bytes()
        full = FullDisk(target.parent, target.name, 1)
        monkeypatch.setattr(atomic, "open", full, raising=False)
        result = cli(*command)
        monkeypatch.undo()
        assert full.calls == 1 and full.before == before
        assert_refused(result, f"cannot write {target}: No space left on device", "intact")
        assert target.read_bytes() == before and temporaries(tmp_path) == []


def _slow_square(x: int) -> int:
    time.sleep(0.2)
    return x * x


def test_an_interrupted_map_whose_workers_were_killed_returns_at_once():
    """Interrupted while its feature workers can no longer finish their chunks (a signal to the whole process group
    killed them; here they are frozen, which leaves their futures unsettled in the same way), the parent must not
    wait on them: it used to wait forever."""
    import multiprocessing

    before = {child.pid for child in multiprocessing.active_children()}  # other tests' children are not ours
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with parallel_map(400, workers=2, chunksize=4) as feature_map:
            results = feature_map(_slow_square, range(400))
            assert next(iter(results)) == 0
            workers = [c for c in multiprocessing.active_children() if c.pid not in before]
            assert len(workers) == 2
            for child in workers:
                os.kill(child.pid, signal.SIGSTOP)

            def interrupt(signum, frame):
                raise KeyboardInterrupt

            previous = signal.signal(signal.SIGALRM, interrupt)
            try:
                signal.setitimer(signal.ITIMER_REAL, 0.05)  # lands inside the wait for the next chunk
                list(results)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
    assert time.monotonic() - started < 20
    deadline = time.monotonic() + 10  # SIGKILLed: gone as soon as the kernel reaps them (slower on a loaded machine)
    while [c for c in workers if c.is_alive()] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [c for c in workers if c.is_alive()]  # the frozen workers were stopped, not left behind
