"""Helpers shared by the test_reliability_* modules (no tests of their own): the CLI as a user meets it, in process
and as a real subprocess, and the checks every failure must pass."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from emocli import cache
from emocli.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def cli(*args):
    """`emocli ARGS...` in this process (fast); the result carries exit_code, stdout and stderr apart."""
    return runner.invoke(app, [str(a) for a in args])


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def assert_refused(result, *words: str) -> str:
    """A refusal as a user must see it: exit 1, one `error:` line on stderr naming the problem, no traceback."""
    errors = lines(result.stderr)
    assert result.exit_code == 1, (result.exit_code, result.stdout[-2000:], result.stderr[-2000:])
    assert len(errors) == 1 and errors[0].startswith("error:"), errors
    assert "Traceback" not in result.stdout + result.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])
    return errors[0]


def no_traceback(result) -> None:
    assert "Traceback" not in result.stdout + result.stderr
    assert "internal error" not in result.stderr, result.stderr


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::DeprecationWarning"}


def spawn(*argv, new_session: bool = False, capture: bool = True) -> subprocess.Popen:
    """`python ARGV...` as a real process of its own (a kill -9 must not take the test with it); `new_session`:
    in a process group of its own, which a terminal's Ctrl-C (SIGINT to the group) can target; `capture=False`:
    output discarded, so that children outliving it cannot hold the test's pipes open."""
    out = subprocess.PIPE if capture else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, *map(str, argv)], cwd=REPO, env=subprocess_env(), stdout=out, stderr=out,
                            text=True, start_new_session=new_session,
                            preexec_fn=_as_a_terminal_job if new_session else None)


def _as_a_terminal_job() -> None:
    """Ctrl-C and a closed terminal as a terminal's foreground job gets them. A test run started in the background
    of a non-interactive shell (as CI may start it) inherits SIGINT ignored, and one started under nohup SIGHUP
    ignored; emocli rightly keeps an ignored signal ignored, so the process under test would carry on and exit 0."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def process_state(pid: int) -> str:
    """One letter of /proc/PID/stat: R running, S sleeping, T stopped, Z zombie; "" once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat[stat.rindex(")") + 2]


def wait_until(condition, timeout: float = 60.0, step: float = 0.002, proc: subprocess.Popen | None = None) -> None:
    """Poll `condition` until true; fail (showing the process's output) if `proc` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"process ended (rc {proc.returncode}) before the awaited point:\n{out}\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(step)


def wait_stopped(proc: subprocess.Popen, timeout: float = 90.0) -> None:
    wait_until(lambda: process_state(proc.pid) == "T", timeout, 0.01, proc)


def kill_9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def tree(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")} if folder.exists() else set()


def temporaries(folder: Path) -> list[str]:
    """What an interrupted write can leave: `.NAME.tmp-PID` files and `extract-KEY.tmp` folders."""
    return sorted(p for p in tree(folder) if ".tmp-" in p or ".tmp/" in p or p.endswith(".tmp"))


def cache_content(path: Path) -> dict:
    """Everything a cache holds, arrays and attributes; audio paths relative to their extraction folder, so two
    caches built from the same archive in different places compare equal."""
    data = cache.read_cache(path)
    out = {"fingerprint": data.meta.fingerprint, "inputs": data.meta.inputs, "summary": data.meta.summary}
    for name in ("spec", "spec_offsets", "input_ids", "attention_mask", "labels", "durations"):
        out[name] = getattr(data, name).tobytes()
    for name in ("utt_ids", "speakers", "sessions", "texts", "raw_labels"):
        out[name] = getattr(data, name)
    out["audio_paths"] = [p.split("/extract-", 1)[-1].split("/", 1)[-1] for p in data.audio_paths]
    return out


def assert_same_cache(path: Path, expected: dict) -> None:
    """`path` holds exactly the cache `expected` describes; on failure, which parts differ and, for arrays, where
    and by how much (a stray float difference and a mix of two caches read very differently)."""
    actual = cache_content(path)
    differ = [key for key in expected if actual.get(key) != expected[key]]
    if not differ:
        return
    details = []
    for key in differ:
        a, e = actual[key], expected[key]
        if key == "spec" and len(a) == len(e):
            a, e = np.frombuffer(a, np.float32), np.frombuffer(e, np.float32)
            bad = np.flatnonzero(a != e)
            details.append(f"spec: {bad.size} of {a.size} values differ, first at {bad[0]}, "
                           f"max |diff| {np.abs(a - e).max():.3g} dB")
        elif isinstance(a, bytes):
            details.append(f"{key}: {len(a)} bytes vs {len(e)} expected")
        else:
            details.append(f"{key}: {str(a)[:200]} vs {str(e)[:200]} expected")
    raise AssertionError("caches differ: " + "; ".join(details))


def tone(seconds: float, rate: int = 16_000, freq: float = 220.0, amplitude: float = 0.3) -> np.ndarray:
    """A voiced-sounding test signal: a tone with a slow vibrato and a little noise, float32 in [-1, 1]."""
    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(int(freq))
    y = np.sin(2 * np.pi * freq * t + 3 * np.sin(2 * np.pi * 4 * t)) + 0.05 * rng.standard_normal(t.size)
    return (amplitude * y / np.abs(y).max()).astype(np.float32)
