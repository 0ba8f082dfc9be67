#!/usr/bin/env python3
"""emocli as a new and as a hostile user meets it: scenarios run against the real CLI, failures counted.

    OMP_NUM_THREADS=1 .venv/bin/python bench/reliability_scenarios.py [BASE] [--json PATH] [--only REGEX]

Each scenario runs in a sandbox folder of its own under BASE (default /tmp/scen-harness):

    BASE/NNN-name/sb/        the user's folder: inputs copied in, outputs written here (the command's cwd)
    BASE/NNN-name/outside/   decoys (and the targets of path-traversal members) that nothing may touch
    BASE/NNN-name/home/      HOME of the command (writable, not checked)
    BASE/NNN-name/logs/      stdout/stderr of every command

Every command is `python -m emocli ...` with the venv's python, as a subprocess with a timeout (as root, or as
`nobody` through setpriv where the scenario needs permissions to bite). Before the first command the harness
records sha256 + mode of every file in sb/ and outside/; after each command and after the scenario it checks:

  (a) the exit status: 0 for success, 1 for a user error (and for predict's "some files skipped"), 128 + N for
      a signal;
  (b) stderr: a failure is exactly one line starting with `error:` (rich progress-bar rows of `train` aside);
      predict's partial failures are `skipped ...` lines and the `N of M file(s) could not be predicted` line;
      never `Traceback` or `internal error`; no raw terminal control bytes (ESC, BEL, C1 CSI) anywhere;
  (c) files lost or corrupted: a pre-existing file the scenario does not own that changed (content or mode)
      or disappeared (the source corpus, transcripts and decoys are never owned);
  (d) bytes written outside the target: any new or changed file outside the scenario's allowed output paths;
  (e) leftover temporaries: `.NAME.tmp-PID`, `.NAME.probe-*`, `extract-*.tmp`, `*.removing` after a command.

It prints one row per scenario and the totals, writes them as JSON with --json, and exits 1 if any scenario
failed. Corpora (synth), a cache and one trained run are made once under BASE/_fixtures and copied into the
sandboxes (the run's 90 MB text encoder is hard-linked; the fixtures are re-hashed at the end).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import fnmatch
import glob
import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tarfile
import time
import unicodedata
import wave
import zipfile
from pathlib import Path
from typing import Callable, Optional

REPO = Path(__file__).resolve().parents[1]
VENV_PY = REPO / ".venv" / "bin" / "python"
NOBODY = 65534
SETPRIV = shutil.which("setpriv")
DEFAULT_BASE = Path("/tmp/scen-harness")

TRAIN_SMALL = ["--epochs", "1", "--audio-width", "0.125", "--freeze-text", "--protocol", "loso",
               "--val-fraction", "0.3"]
PREP_SMALL = ["--n-mels", "64"]
TGZ = "IEMOCAP_full_release.tar.gz"

# Temporaries emocli creates and must remove (or, after a kill -9, the next run must remove).
TEMP_PATTERNS = [re.compile(p) for p in (r"^\..+\.tmp-\d+$", r"^\..+\.probe-", r"^extract-[^/]*\.tmp$",
                                         r"\.removing$")]
PROGRESS_CHARS = ("━", "╸", "╺", "╾", "╼")
RAW_CONTROL = (b"\x1b", b"\x07", b"\xc2\x9b", b"\xc2\x9d")  # ESC, BEL, C1 CSI and OSC as UTF-8


# =============================================================================================== data


@dataclasses.dataclass
class Step:
    args: list                       # after `python -m emocli`
    expect: str = "ok"               # ok | error | partial | signal | killed | either | any_exit
    cwd: str = "sb"                  # relative to the scenario folder
    user: str = "root"               # root | nobody
    signal: Optional[tuple] = None   # (signum, trigger, target): trigger ("delay", s) | ("exists", glob); target pid|group
    timeout: float = 180.0
    check: Optional[Callable] = None  # (sandbox, result) -> list of reasons
    label: str = ""
    bg: bool = False                 # start and go on; a later Step(join=label) waits for it
    join: str = ""                   # wait for the background step of that label (args unused)
    send: Optional[int] = None       # with join: send this signal to it first
    wait_exists: str = ""            # before starting: wait until this glob (scenario-relative) exists
    temps_ok: bool = False           # temporaries may remain after this step (kill -9: the next run cleans up)
    env: Optional[dict] = None
    stdin_text: str = ""
    done_marker: str = ""            # with expect=signal: stdout text that shows the work had already finished


@dataclasses.dataclass
class Scenario:
    name: str
    category: str
    build: Callable                  # (sandbox) -> list[Step]
    allowed: list                    # globs (scenario-relative) where new/changed files may appear
    owned: list                      # pre-existing files (globs) that may legitimately change or go away
    needs: str = ""                  # "nobody": skipped where setpriv / nobody cannot run


@dataclasses.dataclass
class StepResult:
    label: str
    args: list
    expect: str
    rc: Optional[int]
    stdout: str
    stderr: str
    raw: bytes
    seconds: float
    reasons: list
    tracebacks: int = 0
    temps: list = dataclasses.field(default_factory=list)
    notes: list = dataclasses.field(default_factory=list)


class BuildError(Exception):
    """A scenario could not be set up (environment or a setup command that failed)."""


class SkipScenario(Exception):
    pass


SCENARIOS: list[Scenario] = []


def scenario(name, category, allowed=(), owned=(), needs=""):
    def register(fn):
        SCENARIOS.append(Scenario(name, category, fn, list(allowed), list(owned), needs))
        return fn
    return register


# =============================================================================================== helpers


def show(text: str, limit: int = 400) -> str:
    """A string safe to print: control characters escaped, cut to `limit`."""
    out = "".join(c if (c.isprintable() or c == " ") else repr(c)[1:-1] for c in text)
    return out if len(out) <= limit else out[:limit - 1] + "…"


def child_env(home: Path, extra: Optional[dict] = None) -> dict:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
           "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    for key in ("TMPDIR",):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra or {})
    return env


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a background harness would otherwise pass SIGINT ignored


def command(args: list, user: str) -> list:
    argv = [str(VENV_PY), "-m", "emocli", *[str(a) for a in args]]
    if user == "nobody":
        argv = [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *argv]
    return argv


def group_alive(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        rest = text[text.rindex(")") + 2:].split()
        if rest[0] != "Z" and int(rest[2]) == pgid:
            alive.append(int(entry))
    return alive


def describe_group(pgid: int) -> str:
    """What the processes of a hung command are doing: state and kernel wait channel of each."""
    parts = []
    for entry in sorted(os.listdir("/proc"), key=lambda e: (len(e), e)):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
            wchan = Path(f"/proc/{entry}/wchan").read_text().strip() or "-"
        except OSError:
            continue
        rest = text[text.rindex(")") + 2:].split()
        if int(rest[2]) == pgid:
            role = "main" if int(entry) == pgid else "child"
            parts.append(f"{role} {rest[0]}" + (f" in {wchan}" if rest[0] != "Z" else " (zombie)"))
    return ", ".join(parts) or "no process left"


_HASHES: dict = {}


def file_hash(path: Path, st: os.stat_result) -> str:
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def snapshot(scen_dir: Path) -> dict:
    """rel path -> (kind, content id, mode, size) for everything under sb/ and outside/, links not followed."""
    entries = {}
    for sub in ("sb", "outside"):
        root = scen_dir / sub
        if not root.exists():
            continue
        for top, dirs, files in os.walk(root):
            for name in dirs + files:
                path = Path(top, name)
                rel = path.relative_to(scen_dir).as_posix()
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISLNK(st.st_mode):
                    entries[rel] = ("link", os.readlink(path), 0, 0)
                elif stat.S_ISDIR(st.st_mode):
                    entries[rel] = ("dir", "", mode, 0)
                elif stat.S_ISREG(st.st_mode):
                    try:
                        digest = file_hash(path, st)
                    except OSError as exc:
                        digest = f"unreadable:{exc.errno}"
                    entries[rel] = ("file", digest, mode, st.st_size)
                else:
                    entries[rel] = ("other", "", mode, 0)
    return entries


def matches(rel: str, patterns: list) -> bool:
    """fnmatch (where `*` also matches `/`); `DIR/**` matches DIR itself and everything below it."""
    for pattern in patterns:
        if pattern.endswith("/**"):
            base = pattern[:-3]
            if fnmatch.fnmatchcase(rel, base) or fnmatch.fnmatchcase(rel, base + "/*"):
                return True
        elif fnmatch.fnmatchcase(rel, pattern):
            return True
    return False


def find_temporaries(scen_dir: Path) -> list[str]:
    found = []
    for sub in ("sb", "outside"):
        for top, dirs, files in os.walk(scen_dir / sub):
            for name in dirs + files:
                if any(p.search(name) for p in TEMP_PATTERNS):
                    found.append(Path(top, name).relative_to(scen_dir).as_posix())
    return sorted(found)


def extract_copies(scen_dir: Path) -> list[str]:
    """Unpacked archive copies (`extract-<key>` folders) anywhere in the sandbox."""
    out = []
    for top, dirs, _ in os.walk(scen_dir / "sb"):
        for name in dirs:
            if re.fullmatch(r"extract-[0-9a-f]+", name):
                out.append(Path(top, name).relative_to(scen_dir).as_posix())
    return out


def make_world_traversable(path: Path) -> None:
    for p in [path, *path.parents]:
        if p == Path("/"):
            break
        mode = stat.S_IMODE(p.stat().st_mode)
        if mode & 0o005 != 0o005:
            p.chmod(mode | 0o005)


def force_rmtree(path: Path) -> None:
    if not path.exists() and not path.is_symlink():
        return
    for top, dirs, _ in os.walk(path):
        for d in dirs:
            p = Path(top, d)
            if not p.is_symlink():
                try:
                    p.chmod(0o755)
                except OSError:
                    pass
    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- audio bytes


def wav_pcm16(samples, rate: int = 16000) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.asarray(samples, dtype="<i2").tobytes())
    return buf.getvalue()


def wav_float32(samples, rate: int = 16000) -> bytes:
    import numpy as np

    data = np.asarray(samples, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tone(seconds: float = 0.8, freq: float = 220.0):
    import numpy as np

    t = np.arange(int(16000 * seconds)) / 16000
    return (8000 * np.sin(2 * np.pi * freq * t)).astype("<i2")


# =============================================================================================== fixtures


class Fixtures:
    def __init__(self, root: Path):
        self.root = root
        self.tgz = root / "tgz" / TGZ
        self.zip = root / "zip" / "IEMOCAP_full_release.zip"
        self.dir = root / "dir" / "IEMOCAP_full_release"
        self.big = root / "big" / TGZ
        self.cache = root / "cache" / "cache.h5"
        self.run = root / "run"
        self.dir_summary: dict = {}
        self.clips = root / "clips"
        self.manifest = root / "manifest"
        self.preds = root / "preds" / "preds.csv"
        self.zeros_zip = root / "bombs" / "zeros.zip"
        self.hashes: dict = {}

    def cli(self, *args) -> str:
        env = child_env(self.root / "home")
        result = subprocess.run(command(list(args), "root"), cwd=self.root, env=env, capture_output=True,
                                timeout=600)
        if result.returncode != 0:
            raise SystemExit(f"fixture command failed: emocli {' '.join(map(str, args))}\n"
                             f"{result.stderr.decode(errors='replace')[-3000:]}")
        return result.stdout.decode(errors="replace")

    def build(self) -> None:
        root = self.root
        force_rmtree(root)
        (root / "home").mkdir(parents=True)
        started = time.monotonic()
        for fmt, sub in (("tar.gz", "tgz"), ("zip", "zip"), ("dir", "dir")):
            self.cli("synth", root / sub, "--per-class", 8, "--seed", 1, "--format", fmt, "--mean-seconds", 0.6)
        # A larger corpus, so that a signal can land while prepare unpacks or extracts features.
        self.cli("synth", root / "big", "--per-class", 250, "--seed", 2, "--format", "tar.gz", "--mean-seconds", 2.5)
        self.cli("prepare", self.tgz, "--cache", self.cache, *PREP_SMALL, "--json")
        self.cli("train", self.cache, "--run", self.run, *TRAIN_SMALL, "--json")
        self.cli("eval", self.run, "--json")  # metrics.json, confusion.png, training-curves.png
        self.dir_summary = json.loads(self.cli("prepare", self.dir, "--cache", root / "dircache" / "c.h5",
                                               *PREP_SMALL, "--json"))
        (root / "dir_summary.json").write_text(json.dumps(self.dir_summary))
        self._manifest_and_clips(root / "dircache" / "c.h5")
        self.preds.parent.mkdir(parents=True)
        self.cli("predict", self.run, self.clips, "--output", self.preds)
        self._zeros_zip()
        for path in root.rglob("*"):
            if path.is_dir():
                path.chmod(0o755)
            elif path.is_file():
                path.chmod(0o644)
        self.hashes = {p.relative_to(root).as_posix(): file_hash(p, p.stat()) for p in root.rglob("*")
                       if p.is_file() and not p.is_symlink() and "home" not in p.relative_to(root).parts}
        print(f"fixtures ready in {time.monotonic() - started:.1f} s under {root}", flush=True)

    def _manifest_and_clips(self, cache_path: Path) -> None:
        import h5py

        with h5py.File(cache_path, "r") as h5:
            rows = list(zip([x.decode() if isinstance(x, bytes) else x for x in h5["audio_paths"][:]],
                            [x.decode() if isinstance(x, bytes) else x for x in h5["texts"][:]],
                            h5["labels"][:].tolist(),
                            [x.decode() if isinstance(x, bytes) else x for x in h5["speakers"][:]],
                            [x.decode() if isinstance(x, bytes) else x for x in h5["sessions"][:]]))
        classes = ("ang", "hap", "sad", "neu")
        (self.manifest / "wav").mkdir(parents=True)
        taken: dict = {}
        lines = [("path", "text", "label", "speaker", "session")]
        for audio, text, label, speaker, session in rows:
            if taken.get(label, 0) >= 4:
                continue
            taken[label] = taken.get(label, 0) + 1
            name = Path(audio).name
            shutil.copy2(audio, self.manifest / "wav" / name)
            lines.append((f"wav/{name}", text, classes[label], speaker, session))
        with open(self.manifest / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(lines)
        self.clips.mkdir(parents=True)
        for i, (audio, text, *_rest) in enumerate(rows[:4]):
            name = "abcd"[i]
            shutil.copy2(audio, self.clips / f"{name}.wav")
            (self.clips / f"{name}.txt").write_text(text + "\n", encoding="utf-8")

    def _zeros_zip(self) -> None:
        """600 MiB of zeros as a wanted wav member, beside real label files: ~0.6 MB compressed."""
        self.zeros_zip.parent.mkdir(parents=True)
        with zipfile.ZipFile(self.zeros_zip, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            for label in sorted(self.dir.glob("Session1/dialog/EmoEvaluation/*.txt")):
                zf.write(label, "IEMOCAP_full_release/" + label.relative_to(self.dir).as_posix())
            info = zipfile.ZipInfo("IEMOCAP_full_release/Session1/sentences/wav/Ses01F_impro04/"
                                   "Ses01F_impro04_F000.wav")
            info.compress_type = zipfile.ZIP_DEFLATED
            block = bytes(1 << 20)
            with zf.open(info, "w", force_zip64=True) as member:
                for _ in range(600):
                    member.write(block)

    def verify(self) -> list[str]:
        changed = []
        for rel, digest in self.hashes.items():
            path = self.root / rel
            if not path.is_file() or file_hash(path, path.stat()) != digest:
                changed.append(rel)
        return changed


# =============================================================================================== sandbox


class Sandbox:
    def __init__(self, scen_dir: Path, fx: Fixtures):
        self.dir, self.fx = scen_dir, fx
        self.sb, self.out, self.home, self.logs = (scen_dir / n for n in ("sb", "outside", "home", "logs"))
        for d in (self.sb, self.out, self.home, self.logs):
            d.mkdir(parents=True)
        self.home.chmod(0o777)
        self.checks: list[Callable[[], list]] = []   # scenario-level checks, run after the last step
        self.bg: dict = {}
        self.cleanups: list[Callable] = []
        self.notes: list[str] = []
        self.reported_temps: set = set()
        # Decoys every scenario carries: nothing may touch them.
        self.decoy("decoy.txt", b"precious notes\n")
        self.decoy("decoy.h5", b"\x89HDF\r\n\x1a\n not really, but someone's file")
        self.decoy("decoy.csv", b"name,score\nalice,1\n")

    # paths
    def p(self, rel: str) -> Path:
        return self.sb / rel

    def rel(self, path: Path) -> str:
        return os.path.relpath(path, self.sb)

    def decoy(self, rel: str, data: bytes) -> Path:
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    # fixtures
    def copy(self, src: Path, rel: str) -> Path:
        dest = self.p(rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest, symlinks=True)
        else:
            shutil.copy2(src, dest)
        return dest

    def corpus(self, kind: str = "tgz", rel: Optional[str] = None) -> Path:
        src = {"tgz": self.fx.tgz, "zip": self.fx.zip, "dir": self.fx.dir, "big": self.fx.big}[kind]
        default = {"tgz": TGZ, "zip": "IEMOCAP_full_release.zip", "dir": "corpus/IEMOCAP_full_release",
                   "big": TGZ}[kind]
        return self.copy(src, rel or default)

    def cache(self, rel: str = "cache.h5") -> Path:
        return self.copy(self.fx.cache, rel)

    def run(self, rel: str = "run") -> Path:
        """A copy of the trained run; its big text encoder is hard-linked (re-hashed at the end)."""
        dest = self.p(rel)
        big = Path("text_model") / "model.safetensors"

        def copy(src, dst):
            if Path(src) == self.fx.run / big:
                os.link(src, dst)
            else:
                shutil.copy2(src, dst)

        shutil.copytree(self.fx.run, dest, copy_function=copy)
        return dest

    def clips(self, rel: str = "in") -> Path:
        return self.copy(self.fx.clips, rel)

    def manifest(self, rel: str = "m") -> Path:
        return self.copy(self.fx.manifest, rel) / "manifest.csv"

    def setup_cli(self, *args, user: str = "root") -> str:
        """A command the scenario needs done first (not checked as part of the scenario)."""
        result = subprocess.run(command(list(args), user), cwd=self.sb, env=child_env(self.home),
                                capture_output=True, timeout=300)
        if result.returncode != 0:
            raise BuildError(f"setup command `emocli {show(' '.join(map(str, args)), 200)}` exited "
                             f"{result.returncode}: {show(result.stderr.decode(errors='replace').strip()[-300:])}")
        return result.stdout.decode(errors="replace")

    def check(self, fn: Callable[[], list]) -> None:
        self.checks.append(fn)


# =============================================================================================== running


def stderr_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not any(c in line for c in PROGRESS_CHARS)]


PARTIAL_COUNT = re.compile(r"^\d+ of \d+ file\(s\) could not be predicted$")


def judge(step: Step, rc: Optional[int], stdout: str, stderr: str, raw: bytes,
          after_signal: Optional[float] = None, notes: Optional[list] = None) -> tuple[list, int]:
    """Reasons the step's outcome is wrong (empty: fine), and whether a traceback/internal error was seen.
    `after_signal`: seconds from the signal to the exit; `notes` collects accepted oddities."""
    notes = notes if notes is not None else []
    reasons = []
    tracebacks = 0
    if "Traceback (most recent call last)" in stdout + stderr:
        reasons.append("Traceback printed")
        tracebacks = 1
    if "internal error" in stderr:
        reasons.append("internal error")
        tracebacks = 1
    for seq in RAW_CONTROL:
        if seq in raw:
            reasons.append(f"raw control byte {seq!r} reached the terminal output")
            break
    lines = stderr_lines(stderr)
    errors = [line for line in lines if line.startswith("error:")]
    expect = step.expect
    if expect == "either":
        expect = "ok" if rc == 0 else "error"
    if expect == "ok":
        if rc != 0:
            reasons.append(f"exit {rc}, expected 0")
        if errors:
            reasons.append("an error: line on success")
    elif expect == "error":
        if rc != 1:
            reasons.append(f"exit {rc}, expected 1")
        if len(lines) != 1 or not lines[0].startswith("error:"):
            reasons.append(f"stderr is {len(lines)} line(s), expected one `error:` line")
    elif expect == "partial":
        if rc != 1:
            reasons.append(f"exit {rc}, expected 1 (some files skipped)")
        bad = [line for line in lines if not (line.startswith("skipped ") or PARTIAL_COUNT.match(line))]
        if bad:
            reasons.append(f"stderr has lines other than skipped/count: {show(bad[0], 160)}")
        if not any(line.startswith("skipped ") for line in lines):
            reasons.append("no `skipped` line")
    elif expect == "signal":
        signum = step.signal[0] if step.signal else step.send
        name = signal.Signals(signum).name
        if rc == 0 and after_signal is not None and after_signal < 0.05 and not tracebacks:
            # The process had exited (a zombie not yet reaped) when the signal was sent: nothing to judge.
            notes.append(f"{name} landed as the command exited by itself (exit 0 {after_signal:.3f} s later)")
        elif rc == 128 + signum and not lines and step.done_marker and step.done_marker in stdout:
            notes.append(f"{name} arrived after the work was done: exit {rc} without the interrupted line")
        else:
            if rc == 0:
                when = f" {after_signal:.2f} s after it" if after_signal is not None else ""
                reasons.append(f"{name} was ignored: the command went on and exited 0{when}")
            elif rc != 128 + signum:
                reasons.append(f"exit {rc}, expected {128 + signum} after {name}")
            if len(lines) != 1 or "interrupted" not in lines[0]:
                reasons.append(f"stderr is {len(lines)} line(s), expected one `interrupted` line")
    elif expect == "killed":
        if rc != 137:
            reasons.append(f"exit {rc}, expected 137 (kill -9)")
    elif expect == "any_exit":
        pass
    return reasons, tracebacks


def run_step(sb: Sandbox, step: Step, index: int) -> StepResult:
    label = step.label or (step.args[0] if step.args else step.join)
    if step.wait_exists:
        deadline = time.monotonic() + 120
        while not glob.glob(str(sb.dir / step.wait_exists)):
            dead = [k for k, (proc, *_r) in sb.bg.items() if proc.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise BuildError(f"step {label}: {step.wait_exists} never appeared"
                                 + (f" (background {dead[0]} ended first)" if dead else ""))
            time.sleep(0.005)
    if step.join:
        proc, out_path, err_path, started, bstep = sb.bg.pop(step.join)
        signalled_at = None
        if step.send:
            if proc.poll() is None:
                os.kill(proc.pid, step.send)
                signalled_at = time.monotonic()
            else:
                sb.notes.append(f"{step.join} had already finished before signal {step.send}")
        return _finish(sb, bstep if not step.send else dataclasses.replace(bstep, expect=step.expect, send=step.send),
                       proc, out_path, err_path, started, step.timeout, label, signalled_at)
    out_path, err_path = sb.logs / f"{index:02d}-{label}.out", sb.logs / f"{index:02d}-{label}.err"
    env = child_env(sb.home, step.env)
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(command(step.args, step.user), cwd=sb.dir / step.cwd, env=env, stdout=out,
                                stderr=err, stdin=subprocess.PIPE if step.stdin_text else subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=_default_sigint)
    started = time.monotonic()
    if step.stdin_text:
        proc.stdin.write(step.stdin_text.encode())
        proc.stdin.close()
    if step.bg:
        sb.bg[label] = (proc, out_path, err_path, started, step)
        return StepResult(label, step.args, "background", None, "", "", b"", 0.0, [])
    signalled_at = None
    if step.signal:
        signum, trigger, target = step.signal
        deadline = started + 120
        fired = False
        seen_at = None
        while proc.poll() is None and time.monotonic() < deadline:
            now = time.monotonic()
            if trigger[0] == "delay":
                ready = now - started >= trigger[1]
            elif seen_at is None and glob.glob(str(sb.dir / trigger[1])):
                seen_at = now
                ready = len(trigger) < 3 or trigger[2] <= 0
            else:
                ready = seen_at is not None and now - seen_at >= trigger[2]
            if ready:
                if target == "group":
                    os.killpg(proc.pid, signum)
                else:
                    os.kill(proc.pid, signum)
                signalled_at = time.monotonic()
                fired = True
                break
            time.sleep(0.001)
        if not fired:
            proc.wait(timeout=step.timeout)
            raise BuildError(f"step {label}: the command ended (exit {proc.returncode}) before the "
                             f"{signal.Signals(signum).name} trigger {trigger} was seen; timing, not a verdict")
    return _finish(sb, step, proc, out_path, err_path, started, step.timeout, label, signalled_at)


def _finish(sb: Sandbox, step: Step, proc: subprocess.Popen, out_path: Path, err_path: Path, started: float,
            timeout: float, label: str, signalled_at: Optional[float] = None) -> StepResult:
    reasons = []
    try:
        proc.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
        ended_at = time.monotonic()
    except subprocess.TimeoutExpired:
        ended_at = None
        reasons.append(f"timed out after {timeout:.0f} s (hang: {describe_group(proc.pid)})")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    seconds = time.monotonic() - started
    rc = proc.returncode
    if rc is not None and rc < 0:
        rc = 128 - rc
    # Children (feature workers) must not outlive the command.
    deadline = time.monotonic() + 5
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    left = group_alive(proc.pid)
    if left:
        reasons.append(f"{len(left)} child process(es) outlived the command")
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    raw_out, raw_err = out_path.read_bytes(), err_path.read_bytes()
    stdout, stderr = raw_out.decode(errors="replace"), raw_err.decode(errors="replace")
    notes: list = []
    after_signal = ended_at - signalled_at if (signalled_at is not None and ended_at is not None) else None
    more, tracebacks = judge(step, rc, stdout, stderr, raw_out + raw_err, after_signal, notes)
    reasons += more
    result = StepResult(label, step.args, step.expect, rc, stdout, stderr, raw_out + raw_err, seconds, reasons,
                        tracebacks, notes=notes)
    if step.check is not None and not any(r.startswith("timed out") for r in reasons):
        try:
            result.reasons += step.check(sb, result)
        except Exception as exc:  # a check that cannot even read the output says so
            result.reasons.append(f"check failed: {type(exc).__name__}: {show(str(exc), 200)}")
    # Temporaries must be gone once a command has ended (kill -9 aside: the next run cleans up); while another
    # command of the scenario still runs in the background they may be its own, so they are judged at the end.
    busy = any(p.poll() is None for p, *_r in sb.bg.values())
    if not step.temps_ok and not busy:
        temps = [t for t in find_temporaries(sb.dir) if t not in sb.reported_temps]
        sb.reported_temps.update(temps)
        if temps:
            result.reasons.append(f"leftover temporaries: {', '.join(show(t, 120) for t in temps[:4])}")
            result.temps = temps
    # An archive prepared without --keep-audio leaves no unpacked copy.
    if step.args and step.args[0] == "prepare" and rc == 0 and "--keep-audio" not in map(str, step.args):
        copies = extract_copies(sb.dir)
        if copies:
            result.reasons.append(f"unpacked copy left after prepare: {show(copies[0], 120)}")
    return result


@dataclasses.dataclass
class Outcome:
    name: str
    category: str
    expected: str
    status: str          # ok | FAIL | SKIP | BUILD
    reasons: list
    steps: list
    lost: list
    outside: list        # (path, bytes)
    temps: list
    tracebacks: int
    seconds: float
    notes: list


def expected_text(steps: list[Step]) -> str:
    parts = []
    for s in steps:
        if s.bg:
            continue
        e = s.expect
        if e == "signal":
            signum = s.signal[0] if s.signal else s.send
            e = f"{128 + signum}"
        elif e == "killed":
            e = "137"
        elif e == "error":
            e = "error"
        parts.append(e)
    return " → ".join(parts)


def run_scenario(index: int, sc: Scenario, base: Path, fx: Fixtures, nobody_ok: bool) -> Outcome:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", sc.name)[:60]
    scen_dir = base / f"{index:03d}-{slug}"
    force_rmtree(scen_dir)
    scen_dir.mkdir(parents=True)
    scen_dir.chmod(0o755)
    started = time.monotonic()
    sb = Sandbox(scen_dir, fx)
    outcome = Outcome(sc.name, sc.category, "", "ok", [], [], [], [], [], 0, 0.0, sb.notes)
    try:
        if sc.needs == "nobody" and not nobody_ok:
            raise SkipScenario("needs root and setpriv to run as nobody (65534), not available here")
        steps = sc.build(sb)
        outcome.expected = expected_text(steps)
        before = snapshot(scen_dir)
        results = []
        for i, step in enumerate(steps):
            result = run_step(sb, step, i)
            results.append(result)
        for fn in sb.checks:
            extra = fn()
            if extra:
                outcome.reasons += extra
        if not any(s.temps_ok for s in steps[-1:]):
            final_temps = [t for t in find_temporaries(scen_dir) if t not in sb.reported_temps]
            if final_temps:
                outcome.reasons.append(f"leftover temporaries at the end: {', '.join(show(t, 120) for t in final_temps[:4])}")
                outcome.temps += final_temps
    except SkipScenario as why:
        outcome.status, outcome.reasons = "SKIP", [str(why)]
        _cleanup(sb)
        outcome.seconds = time.monotonic() - started
        return outcome
    except BuildError as why:
        outcome.status, outcome.reasons = "BUILD", [str(why)]
        _cleanup(sb)
        outcome.seconds = time.monotonic() - started
        return outcome
    _cleanup(sb)
    after = snapshot(scen_dir)
    for r in results:
        if r.expect == "background":
            continue
        for reason in r.reasons:
            outcome.reasons.append(f"[{r.label}] {reason}")
        outcome.tracebacks += r.tracebacks
        outcome.temps += r.temps
        outcome.notes += [f"[{r.label}] {n}" for n in r.notes]
    outcome.steps = results
    # (c) lost or corrupted
    for rel, entry in before.items():
        if entry[0] == "dir" or matches(rel, sc.owned):
            continue
        now = after.get(rel)
        if now is None:
            outcome.lost.append(f"{rel} (gone)")
        elif now != entry:
            what = "mode" if now[:2] == entry[:2] else "content"
            outcome.lost.append(f"{rel} ({what} changed)")
    # (d) written outside the targets
    allowed = sc.allowed + sc.owned
    for rel, entry in after.items():
        prior = before.get(rel)
        if prior == entry or (prior is not None and entry[0] == "dir"):
            continue
        if matches(rel, allowed) or any(p.search(Path(rel).name) for p in TEMP_PATTERNS):
            continue  # leftover temporaries are counted as such
        outcome.outside.append((rel, entry[3]))
    if outcome.lost:
        outcome.reasons.append(f"files lost or corrupted: {', '.join(show(x, 100) for x in outcome.lost[:4])}")
    if outcome.outside:
        total = sum(n for _, n in outcome.outside)
        outcome.reasons.append(f"{total} bytes written outside the targets: "
                               f"{', '.join(show(x, 100) for x, _ in outcome.outside[:4])}")
    outcome.temps = sorted(set(outcome.temps))
    outcome.status = "FAIL" if outcome.reasons else "ok"
    outcome.seconds = time.monotonic() - started
    return outcome


def _cleanup(sb: Sandbox) -> None:
    for label, (proc, *_rest) in list(sb.bg.items()):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    sb.bg.clear()
    for fn in sb.cleanups:
        try:
            fn()
        except Exception:
            pass


# =============================================================================================== checks used by scenarios


def json_stdout(result: StepResult) -> dict:
    return json.loads(result.stdout.strip().splitlines()[-1])


def read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def exists_check(path: Path, should: bool = True, what: str = "") -> Callable:
    def check(*_a):
        if path.exists() != should:
            return [f"{what or path.name} {'missing' if should else 'exists'}"]
        return []
    return check


def mode_check(path: Path, mode: int) -> Callable:
    def check(*_a):
        if not path.exists():
            return [f"{path.name} missing"]
        got = stat.S_IMODE(path.stat().st_mode)
        return [] if got == mode else [f"{path.name} mode {oct(got)} after rewrite, expected {oct(mode)}"]
    return check


def stdout_has(text: str) -> Callable:
    def check(sb, result):
        return [] if text in result.stdout else [f"stdout lacks {text!r}"]
    return check


def error_mentions(*words: str) -> Callable:
    def check(sb, result):
        lines = [line for line in stderr_lines(result.stderr) if line.startswith("error:")]
        if not lines:
            return []
        missing = [w for w in words if w.lower() not in lines[0].lower()]
        return [f"error line does not mention {missing}: {show(lines[0], 200)}"] if missing else []
    return check


def all_checks(*fns) -> Callable:
    def check(sb, result):
        out = []
        for fn in fns:
            out += fn(sb, result)
        return out
    return check


# =============================================================================================== scenarios

PREP_OUT = ["sb/cache.h5", "sb/cache.h5.lock", "sb/.emocli-work/**"]
EVAL_OUT = ["sb/run/metrics*.json", "sb/run/confusion*.png", "sb/run/training-curves.png"]


def prep(src, cache="cache.h5", *extra) -> list:
    return ["prepare", src, "--cache", cache, *PREP_SMALL, *extra]


# ---------------------------------------------------------------------------------------------- 1: outputs that are inputs


@scenario("prepare --cache is the archive itself", "1-out=in", allowed=["sb/.emocli-work/**"])
def _(sb):
    sb.corpus("tgz")
    return [Step(prep(TGZ, TGZ), "error")]


@scenario("prepare --cache is a manifest CSV", "1-out=in", allowed=["sb/.emocli-work/**", "sb/m/.emocli-work/**"])
def _(sb):
    sb.corpus("tgz")
    manifest = sb.manifest()
    return [Step(prep(TGZ, sb.rel(manifest)), "error")]


@scenario("prepare --cache is an unrelated HDF5", "1-out=in", allowed=["sb/.emocli-work/**"])
def _(sb):
    import h5py
    import numpy as np

    sb.corpus("tgz")
    with h5py.File(sb.p("mine.h5"), "w") as h5:
        h5["measurements"] = np.arange(10)
    return [Step(prep(TGZ, "mine.h5"), "error")]


@scenario("prepare --cache is a symlink to a foreign file", "1-out=in", allowed=["sb/.emocli-work/**"])
def _(sb):
    sb.corpus("tgz")
    os.symlink("../outside/decoy.h5", sb.p("cache.h5"))
    return [Step(prep(TGZ), "error")]


@scenario("prepare --cache is a symlink to an emocli cache elsewhere", "1-out=in", allowed=PREP_OUT)
def _(sb):
    # Refusing, or replacing the link by a real file, are both safe; writing through the link is not.
    sb.corpus("tgz")
    shutil.copy2(sb.fx.cache, sb.out / "their-cache.h5")
    os.symlink("../outside/their-cache.h5", sb.p("cache.h5"))
    return [Step(prep(TGZ), "either")]


@scenario("prepare manifest --cache is the manifest itself", "1-out=in", allowed=["sb/m/.emocli-work/**"])
def _(sb):
    sb.manifest()
    return [Step(prep("m/manifest.csv", "m/manifest.csv"), "error")]


@scenario("prepare folder --cache is the corpus folder", "1-out=in", allowed=["sb/.emocli-work/**",
                                                                                  "sb/corpus/.emocli-work/**"])
def _(sb):
    sb.corpus("dir")
    return [Step(prep("corpus/IEMOCAP_full_release", "corpus/IEMOCAP_full_release"), "error")]


@scenario("predict --output is its --transcripts table", "1-out=in")
def _(sb):
    sb.run()
    sb.clips()
    sb.p("t.csv").write_text("id,text\na,hello there\nb,so angry\n")
    return [Step(["predict", "run", "in", "--transcripts", "t.csv", "--output", "t.csv"], "error")]


@scenario("predict --output over someone's CSV", "1-out=in")
def _(sb):
    sb.run()
    sb.clips()
    sb.p("scores.csv").write_text("name,score\nalice,3\n")
    return [Step(["predict", "run", "in", "--output", "scores.csv"], "error")]


@scenario("predict --output is the input wav", "1-out=in")
def _(sb):
    sb.run()
    sb.clips()
    return [Step(["predict", "run", "in/a.wav", "--text", "hi", "--output", "in/a.wav"], "error")]


@scenario("predict --output over a foreign JSONL", "1-out=in")
def _(sb):
    sb.run()
    sb.clips()
    sb.p("log.jsonl").write_text('{"event": "login", "user": "alice"}\n')
    return [Step(["predict", "run", "in", "--output", "log.jsonl"], "error")]


@scenario("predict --output over an earlier predictions file (control)", "1-out=in", owned=["sb/preds.csv"])
def _(sb):
    sb.run()
    sb.clips()
    shutil.copy2(sb.fx.preds, sb.p("preds.csv"))
    return [Step(["predict", "run", "in", "--output", "preds.csv"], "ok")]


@scenario("prepare --cache over an older emocli cache (control: rebuilt)", "1-out=in", owned=["sb/cache.h5"],
          allowed=PREP_OUT)
def _(sb):
    sb.corpus("dir")
    sb.cache()  # made from another source: a miss, so it is rebuilt
    return [Step(prep("corpus/IEMOCAP_full_release", "cache.h5", "--json"), "ok",
                 check=lambda s, r: [] if not json_stdout(r)["cache_hit"] else ["served a cache of another source"])]


# ---------------------------------------------------------------------------------------------- 2: archive bombs


def _tar_bytes(members: list, gz: bool = True, with_corpus: Optional[Path] = None, evil_first: bool = False) -> bytes:
    """A tar(.gz) holding the small corpus and `members`: (TarInfo, bytes | None)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        def add_evil():
            for info, data in members:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        if evil_first:
            add_evil()
        if with_corpus is not None:
            tar.add(with_corpus, arcname="IEMOCAP_full_release")
        if not evil_first:
            add_evil()
    data = buf.getvalue()
    return gzip.compress(data, compresslevel=1) if gz else data


def _huge_member_tar(name: str, declared: int, actual: int, gz: bool) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = declared
    header = info.tobuf(format=tarfile.GNU_FORMAT)
    body = header + bytes(actual)
    return gzip.compress(body, compresslevel=1) if gz else body


@scenario("zip of zeros (600 MiB wav member in 0.6 MB)", "2-bomb", allowed=PREP_OUT)
def _(sb):
    shutil.copy2(sb.fx.zeros_zip, sb.p("IEMOCAP_full_release.zip"))
    return [Step(prep("IEMOCAP_full_release.zip"), "error", timeout=300)]


@scenario("tar.gz declaring a 3 GiB wav member", "2-bomb", allowed=PREP_OUT)
def _(sb):
    sb.p(TGZ).write_bytes(_huge_member_tar("IEMOCAP_full_release/Session1/sentences/wav/Ses01F_impro04/"
                                           "Ses01F_impro04_F000.wav", 3 << 30, 1 << 16, gz=True))
    return [Step(prep(TGZ), "error")]


@scenario("tar declaring a 40 GiB unwanted member", "2-bomb", allowed=PREP_OUT)
def _(sb):
    sb.p("IEMOCAP_full_release.tar").write_bytes(
        _huge_member_tar("IEMOCAP_full_release/Session1/dialog/avi/DivX/Ses01F_impro04.avi", 40 << 30, 1 << 16,
                         gz=False))
    return [Step(prep("IEMOCAP_full_release.tar"), "error")]


@scenario("tar.gz declaring 1.5 GiB with 1 MiB present", "2-bomb", allowed=PREP_OUT)
def _(sb):
    sb.p(TGZ).write_bytes(_huge_member_tar("IEMOCAP_full_release/Session1/sentences/wav/Ses01F_impro04/"
                                           "Ses01F_impro04_F000.wav", 3 << 29, 1 << 20, gz=True))
    return [Step(prep(TGZ), "error")]


@scenario("tar.gz with a ../ member reaching outside/", "2-bomb", allowed=PREP_OUT)
def _(sb):
    sb.decoy("pwned.txt", b"decoy: must stay as it is\n")
    info = tarfile.TarInfo("../../../outside/pwned.txt")
    payload = b"overwritten by the archive\n"
    info.size = len(payload)
    info2 = tarfile.TarInfo("../../../outside/new-file.txt")
    info2.size = len(payload)
    sb.p(TGZ).write_bytes(_tar_bytes([(info, payload), (info2, payload)], with_corpus=sb.fx.dir))
    return [Step(prep(TGZ), "error")]


@scenario("tar.gz with an absolute member path", "2-bomb", allowed=PREP_OUT)
def _(sb):
    target = sb.decoy("abs.txt", b"decoy\n")
    info = tarfile.TarInfo(str(target))
    info.size = 6
    sb.p(TGZ).write_bytes(_tar_bytes([(info, b"owned\n")], with_corpus=sb.fx.dir, evil_first=True))
    return [Step(prep(TGZ), "error")]


@scenario("tar.gz with a symlink member, then a file through it", "2-bomb", allowed=PREP_OUT)
def _(sb):
    sb.decoy("linked/EmoEvaluation-target.txt", b"decoy\n")
    link = tarfile.TarInfo("IEMOCAP_full_release/Session1/dialog/EmoEvaluation")
    link.type = tarfile.SYMTYPE
    link.linkname = str(sb.out / "linked")
    through = tarfile.TarInfo("IEMOCAP_full_release/Session1/dialog/EmoEvaluation/EmoEvaluation-target.txt")
    through.size = 6
    sb.p(TGZ).write_bytes(_tar_bytes([(link, None), (through, b"owned\n")], with_corpus=None))
    return [Step(prep(TGZ), "error")]


@scenario("tar.gz with a hardlink member to a file outside", "2-bomb", allowed=PREP_OUT)
def _(sb):
    target = sb.decoy("hard.txt", b"decoy\n")
    link = tarfile.TarInfo("IEMOCAP_full_release/Session1/dialog/transcriptions/Ses01F_impro04.txt")
    link.type = tarfile.LNKTYPE
    link.linkname = str(target)
    sb.p(TGZ).write_bytes(_tar_bytes([(link, None)], with_corpus=sb.fx.dir))
    return [Step(prep(TGZ), "error")]


@scenario("zip with a ..\\ (backslash) member", "2-bomb", allowed=PREP_OUT)
def _(sb):
    sb.decoy("zipslip.txt", b"decoy\n")
    shutil.copy2(sb.fx.zip, sb.p("IEMOCAP_full_release.zip"))
    with zipfile.ZipFile(sb.p("IEMOCAP_full_release.zip"), "a") as zf:
        zf.writestr("..\\..\\..\\outside\\zipslip.txt", b"owned\n")
    return [Step(prep("IEMOCAP_full_release.zip"), "error")]


# ---------------------------------------------------------------------------------------------- 4: symlinks at the output


@scenario("predict --output is a symlink to a file outside", "4-symlink-out")
def _(sb):
    sb.run()
    sb.clips()
    shutil.copy2(sb.fx.preds, sb.out / "victim.csv")  # even an emocli-looking file: never written through
    os.symlink("../outside/victim.csv", sb.p("preds.csv"))
    return [Step(["predict", "run", "in", "--output", "preds.csv"], "either")]


@scenario("predict --output is a dangling symlink to outside", "4-symlink-out", allowed=["sb/preds.csv"])
def _(sb):
    sb.run()
    sb.clips()
    os.symlink("../outside/created-through-link.csv", sb.p("preds.csv"))
    sb.check(lambda: ["a file was created through the link"] if (sb.out / "created-through-link.csv").exists()
             else [])
    return [Step(["predict", "run", "in", "--output", "preds.csv"], "either")]


@scenario("prepare --cache is a dangling symlink to outside", "4-symlink-out", allowed=PREP_OUT)
def _(sb):
    sb.corpus("tgz")
    os.symlink("../outside/created-through-link.h5", sb.p("cache.h5"))
    return [Step(prep(TGZ), "either")]


@scenario("eval: run/metrics.json is a symlink to a file outside", "4-symlink-out", allowed=EVAL_OUT, owned=EVAL_OUT)
def _(sb):
    sb.run()
    sb.decoy("victim.json", b'{"mine": true}\n')
    sb.p("run/metrics.json").unlink()
    os.symlink("../../outside/victim.json", sb.p("run/metrics.json"))
    return [Step(["eval", "run"], "either")]


@scenario("train: an unfinished fold's split.json is a symlink to outside", "4-symlink-out", allowed=["sb/run2/**"],
          owned=["sb/run2/**"])
def _(sb):
    # A run being resumed whose split manifest was replaced by a link: it may be read or refused, never written.
    sb.cache()
    sb.setup_cli("train", "cache.h5", "--run", "run2", *TRAIN_SMALL, "--json")
    fold = sb.p("run2/folds/loso-Ses01")
    for name in ("result.json", "model.safetensors", "predictions.jsonl"):
        (fold / name).unlink()  # the fold is unfinished again: the rerun trains it, reading its split
    sb.decoy("split.json", (fold / "split.json").read_bytes())
    (fold / "split.json").unlink()
    os.symlink("../../../../outside/split.json", fold / "split.json")
    return [Step(["train", "cache.h5", "--run", "run2", *TRAIN_SMALL], "either")]


# ---------------------------------------------------------------------------------------------- 5: interrupted first train


def _train_args(run="run2", epochs=1):
    args = ["train", "cache.h5", "--run", run, *TRAIN_SMALL]
    args[args.index("--epochs") + 1] = str(epochs)
    return args


@scenario("kill -9 of a first train as text_model/ appears, rerun", "5-kill9-train", allowed=["sb/run2/**"])
def _(sb):
    sb.cache()
    return [Step(_train_args(), "killed", signal=(signal.SIGKILL, ("exists", "sb/run2/text_model"), "group"),
                 temps_ok=True, label="train-killed"),
            Step(_train_args(), "ok", label="rerun", check=lambda s, r: [] if s.p("run2/config.json").is_file()
                 else ["no config.json after the rerun"])]


@scenario("kill -9 of a first train 2.5 s after start, rerun", "5-kill9-train", allowed=["sb/run2/**"])
def _(sb):
    sb.cache()
    return [Step(_train_args(epochs=4), "killed", signal=(signal.SIGKILL, ("delay", 2.5), "group"), temps_ok=True,
                 label="train-killed"),
            Step(_train_args(epochs=4), "ok", label="rerun")]


@scenario("kill -9 of a first train after its first checkpoint, rerun resumes", "5-kill9-train",
          allowed=["sb/run2/**"])
def _(sb):
    sb.cache()
    return [Step(_train_args(epochs=6), "killed", temps_ok=True, label="train-killed",
                 signal=(signal.SIGKILL, ("exists", "sb/run2/folds/loso-Ses01/checkpoint/checkpoint.safetensors"),
                         "group")),
            Step(_train_args(epochs=6), "ok", label="rerun")]


# ---------------------------------------------------------------------------------------------- 6: label file encodings


def _label_file(sb, session: int) -> Path:
    files = sorted(p for p in sb.p("corpus/IEMOCAP_full_release").glob(f"Session{session}/dialog/EmoEvaluation/*.txt")
                   if not p.name.startswith("._"))
    return files[0]


def _session_count(summary: dict, session: str) -> int:
    return sum(summary.get("per_session", {}).get(session, {}).values())


def _same_counts_as_reference(sb, result) -> list:
    got, ref = json_stdout(result), sb.fx.dir_summary
    if got["per_session"] != ref["per_session"]:
        return [f"per-session counts {got['per_session'].get('Ses01')} differ from the UTF-8 reference "
                f"{ref['per_session'].get('Ses01')}"]
    return []


def _encode_label_file(codec: str, crlf: bool = False):
    def build(sb):
        sb.corpus("dir")
        path = _label_file(sb, 1)
        text = path.read_text(encoding="utf-8")
        if crlf:
            text = text.replace("\n", "\r\n")
        data = {"utf-16": b"\xff\xfe" + text.encode("utf-16-le"), "utf-16-be": b"\xfe\xff" + text.encode("utf-16-be"),
                "utf-8-sig": b"\xef\xbb\xbf" + text.encode("utf-8"), "utf-32": text.encode("utf-32")}[codec]
        path.write_bytes(data)
        return [Step(prep("corpus/IEMOCAP_full_release", "cache.h5", "--json"), "ok",
                     check=_same_counts_as_reference)]
    return build


scenario("UTF-16 LE (BOM) EmoEvaluation file is read", "6-encodings", allowed=PREP_OUT)(_encode_label_file("utf-16"))
scenario("UTF-16 BE (BOM) EmoEvaluation file is read", "6-encodings", allowed=PREP_OUT)(
    _encode_label_file("utf-16-be"))
scenario("UTF-8 BOM + CRLF EmoEvaluation file is read", "6-encodings", allowed=PREP_OUT)(
    _encode_label_file("utf-8-sig", crlf=True))
scenario("UTF-32 (BOM) EmoEvaluation file is read", "6-encodings", allowed=PREP_OUT)(_encode_label_file("utf-32"))


def _empty_label_file(content: bytes):
    def build(sb):
        sb.corpus("dir")
        path = _label_file(sb, 2)
        path.write_bytes(content)

        def reported(s, r):
            got = json_stdout(r)
            out = []
            if _session_count(got, "Ses02") != 0:
                out.append("Ses02 still has utterances although its only label file is empty")
            if not any("label" in k and "without" in k for k in got.get("skipped", {})) \
                    and not any(path.name in p for p in got.get("problems", [])):
                out.append(f"the empty label file is neither counted nor reported (skipped: {got.get('skipped')})")
            return out
        return [Step(prep("corpus/IEMOCAP_full_release", "cache.h5", "--json"), "ok", check=reported)]
    return build


scenario("empty (0-byte) EmoEvaluation file is reported", "6-encodings", allowed=PREP_OUT)(_empty_label_file(b""))
scenario("EmoEvaluation file holding only notes is reported", "6-encodings", allowed=PREP_OUT)(
    _empty_label_file(b"just some notes\nnothing to see\n"))


@scenario("every EmoEvaluation file empty: nothing usable", "6-encodings", allowed=PREP_OUT)
def _(sb):
    sb.corpus("dir")
    for p in sb.p("corpus/IEMOCAP_full_release").glob("Session*/dialog/EmoEvaluation/*.txt"):
        p.write_bytes(b"")
    return [Step(prep("corpus/IEMOCAP_full_release"), "error")]


@scenario("empty label file reported on stderr without --json", "6-encodings", allowed=PREP_OUT)
def _(sb):
    sb.corpus("dir")
    path = _label_file(sb, 2)
    path.write_bytes(b"")
    return [Step(prep("corpus/IEMOCAP_full_release"), "ok",
                 check=lambda s, r: [] if path.name in r.stderr or path.name in r.stdout
                 or "without labels" in r.stdout else ["the empty label file is not named or counted"])]


# ---------------------------------------------------------------------------------------------- 7: CSV formulas


FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _inert_csv(path_rel: str, expect_rows: int):
    def check(sb, result):
        path = sb.p(path_rel)
        if not path.is_file():
            return [f"{path_rel} not written"]
        rows = read_csv(path)
        out = []
        if len(rows) != expect_rows:
            out.append(f"{len(rows)} rows, expected {expect_rows}")
        for row in rows:
            for col in ("id", "file", "text", "label"):
                cell = row.get(col) or ""
                if cell.startswith(FORMULA):
                    out.append(f"cell {col}={show(cell, 60)!s} would run as a formula")
        return out
    return check


@scenario("predict: file names and sidecar transcripts starting = + - @", "7-csv-formula", allowed=["sb/p.csv"])
def _(sb):
    sb.run()
    src = sb.fx.clips
    folder = sb.p("in")
    folder.mkdir()
    names = {"=1+1": '=HYPERLINK("http://evil.example","click")', "+cmd": "+1+2", "-2": "-3+4 said he",
             "@SUM": "@SUM(A1:A9)"}
    for (name, text), clip in zip(names.items(), "abcd"):
        shutil.copy2(src / f"{clip}.wav", folder / f"{name}.wav")
        (folder / f"{name}.txt").write_text(text + "\n")
    return [Step(["predict", "../run", ".", "--output", "../p.csv"], "ok", cwd="sb/in", check=_inert_csv("p.csv", 4))]


@scenario("predict --transcripts with formula texts", "7-csv-formula", allowed=["sb/p.csv"])
def _(sb):
    sb.run()
    sb.clips()
    for t in sb.p("in").glob("*.txt"):
        t.unlink()
    with open(sb.p("t.csv"), "w", newline="") as handle:
        csv.writer(handle).writerows([("id", "text"), ("a", "=cmd|' /C calc'!A0"), ("b", "+SUM(1,2)"),
                                      ("c", "-1+1"), ("d", "@A1")])
    return [Step(["predict", "run", "in", "--transcripts", "t.csv", "--output", "p.csv"], "ok",
                 check=_inert_csv("p.csv", 4))]


@scenario("predict one file --text '=1+2' from its folder", "7-csv-formula", allowed=["sb/p.csv"])
def _(sb):
    sb.run()
    sb.clips()
    shutil.copy2(sb.p("in/a.wav"), sb.p("in/=HYPERLINK(1).wav"))
    return [Step(["predict", "../run", "=HYPERLINK(1).wav", "--text", "=1+2", "--output", "../p.csv"], "ok",
                 cwd="sb/in", check=_inert_csv("p.csv", 1))]


# ---------------------------------------------------------------------------------------------- 8: terminal escapes


ESC_NAMES = ["\x1b[31mred\x1b[0m", "\x1b]52;c;ZXZpbA==\x07clip", "\x1b[2Jclear", "c1\u009b31m"]


@scenario("predict: ANSI escapes in file names and transcripts", "8-ansi", allowed=["sb/p.csv"])
def _(sb):
    sb.run()
    folder = sb.p("in")
    folder.mkdir()
    for name, clip in zip(ESC_NAMES, "abcd"):
        shutil.copy2(sb.fx.clips / f"{clip}.wav", folder / f"{name}.wav")
        (folder / f"{name}.txt").write_text(f"text \x1b[2J\x1b[H with escape {name}\n")
    return [Step(["predict", "run", "in", "--output", "p.csv"], "ok")]


@scenario("predict: ANSI escape in a bad file's name (skipped line)", "8-ansi")
def _(sb):
    sb.run()
    sb.clips()
    sb.p("in/\x1b[2J\x1b]0;pwned\x07bad.wav").write_bytes(b"this is not audio at all")
    return [Step(["predict", "run", "in"], "partial")]


@scenario("prepare manifest: escapes in text, missing path and id", "8-ansi", allowed=["sb/m/cache.h5*",
                                                                                       "sb/m/.emocli-work/**"])
def _(sb):
    manifest = sb.manifest()
    rows = read_csv(manifest)
    rows[0]["text"] = "\x1b[2J\x1b[Hcleared your screen"
    rows.append({**rows[1], "path": "wav/\x1b[31mmissing\x07.wav"})
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return [Step(["prepare", "m/manifest.csv", "--cache", "m/cache.h5", *PREP_SMALL], "ok",
                 check=lambda s, r: [] if "skipped" in r.stderr else ["the missing wav is not reported"])]


@scenario("prepare a missing path whose name holds escapes", "8-ansi")
def _(sb):
    return [Step(["prepare", "no\x1b[2Jsuch\x1b]52;c;eA==\x07.tar.gz", "--cache", "cache.h5"], "error")]


@scenario("predict one file --text with C1 CSI and BEL", "8-ansi")
def _(sb):
    sb.run()
    sb.clips()
    return [Step(["predict", "run", "in/a.wav", "--text", "ring\x07 csi\u009b2J osc\x1b]0;t\x07"], "ok")]


# ---------------------------------------------------------------------------------------------- 9: non-finite options


def _bad_train_option(*extra):
    def build(sb):
        sb.cache()
        return [Step(["train", "cache.h5", "--run", "r", *TRAIN_SMALL, *extra], "error",
                     check=lambda s, r: ([] if not s.p("r").exists() else ["run folder created before refusing"])
                     + _finite_weights("r")(s, r))]
    return build


for _opt in (("--lr", "inf"), ("--gamma", "inf"), ("--lr", "nan"), ("--lr", "-1"), ("--gamma", "nan"),
             ("--dropout", "1.5"), ("--dropout", "nan"), ("--audio-width", "0"), ("--audio-width", "nan"),
             ("--modality-dropout", "nan"), ("--modality-dropout", "2"), ("--weight-decay", "inf"),
             ("--val-fraction", "1.0"), ("--val-fraction", "nan")):
    scenario(f"train {' '.join(_opt)}", "9-nonfinite", allowed=["sb/r/**", "sb/cache.h5.lock"])(
        _bad_train_option(*_opt))


def _finite_weights(run_rel: str) -> Callable:
    """A run that says it trained must hold finite weights (a NaN model would predict one class for everything)."""
    def check(sb, result):
        if result.rc != 0:
            return []
        import numpy as np
        from safetensors.numpy import load_file

        bad = []
        for path in sorted(sb.p(run_rel).glob("folds/*/model.safetensors")):
            tensors = load_file(str(path))
            n = sum(int((~np.isfinite(v)).sum()) for v in tensors.values() if v.dtype.kind == "f")
            if n:
                bad.append(f"{path.parent.name}: {n} non-finite weights")
        return [f"exit 0 but the saved model is not finite ({'; '.join(bad[:2])})"] if bad else []
    return check


@scenario("train --lr 1e30 (finite, explodes in its only epoch)", "9-nonfinite", allowed=["sb/r/**"])
def _(sb):
    sb.cache()
    args = ["train", "cache.h5", "--run", "r", *TRAIN_SMALL]
    return [Step(args + ["--lr", "1e30"], "either", check=_finite_weights("r"))]


# ---------------------------------------------------------------------------------------------- 10: modes kept


@scenario("predict --output chmod 600 is rewritten as 600", "10-mode", owned=["sb/preds.csv"])
def _(sb):
    sb.run()
    sb.clips()
    shutil.copy2(sb.fx.preds, sb.p("preds.csv"))
    sb.p("preds.csv").chmod(0o600)
    before = sb.p("preds.csv").stat().st_mtime_ns
    return [Step(["predict", "run", "in", "--output", "preds.csv"], "ok",
                 check=lambda s, r: mode_check(s.p("preds.csv"), 0o600)()
                 + ([] if s.p("preds.csv").stat().st_mtime_ns != before else ["preds.csv was not rewritten"]))]


@scenario("eval: metrics.json chmod 600 is rewritten as 600", "10-mode", allowed=EVAL_OUT, owned=EVAL_OUT)
def _(sb):
    sb.run()
    sb.p("run/metrics.json").chmod(0o600)
    sb.p("run/confusion.png").chmod(0o640)
    return [Step(["eval", "run"], "ok", check=lambda s, r: mode_check(s.p("run/metrics.json"), 0o600)()
                 + mode_check(s.p("run/confusion.png"), 0o640)())]


@scenario("prepare: a chmod 600 cache is rebuilt as 600", "10-mode", allowed=PREP_OUT, owned=["sb/cache.h5"])
def _(sb):
    sb.corpus("dir")
    sb.cache()
    sb.p("cache.h5").chmod(0o600)
    return [Step(prep("corpus/IEMOCAP_full_release", "cache.h5", "--json"), "ok",
                 check=lambda s, r: mode_check(s.p("cache.h5"), 0o600)())]


# ---------------------------------------------------------------------------------------------- 11: predict input quirks


@scenario("predict DIR with an unreadable subfolder (as nobody)", "11-predict-inputs", needs="nobody",
          allowed=["sb/out/p.csv"])
def _(sb):
    sb.run()
    sb.clips()
    (sb.p("in/locked")).mkdir()
    shutil.copy2(sb.fx.clips / "a.wav", sb.p("in/locked/hidden.wav"))
    sb.p("in/locked").chmod(0o000)
    sb.p("out").mkdir()
    sb.p("out").chmod(0o777)
    sb.cleanups.append(lambda: sb.p("in/locked").chmod(0o755))

    def check(s, r):
        rows = read_csv(s.p("out/p.csv")) if s.p("out/p.csv").is_file() else []
        out = [] if len(rows) == 4 else [f"{len(rows)} predictions written, expected the 4 readable files"]
        if "locked" not in r.stderr:
            out.append("the unreadable folder is not named")
        return out
    return [Step(["predict", "run", "in", "--output", "out/p.csv"], "partial", user="nobody", check=check)]


@scenario("predict DIR with a non-UTF-8 transcript beside a wav", "11-predict-inputs", allowed=["sb/p.csv"])
def _(sb):
    sb.run()
    sb.clips()
    sb.p("in/b.txt").write_bytes("caf\u00e9 cr\u00e8me, tr\u00e8s f\u00e2ch\u00e9".encode("latin-1"))

    def check(s, r):
        rows = read_csv(s.p("p.csv")) if s.p("p.csv").is_file() else []
        ids = sorted(row["id"] for row in rows)
        out = [] if ids == ["a.wav", "c.wav", "d.wav"] else [f"predicted ids {ids}, expected a, c, d"]
        if "b.wav" not in r.stderr:
            out.append("b.wav's transcript problem is not named")
        return out
    return [Step(["predict", "run", "in", "--output", "p.csv"], "partial", check=check)]


def _nfd_case(file_form: str, id_form: str):
    def build(sb):
        sb.run()
        folder = sb.p("in")
        folder.mkdir()
        name = unicodedata.normalize(file_form, "caf\u00e9-\u00e5ngstr\u00f6m")
        shutil.copy2(sb.fx.clips / "a.wav", folder / f"{name}.wav")
        shutil.copy2(sb.fx.clips / "b.wav", folder / "plain.wav")
        table_id = unicodedata.normalize(id_form, "caf\u00e9-\u00e5ngstr\u00f6m")
        with open(sb.p("t.csv"), "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([("id", "text"), (table_id, "I can't believe you did that"),
                                          ("plain", "fine")])

        def check(s, r):
            rows = read_csv(s.p("p.csv")) if s.p("p.csv").is_file() else []
            texts = {unicodedata.normalize("NFC", row["id"]): row["text"] for row in rows}
            want = unicodedata.normalize("NFC", name) + ".wav"
            return [] if texts.get(want) == "I can't believe you did that" else \
                [f"transcript not matched to the {file_form} file name: {texts}"]
        return [Step(["predict", "run", "in", "--transcripts", "t.csv", "--output", "p.csv"], "ok", check=check)]
    return build


scenario("predict: NFD file name, NFC id in --transcripts", "11-predict-inputs", allowed=["sb/p.csv"])(
    _nfd_case("NFD", "NFC"))
scenario("predict: NFC file name, NFD id in --transcripts", "11-predict-inputs", allowed=["sb/p.csv"])(
    _nfd_case("NFC", "NFD"))


@scenario("predict --transcripts table that is not UTF-8", "11-predict-inputs")
def _(sb):
    sb.run()
    sb.clips()
    sb.p("t.csv").write_bytes("id,text\na,caf\u00e9\n".encode("latin-1"))
    return [Step(["predict", "run", "in", "--transcripts", "t.csv"], "error")]


@scenario("predict --transcripts id naming no file", "11-predict-inputs")
def _(sb):
    sb.run()
    sb.clips()
    sb.p("t.csv").write_text("id,text\nnot-there,hello\n")
    return [Step(["predict", "run", "in", "--transcripts", "t.csv"], "error")]


# ---------------------------------------------------------------------------------------------- 12: unpacked copies


@scenario("prepare tar.gz leaves no unpacked copy", "12-extract-left", allowed=PREP_OUT)
def _(sb):
    sb.corpus("tgz")
    return [Step(prep(TGZ), "ok")]


@scenario("prepare zip leaves no unpacked copy", "12-extract-left", allowed=PREP_OUT)
def _(sb):
    sb.corpus("zip")
    return [Step(prep("IEMOCAP_full_release.zip"), "ok")]


@scenario("prepare tar.gz --workdir elsewhere leaves no copy there", "12-extract-left",
          allowed=PREP_OUT + ["sb/wk/**"])
def _(sb):
    sb.corpus("tgz")
    return [Step(prep(TGZ, "cache.h5", "--workdir", "wk"), "ok",
                 check=lambda s, r: [f"left in wk: {[p.name for p in s.p('wk').iterdir()]}"]
                 if s.p("wk").exists() and any(p.is_dir() for p in s.p("wk").iterdir()) else [])]


@scenario("prepare tar.gz --keep-audio keeps its copy (control)", "12-extract-left", allowed=PREP_OUT)
def _(sb):
    sb.corpus("tgz")
    return [Step(prep(TGZ, "cache.h5", "--keep-audio"), "ok",
                 check=lambda s, r: [] if extract_copies(s.dir) else ["--keep-audio kept no copy"])]


@scenario("prepare tar.gz twice (second a cache hit) leaves no copy", "12-extract-left", allowed=PREP_OUT)
def _(sb):
    sb.corpus("tgz")
    return [Step(prep(TGZ), "ok", label="first"),
            Step(prep(TGZ, "cache.h5", "--json"), "ok", label="second",
                 check=lambda s, r: [] if json_stdout(r)["cache_hit"] else ["second run was not a cache hit"])]


# ---------------------------------------------------------------------------------------------- 13: paths, folders, caches


def _ro_setup(sb):
    sb.corpus("tgz")
    sb.p("ro").mkdir()
    sb.p("ro").chmod(0o555)
    sb.p("rw").mkdir()
    sb.p("rw").chmod(0o777)


@scenario("prepare into a read-only cache folder (as nobody)", "13-fs", needs="nobody")
def _(sb):
    _ro_setup(sb)
    return [Step(prep(TGZ, "ro/c.h5"), "error", user="nobody")]


@scenario("prepare with a read-only --workdir (as nobody)", "13-fs", needs="nobody", allowed=["sb/rw/**"])
def _(sb):
    _ro_setup(sb)
    return [Step(prep(TGZ, "rw/c.h5", "--workdir", "ro/w"), "error", user="nobody")]


@scenario("prepare: up-to-date cache in a read-only folder is served (as nobody)", "13-fs", needs="nobody")
def _(sb):
    _ro_setup(sb)
    sb.p("ro").chmod(0o755)
    sb.setup_cli(*prep(TGZ, "ro/c.h5"))
    for p in sb.p("ro").rglob("*"):
        if p.is_dir():
            p.chmod(0o555)
    sb.p("ro").chmod(0o555)
    return [Step(prep(TGZ, "ro/c.h5", "--json"), "ok", user="nobody",
                 check=lambda s, r: [] if json_stdout(r)["cache_hit"] else ["not served as a cache hit"])]


@scenario("train into a read-only folder (as nobody)", "13-fs", needs="nobody")
def _(sb):
    sb.cache()
    sb.p("ro").mkdir()
    sb.p("ro").chmod(0o555)
    return [Step(["train", "cache.h5", "--run", "ro/run", *TRAIN_SMALL], "error", user="nobody")]


@scenario("prepare --cache under a file", "13-fs", allowed=["sb/.emocli-work/**"])
def _(sb):
    sb.corpus("tgz")
    sb.p("a-file").write_text("x")
    return [Step(prep(TGZ, "a-file/c.h5"), "error")]


@scenario("prepare --workdir is a file", "13-fs")
def _(sb):
    sb.corpus("tgz")
    sb.p("a-file").write_text("x")
    return [Step(prep(TGZ, "c.h5", "--workdir", "a-file"), "error")]


@scenario("prepare --max-seconds inf", "13-fs")
def _(sb):
    sb.corpus("tgz")
    return [Step(prep(TGZ, "c.h5", "--max-seconds", "inf"), "error")]


@scenario("prepare --max-seconds nan", "13-fs")
def _(sb):
    sb.corpus("tgz")
    return [Step(prep(TGZ, "c.h5", "--max-seconds", "nan"), "error")]


def _edit_cache(sb, edit: Callable) -> None:
    import h5py

    sb.cache("edited.h5")
    with h5py.File(sb.p("edited.h5"), "a") as h5:
        edit(h5)


def _mel_width(h5):
    import numpy as np

    n = h5["spec"].shape[0]
    del h5["spec"]
    h5.create_dataset("spec", data=np.zeros((n, 80), np.float16))


def _spec_nan(h5):
    import numpy as np

    h5["spec"][:] = np.nan


def _set(name, index, value):
    def edit(h5):
        h5[name][index] = value
    return edit


def _offsets_backwards(h5):
    offsets = h5["spec_offsets"][:]
    offsets[2] = max(0, offsets[1] - 5)
    h5["spec_offsets"][:] = offsets


CACHE_EDITS = [
    ("label 7 (out of range)", _set("labels", 0, 7)),
    ("label -1", _set("labels", 0, -1)),
    ("token id 10**6 (past the vocabulary)", _set("input_ids", (0, 1), 10**6)),
    ("negative token id", _set("input_ids", (0, 1), -5)),
    ("attention mask 3", _set("attention_mask", (0, 0), 3)),
    ("wrong mel width (80 vs 64)", _mel_width),
    ("non-monotonic spec_offsets", _offsets_backwards),
    ("spec_offsets past the end", _set("spec_offsets", 3, 10**9)),
    ("attr inputs deleted", lambda h5: h5.attrs.__delitem__("inputs")),
    ("attr emocli_cache deleted", lambda h5: h5.attrs.__delitem__("emocli_cache")),
    ("attr inputs not JSON", lambda h5: h5.attrs.__setitem__("inputs", "{not json")),
    ("dataset durations deleted", lambda h5: h5.__delitem__("durations")),
    ("dataset labels deleted", lambda h5: h5.__delitem__("labels")),
    ("dataset spec deleted", lambda h5: h5.__delitem__("spec")),
    ("dataset utt_ids deleted", lambda h5: h5.__delitem__("utt_ids")),
]


def _edited_cache_case(edit):
    def build(sb):
        sb.run()
        _edit_cache(sb, edit)
        return [Step(["train", "edited.h5", "--run", "r2", *TRAIN_SMALL], "error", label="train",
                     check=lambda s, r: [] if not s.p("r2").exists() else ["run folder created before refusing"]),
                Step(["eval", "run", "--cache", "edited.h5"], "error", label="eval")]
    return build


for _name, _edit in CACHE_EDITS:
    scenario(f"hand-edited cache: {_name}", "13-cache-edit", allowed=["sb/r2/**", "sb/edited.h5.lock"])(
        _edited_cache_case(_edit))


@scenario("hand-edited cache: NaN spectrograms (train stops, one line)", "13-cache-edit",
          allowed=["sb/r2/**", "sb/edited.h5.lock"])
def _(sb):
    _edit_cache(sb, _spec_nan)
    return [Step(["train", "edited.h5", "--run", "r2", *TRAIN_SMALL, "--modality", "audio"], "error")]


def _damaged_file_case(make: Callable):
    def build(sb):
        sb.run()
        make(sb)
        return [Step(["train", "edited.h5", "--run", "r2", *TRAIN_SMALL], "error", label="train"),
                Step(["eval", "run", "--cache", "edited.h5"], "error", label="eval")]
    return build


def _truncated_cache(sb):
    data = sb.fx.cache.read_bytes()
    sb.p("edited.h5").write_bytes(data[: len(data) // 2])


scenario("cache truncated to half its size", "13-cache-edit", allowed=["sb/r2/**", "sb/edited.h5.lock"])(
    _damaged_file_case(_truncated_cache))
scenario("cache of random bytes", "13-cache-edit", allowed=["sb/r2/**", "sb/edited.h5.lock"])(
    _damaged_file_case(lambda sb: sb.p("edited.h5").write_bytes(random.Random(3).randbytes(50000))))
scenario("cache of zero bytes", "13-cache-edit", allowed=["sb/r2/**", "sb/edited.h5.lock"])(
    _damaged_file_case(lambda sb: sb.p("edited.h5").write_bytes(b"")))


@scenario("eval --cache an unedited copy (control)", "13-cache-edit", allowed=EVAL_OUT)
def _(sb):
    sb.run()
    sb.cache("other.h5")
    return [Step(["eval", "run", "--cache", "other.h5"], "ok")]


# ---------------------------------------------------------------------------------------------- 14: read-only run


@scenario("eval on a read-only run folder (as nobody)", "14-eval-ro", needs="nobody")
def _(sb):
    sb.run()
    return [Step(["eval", "run"], "error", user="nobody", check=stdout_has("mean ± std"))]


# ---------------------------------------------------------------------------------------------- 15: fold names


def _evil_folds(folds: list, cmd: str = "eval"):
    def build(sb):
        sb.run()
        shutil.copytree(sb.fx.run / "folds" / "loso-Ses01", sb.out / "evilfold")  # a convincing fold, outside
        config = json.loads(sb.p("run/config.json").read_text())
        config["folds"] = folds
        sb.p("run/config.json").write_text(json.dumps(config, indent=1))
        args = ["eval", "run"] if cmd == "eval" else ["predict", "run", "in/a.wav", "--text", "hi"]
        if cmd == "predict":
            sb.clips()
        return [Step(args, "error")]
    return build


scenario("config.json fold ../../../outside/evilfold: eval", "15-fold-names", allowed=EVAL_OUT)(
    _evil_folds(["../../../outside/evilfold"]))
scenario("config.json fold /etc: eval", "15-fold-names", allowed=EVAL_OUT)(_evil_folds(["/etc"]))
scenario("config.json fold '..': eval", "15-fold-names", allowed=EVAL_OUT)(_evil_folds([".."]))
scenario("config.json fold absolute path to a copied fold: eval", "15-fold-names", allowed=EVAL_OUT)(
    _evil_folds(["__ABS__"]))
scenario("config.json fold ../../../outside/evilfold: predict", "15-fold-names")(
    _evil_folds(["../../../outside/evilfold"], "predict"))


def _abs_fold_fix():
    # "__ABS__" is replaced by the absolute path of the decoy fold at build time.
    (sc,) = [s for s in SCENARIOS if s.name == "config.json fold absolute path to a copied fold: eval"]
    original = sc.build

    def build(sb):
        steps = original(sb)
        config = json.loads(sb.p("run/config.json").read_text())
        config["folds"] = [str(sb.out / "evilfold")]
        sb.p("run/config.json").write_text(json.dumps(config, indent=1))
        return steps
    sc.build = build


_abs_fold_fix()


# ---------------------------------------------------------------------------------------------- 16: signals


def _signal_prepare(signum, trigger, target):
    def build(sb):
        sb.corpus("big")
        args = prep(TGZ)
        return [Step(args, "signal", signal=(signum, trigger, target), label="interrupted", timeout=45),
                Step(args, "ok", label="rerun",
                     check=lambda s, r: [] if s.p("cache.h5").is_file() else ["no cache after the rerun"])]
    return build


scenario("SIGTERM to prepare while it unpacks, rerun", "16-signals", allowed=PREP_OUT)(
    _signal_prepare(signal.SIGTERM, ("exists", "sb/.emocli-work/extract-*.tmp"), "pid"))
scenario("SIGHUP to prepare's group while features are written, rerun", "16-signals", allowed=PREP_OUT)(
    _signal_prepare(signal.SIGHUP, ("exists", "sb/.cache.h5.tmp-*"), "group"))
scenario("SIGINT (Ctrl-C) to prepare's group while features are written, rerun", "16-signals", allowed=PREP_OUT)(
    _signal_prepare(signal.SIGINT, ("exists", "sb/.cache.h5.tmp-*"), "group"))
scenario("SIGTERM to prepare while features are written, rerun", "16-signals", allowed=PREP_OUT)(
    _signal_prepare(signal.SIGTERM, ("exists", "sb/.cache.h5.tmp-*"), "pid"))


scenario("SIGTERM to prepare 0.3 s into writing features, rerun", "16-signals", allowed=PREP_OUT)(
    _signal_prepare(signal.SIGTERM, ("exists", "sb/.cache.h5.tmp-*", 0.3), "pid"))
scenario("SIGHUP to prepare's group 0.3 s into writing features, rerun", "16-signals", allowed=PREP_OUT)(
    _signal_prepare(signal.SIGHUP, ("exists", "sb/.cache.h5.tmp-*", 0.3), "group"))


def _prepare_sweep(signum, target, offsets, timeout=30.0):
    """The same prepare, signalled at several offsets after its temporary cache appears (each into a cache of its
    own, so every run has work to interrupt): wherever the signal lands, one line, 128 + N, nothing left over."""
    def build(sb):
        sb.corpus("big")
        steps = []
        for i, offset in enumerate(offsets):
            steps.append(Step(prep(TGZ, f"c{i}.h5"), "signal", label=f"at+{offset:.2f}s", done_marker="cache written",
                              signal=(signum, ("exists", f"sb/.c{i}.h5.tmp-*", offset), target), timeout=timeout))
        steps.append(Step(prep(TGZ, "c0.h5"), "ok", label="rerun"))
        return steps
    return build


SWEEP = (0.0, 0.02, 0.06, 0.12, 0.2, 0.28, 0.36, 0.45, 0.55)
scenario("SIGTERM sweep over prepare's feature stage (9 offsets)", "16-signals",
         allowed=["sb/c*.h5", "sb/c*.h5.lock", "sb/.emocli-work/**"])(_prepare_sweep(signal.SIGTERM, "pid", SWEEP))
scenario("SIGINT (Ctrl-C) sweep over prepare's feature stage, to the group (5 offsets)", "16-signals",
         allowed=["sb/c*.h5", "sb/c*.h5.lock", "sb/.emocli-work/**"])(
    _prepare_sweep(signal.SIGINT, "group", (0.0, 0.05, 0.15, 0.3, 0.45)))
scenario("SIGHUP sweep over prepare's feature stage, to the group (4 offsets)", "16-signals",
         allowed=["sb/c*.h5", "sb/c*.h5.lock", "sb/.emocli-work/**"])(
    _prepare_sweep(signal.SIGHUP, "group", (0.0, 0.1, 0.25, 0.4)))


@scenario("SIGTERM sweep over train (6 offsets from start)", "16-signals", allowed=["sb/r*/**"])
def _(sb):
    sb.cache()
    steps = []
    for i, delay in enumerate((1.5, 2.5, 3.5, 4.5, 5.5, 6.5)):
        steps.append(Step(_train_args(f"r{i}", epochs=6), "signal", label=f"at{delay:.1f}s", done_marker="mean ± std",
                          signal=(signal.SIGTERM, ("delay", delay), "pid"), timeout=60))
    steps.append(Step(_train_args("r0", epochs=6), "ok", label="rerun"))
    return steps


@scenario("kill -9 of prepare while features are written, rerun cleans up", "16-signals", allowed=PREP_OUT)
def _(sb):
    sb.corpus("big")
    args = prep(TGZ)
    return [Step(args, "killed", signal=(signal.SIGKILL, ("exists", "sb/.cache.h5.tmp-*"), "group"), temps_ok=True,
                 label="killed"),
            Step(args, "ok", label="rerun")]


def _signal_train(signum, target):
    def build(sb):
        sb.cache()
        args = _train_args(epochs=6)
        return [Step(args, "signal", label="interrupted", timeout=60, signal=(
                    signum, ("exists", "sb/run2/folds/loso-Ses01/checkpoint/checkpoint.safetensors"), target)),
                Step(args, "ok", label="rerun")]
    return build


scenario("SIGTERM to train after its first checkpoint, rerun", "16-signals", allowed=["sb/run2/**"])(
    _signal_train(signal.SIGTERM, "pid"))
scenario("SIGHUP to train's group after its first checkpoint, rerun", "16-signals", allowed=["sb/run2/**"])(
    _signal_train(signal.SIGHUP, "group"))


@scenario("SIGTERM to predict --output of 60 files, 2.5 s after start", "16-signals", allowed=["sb/p.csv"])
def _(sb):
    sb.run()
    sb.clips()
    for i in range(15):
        for clip in "abcd":
            shutil.copy2(sb.p(f"in/{clip}.wav"), sb.p(f"in/{clip}{i:02d}.wav"))
    return [Step(["predict", "run", "in", "--output", "p.csv"], "signal", timeout=60,
                 signal=(signal.SIGTERM, ("delay", 2.5), "pid"))]


@scenario("SIGTERM to eval 1.5 s after start", "16-signals", allowed=EVAL_OUT, owned=EVAL_OUT)
def _(sb):
    sb.run()
    return [Step(["eval", "run"], "signal", signal=(signal.SIGTERM, ("delay", 1.5), "pid"))]


# ---------------------------------------------------------------------------------------------- extras: new users


@scenario("prepare a path that does not exist", "extra")
def _(sb):
    return [Step(prep("IEMOCAP_full_release.tar.gz"), "error")]


@scenario("prepare an empty folder", "extra", allowed=PREP_OUT)
def _(sb):
    sb.p("empty").mkdir()
    return [Step(prep("empty"), "error")]


@scenario("prepare an empty (0-byte) manifest", "extra", allowed=PREP_OUT)
def _(sb):
    sb.p("m.csv").write_bytes(b"")
    return [Step(prep("m.csv"), "error")]


@scenario("prepare a manifest with a header only", "extra", allowed=PREP_OUT)
def _(sb):
    sb.p("m.csv").write_text("path,text,label\n")
    return [Step(prep("m.csv"), "error")]


def _manifest_with(bad_name: Optional[str], data: Optional[bytes], label: str = "ang", only_bad: bool = False,
                   expect: str = "ok", skipped_word: str = ""):
    def build(sb):
        manifest = sb.manifest()
        rows = read_csv(manifest)
        if only_bad:
            rows = []
        if data is not None:
            sb.p(f"m/wav/{bad_name}").write_bytes(data)
        rows.append({"path": f"wav/{bad_name}", "text": "a bad one", "label": label, "speaker": "x",
                     "session": "Ses01"})
        with open(manifest, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["path", "text", "label", "speaker", "session"])
            writer.writeheader()
            writer.writerows(rows)
        args = ["prepare", "m/manifest.csv", "--cache", "cache.h5", *PREP_SMALL] + (["--json"] if expect == "ok" else [])

        def check(s, r):
            got = json_stdout(r)
            if got["utterances"] != 16:
                return [f"{got['utterances']} utterances, expected the 16 good ones"]
            if skipped_word and not any(skipped_word in p for p in got["problems"] + list(got["skipped"])):
                return [f"the bad row is not reported as {skipped_word!r}: {got['skipped']}"]
            return []
        return [Step(args, expect, check=check if expect == "ok" else None)]
    return build


for _title, _args in [
    ("a missing wav", dict(bad_name="gone.wav", data=None, skipped_word="not found")),
    ("a corrupt wav (random bytes)", dict(bad_name="corrupt.wav", data=random.Random(1).randbytes(6000),
                                          skipped_word="corrupt.wav")),
    ("a zero-length wav", dict(bad_name="empty.wav", data=b"", skipped_word="empty")),
    ("a text file renamed .wav", dict(bad_name="notes.wav", data=b"Dear diary, today I renamed a file.\n" * 40,
                                      skipped_word="notes.wav")),
    ("a wav with 0 samples", dict(bad_name="nosamples.wav", data=None, skipped_word="nosamples.wav")),
    ("a float wav of NaN samples", dict(bad_name="nan.wav", data=None, skipped_word="nan.wav")),
    ("an unknown label", dict(bad_name="a.wav", data=None, label="bored", skipped_word="bored")),
]:
    scenario(f"prepare manifest with {_title}", "extra", allowed=["sb/cache.h5*", "sb/.emocli-work/**"])(
        _manifest_with(**_args))


def _fill_special_wavs():
    """The 0-sample and NaN wavs need numpy: filled in lazily by wrapping those two builders."""
    import numpy as np

    for sc in SCENARIOS:
        if sc.name == "prepare manifest with a wav with 0 samples":
            sc.build = _manifest_with("nosamples.wav", wav_pcm16(np.zeros(0, "<i2")), skipped_word="nosamples.wav")
        elif sc.name == "prepare manifest with a float wav of NaN samples":
            sc.build = _manifest_with("nan.wav", wav_float32(np.full(12000, np.nan, "<f4")), skipped_word="nan.wav")
        elif sc.name == "prepare manifest with an unknown label":
            sc.build = _manifest_with("unknown-label.wav", wav_pcm16(tone()), label="bored", skipped_word="bored")


@scenario("prepare manifest whose every wav is missing", "extra", allowed=["sb/cache.h5*", "sb/.emocli-work/**"])
def _(sb):
    sb.p("m").mkdir()
    sb.p("m/manifest.csv").write_text("path,text,label\nx.wav,hello,ang\ny.wav,bye,sad\n")
    return [Step(prep("m/manifest.csv"), "error")]


@scenario("prepare manifest whose every label is unknown", "extra", allowed=["sb/cache.h5*", "sb/.emocli-work/**"])
def _(sb):
    manifest = sb.manifest()
    rows = read_csv(manifest)
    for row in rows:
        row["label"] = "meh"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return [Step(prep("m/manifest.csv"), "error")]


@scenario("prepare --labels 5class", "extra", allowed=PREP_OUT)
def _(sb):
    sb.corpus("tgz")
    return [Step(prep(TGZ, "cache.h5", "--labels", "5class"), "error")]


@scenario("prepare --tags bogus", "extra", allowed=PREP_OUT)
def _(sb):
    sb.corpus("tgz")
    return [Step(prep(TGZ, "cache.h5", "--tags", "bogus"), "error")]


@scenario("prepare --audio-encoder whispr (misspelt)", "extra", allowed=PREP_OUT)
def _(sb):
    sb.corpus("tgz")
    return [Step(prep(TGZ, "cache.h5", "--audio-encoder", "whispr"), "error")]


@scenario("train --audio-encoder alexnett (misspelt)", "extra", allowed=["sb/r/**"])
def _(sb):
    sb.cache()
    return [Step(["train", "cache.h5", "--run", "r", *TRAIN_SMALL, "--audio-encoder", "alexnett"], "error")]


@scenario("train --protocol bogus", "extra", allowed=["sb/r/**"])
def _(sb):
    sb.cache()
    args = ["train", "cache.h5", "--run", "r", *TRAIN_SMALL]
    args[args.index("loso")] = "bogus"
    return [Step(args, "error")]


@scenario("train --modality bogus", "extra", allowed=["sb/r/**"])
def _(sb):
    sb.cache()
    return [Step(["train", "cache.h5", "--run", "r", *TRAIN_SMALL, "--modality", "bogus"], "error")]


@scenario("train --device tpu", "extra", allowed=["sb/r/**"])
def _(sb):
    sb.cache()
    return [Step(["train", "cache.h5", "--run", "r", *TRAIN_SMALL, "--device", "tpu"], "error")]


@scenario("train --epochs 0 (a usage error)", "extra", allowed=["sb/r/**"])
def _(sb):
    sb.cache()
    args = ["train", "cache.h5", "--run", "r", *TRAIN_SMALL]
    args[args.index("--epochs") + 1] = "0"
    return [Step(args, "error")]


@scenario("train a cache that does not exist", "extra", allowed=["sb/r/**"])
def _(sb):
    return [Step(["train", "nope.h5", "--run", "r", *TRAIN_SMALL], "error")]


@scenario("train given the corpus archive as its cache", "extra", allowed=["sb/r/**"])
def _(sb):
    sb.corpus("tgz")
    return [Step(["train", TGZ, "--run", "r", *TRAIN_SMALL], "error")]


@scenario("train --run is a file", "extra")
def _(sb):
    sb.cache()
    sb.p("notes.txt").write_text("my notes\n")
    return [Step(["train", "cache.h5", "--run", "notes.txt", *TRAIN_SMALL], "error")]


@scenario("train --run is someone's folder", "extra")
def _(sb):
    sb.cache()
    sb.p("thesis").mkdir()
    sb.p("thesis/chapter1.tex").write_text("\\chapter{One}\n")
    return [Step(["train", "cache.h5", "--run", "thesis", *TRAIN_SMALL], "error")]


@scenario("train --run an existing run with other settings", "extra")
def _(sb):
    sb.run()
    sb.cache()
    args = ["train", "cache.h5", "--run", "run", *TRAIN_SMALL]
    args[args.index("--epochs") + 1] = "3"
    return [Step(args, "error")]


@scenario("eval a run path that is a file", "extra")
def _(sb):
    sb.p("notes.txt").write_text("x\n")
    return [Step(["eval", "notes.txt"], "error")]


@scenario("eval a path that does not exist", "extra")
def _(sb):
    return [Step(["eval", "no-run"], "error")]


@scenario("eval the parent folder of a run", "extra")
def _(sb):
    sb.run("runs/run")
    return [Step(["eval", "runs"], "error")]


@scenario("compare a run with a non-run", "extra")
def _(sb):
    sb.run()
    sb.p("other").mkdir()
    return [Step(["compare", "run", "other"], "error")]


@scenario("predict with a run path that is a file", "extra")
def _(sb):
    sb.clips()
    sb.p("notes.txt").write_text("x\n")
    return [Step(["predict", "notes.txt", "in"], "error")]


@scenario("predict an input that does not exist", "extra")
def _(sb):
    sb.run()
    return [Step(["predict", "run", "nothing-here.wav"], "error")]


@scenario("predict an empty folder", "extra")
def _(sb):
    sb.run()
    sb.p("empty").mkdir()
    return [Step(["predict", "run", "empty"], "error")]


@scenario("predict a single zero-length wav", "extra")
def _(sb):
    sb.run()
    sb.p("empty.wav").write_bytes(b"")
    return [Step(["predict", "run", "empty.wav", "--text", "hello"], "partial")]


@scenario("predict --text and --transcripts together", "extra")
def _(sb):
    sb.run()
    sb.clips()
    sb.p("t.csv").write_text("id,text\na,hi\n")
    return [Step(["predict", "run", "in/a.wav", "--text", "x", "--transcripts", "t.csv"], "error")]


@scenario("predict --fold that the run does not have", "extra")
def _(sb):
    sb.run()
    sb.clips()
    return [Step(["predict", "run", "in", "--fold", "loso-Ses09"], "error")]


@scenario("predict --output with a .txt name", "extra")
def _(sb):
    sb.run()
    sb.clips()
    return [Step(["predict", "run", "in", "--output", "preds.txt"], "error")]


@scenario("predict --output into a missing folder", "extra")
def _(sb):
    sb.run()
    sb.clips()
    return [Step(["predict", "run", "in", "--output", "no/such/dir/p.csv"], "error")]


@scenario("predict on a run that is mid-training", "extra", allowed=["sb/run2/**"])
def _(sb):
    # Reading an unfinished run: a prediction from a finished fold, or one line saying none is finished.
    sb.cache()
    sb.clips()
    args = _train_args(epochs=40)
    return [Step(args, "any_exit", bg=True, label="train"),
            Step(["predict", "run2", "in"], "either", label="predict",
                 wait_exists="sb/run2/folds/loso-Ses01/checkpoint/checkpoint.safetensors"),
            Step([], "signal", join="train", send=signal.SIGTERM, label="stop-train")]


@scenario("synth OUT is a file", "extra")
def _(sb):
    sb.p("out").write_text("x\n")
    return [Step(["synth", "out", "--per-class", "1"], "error")]


@scenario("prepare a truncated tar.gz", "extra", allowed=PREP_OUT)
def _(sb):
    data = sb.fx.tgz.read_bytes()
    sb.p(TGZ).write_bytes(data[: int(len(data) * 0.6)])
    return [Step(prep(TGZ), "error")]


@scenario("prepare a .tar.gz that is really a zip (control)", "extra", allowed=PREP_OUT)
def _(sb):
    shutil.copy2(sb.fx.zip, sb.p(TGZ))
    return [Step(prep(TGZ), "ok")]


@scenario("prepare a .tar.gz of random bytes", "extra", allowed=PREP_OUT)
def _(sb):
    sb.p(TGZ).write_bytes(random.Random(7).randbytes(100000))
    return [Step(prep(TGZ), "error")]


@scenario("prepare a zip without the IEMOCAP layout", "extra", allowed=PREP_OUT)
def _(sb):
    with zipfile.ZipFile(sb.p("IEMOCAP_full_release.zip"), "w") as zf:
        zf.writestr("holiday/photo.txt", "not a corpus")
    return [Step(prep("IEMOCAP_full_release.zip"), "error")]


@scenario("paths with spaces and unicode: prepare, train, eval, predict", "extra",
          allowed=["sb/out dir é ✓/**", "sb/my corpus ü/.emocli-work/**"])
def _(sb):
    sb.corpus("dir", "my corpus ü/IEMOCAP_full_release")
    shutil.copytree(sb.fx.clips, sb.p("my clips ✓ ü"))
    for p in list(sb.p("my clips ✓ ü").iterdir()):
        p.rename(p.with_name("clip ☺ " + p.name))
    cache = "out dir é ✓/cache ü.h5"
    run = "out dir é ✓/run ☺"
    return [Step(["prepare", "my corpus ü/IEMOCAP_full_release", "--cache", cache, *PREP_SMALL], "ok"),
            Step(["train", cache, "--run", run, *TRAIN_SMALL], "ok"),
            Step(["eval", run], "ok"),
            Step(["predict", run, "my clips ✓ ü", "--output", "out dir é ✓/p ü.csv"], "ok",
                 check=lambda s, r: [] if len(read_csv(s.p("out dir é ✓/p ü.csv"))) == 4 else ["not 4 rows"])]


@scenario("two prepares on one cache at once", "extra", allowed=PREP_OUT)
def _(sb):
    sb.corpus("big")
    return [Step(prep(TGZ), "ok", bg=True, label="first"),
            Step(prep(TGZ), "ok", label="second"),
            Step([], "ok", join="first", label="first")]


@scenario("predict a folder of odd audio (stereo 44.1k, 8k, short, silent, 10 s)", "extra",
          allowed=["sb/p.csv"])
def _(sb):
    import numpy as np

    sb.run()
    folder = sb.p("in")
    folder.mkdir()
    t = np.arange(44100) / 44100
    stereo = (8000 * np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t)], 1)).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(stereo.tobytes())
    (folder / "stereo.wav").write_bytes(buf.getvalue())
    (folder / "eight-k.wav").write_bytes(wav_pcm16(tone(1.0)[::2], rate=8000))
    (folder / "short.wav").write_bytes(wav_pcm16(tone(0.05)))
    (folder / "silent.wav").write_bytes(wav_pcm16(np.zeros(16000, "<i2")))
    (folder / "long.wav").write_bytes(wav_pcm16(np.tile(tone(1.0), 10)))

    def check(s, r):
        rows = read_csv(s.p("p.csv")) if s.p("p.csv").is_file() else []
        ids = sorted(row["id"] for row in rows)
        return [] if ids == ["eight-k.wav", "long.wav", "stereo.wav"] else [f"predicted {ids}"]
    return [Step(["predict", "run", "in", "--output", "p.csv"], "partial", check=check)]


# =============================================================================================== main


def print_table(outcomes: list[Outcome]) -> None:
    w_name = max(len(o.name) for o in outcomes) if outcomes else 10
    w_name = min(w_name, 66)
    header = f"{'#':>3}  {'scenario':<{w_name}}  {'category':<18}  {'expected':<22}  outcome"
    print(header)
    print("-" * len(header))
    for i, o in enumerate(outcomes, 1):
        outcome = "ok" if o.status == "ok" else f"{o.status}: {show('; '.join(o.reasons), 200)}"
        print(f"{i:>3}  {show(o.name, w_name):<{w_name}}  {o.category:<18}  {show(o.expected, 22):<22}  {outcome}")


def totals(outcomes: list[Outcome], fixture_damage: list) -> dict:
    tried = [o for o in outcomes if o.status in ("ok", "FAIL")]
    return {
        "scenarios": len(outcomes),
        "scenarios_tried": len(tried),
        "passed": sum(o.status == "ok" for o in outcomes),
        "failed": sum(o.status == "FAIL" for o in outcomes),
        "could_not_build": sum(o.status == "BUILD" for o in outcomes),
        "skipped": sum(o.status == "SKIP" for o in outcomes),
        "tracebacks_or_internal_errors": sum(o.tracebacks for o in outcomes),
        "files_lost_or_corrupted": sum(len(o.lost) for o in outcomes) + len(fixture_damage),
        "bytes_written_outside_targets": sum(n for o in outcomes for _, n in o.outside),
        "files_written_outside_targets": sum(len(o.outside) for o in outcomes),
        "leftover_temporaries": sum(len(o.temps) for o in outcomes),
        "fixture_files_changed": fixture_damage,
    }


def to_json(outcomes: list[Outcome], tot: dict, base: Path, seconds: float) -> dict:
    def step_json(r: StepResult) -> dict:
        return {"label": r.label, "args": [show(str(a), 200) for a in r.args], "expect": r.expect, "exit": r.rc,
                "seconds": round(r.seconds, 2), "stderr_tail": show(r.stderr.strip()[-1500:], 1500),
                "reasons": r.reasons}

    return {"base": str(base), "seconds": round(seconds, 1), "totals": tot,
            "scenarios": [{"name": o.name, "category": o.category, "expected": o.expected, "status": o.status,
                           "reasons": o.reasons, "lost_or_corrupted": o.lost,
                           "written_outside": [{"path": show(p, 300), "bytes": n} for p, n in o.outside],
                           "leftover_temporaries": o.temps, "tracebacks": o.tracebacks, "notes": o.notes,
                           "seconds": round(o.seconds, 2), "steps": [step_json(r) for r in o.steps]}
                          for o in outcomes]}


def nobody_can_run(base: Path) -> bool:
    if os.geteuid() != 0 or not SETPRIV:
        return False
    probe = subprocess.run([SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", str(VENV_PY), "-c",
                            "import emocli.cli"], capture_output=True, cwd=base)
    return probe.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", nargs="?", type=Path, default=DEFAULT_BASE, help="sandbox base folder")
    parser.add_argument("--json", type=Path, help="write the table and totals as JSON here")
    parser.add_argument("--only", help="run only scenarios whose name matches this regex")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--reuse-fixtures", action="store_true", help="keep BASE/_fixtures from an earlier run")
    parser.add_argument("--keep", action="store_true", help="keep the sandboxes of passing scenarios too")
    opts = parser.parse_args()
    _fill_special_wavs()
    if opts.list:
        for i, sc in enumerate(SCENARIOS, 1):
            print(f"{i:>3}  {sc.category:<18}  {sc.name}")
        return 0
    os.environ["OMP_NUM_THREADS"] = "1"
    base = opts.base.resolve()
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    make_world_traversable(base)
    for old in base.glob("[0-9][0-9][0-9]-*"):
        force_rmtree(old)
    started = time.monotonic()
    fx = Fixtures(base / "_fixtures")
    if opts.reuse_fixtures and (fx.root / "fixtures.json").is_file():
        saved = json.loads((fx.root / "fixtures.json").read_text())
        fx.dir_summary, fx.hashes = saved["dir_summary"], saved["hashes"]
        print(f"reusing fixtures under {fx.root}", flush=True)
    else:
        fx.build()
        (fx.root / "fixtures.json").write_text(json.dumps({"dir_summary": fx.dir_summary, "hashes": fx.hashes}))
    nobody_ok = nobody_can_run(base)
    if not nobody_ok:
        print("note: cannot run as nobody (needs root + setpriv); those scenarios are skipped", flush=True)
    selected = [(i, sc) for i, sc in enumerate(SCENARIOS, 1) if not opts.only or re.search(opts.only, sc.name)]
    outcomes = []
    for i, sc in selected:
        o = run_scenario(i, sc, base, fx, nobody_ok)
        outcomes.append(o)
        flag = "ok  " if o.status == "ok" else o.status
        print(f"[{i:>3}/{len(SCENARIOS)}] {flag:<5} {o.seconds:5.1f}s  {show(sc.name, 80)}"
              + ("" if o.status == "ok" else f"  -- {show('; '.join(o.reasons), 300)}"), flush=True)
        if o.status == "ok" and not opts.keep:
            force_rmtree(base / f"{i:03d}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', sc.name)[:60]}")
    damage = fx.verify()
    seconds = time.monotonic() - started
    print()
    print_table(outcomes)
    tot = totals(outcomes, damage)
    print()
    print(f"scenarios tried:                 {tot['scenarios_tried']} of {tot['scenarios']} "
          f"({tot['passed']} ok, {tot['failed']} FAIL, {tot['could_not_build']} could not be built, "
          f"{tot['skipped']} skipped)")
    print(f"tracebacks / internal errors:    {tot['tracebacks_or_internal_errors']}")
    print(f"files lost or corrupted:         {tot['files_lost_or_corrupted']}")
    print(f"bytes written outside targets:   {tot['bytes_written_outside_targets']} "
          f"({tot['files_written_outside_targets']} file(s))")
    print(f"leftover temporaries:            {tot['leftover_temporaries']}")
    if damage:
        print(f"FIXTURES CHANGED (hard-linked or copied sources written through): {damage}")
    print(f"total time:                      {seconds:.0f} s; sandboxes of failures kept under {base}")
    failed = [o for o in outcomes if o.status in ("FAIL", "BUILD")]
    if failed:
        print("\nfailures in detail:")
        for o in failed:
            print(f"\n* {o.name} [{o.category}] ({o.status})")
            for reason in o.reasons:
                print(f"    - {show(reason, 600)}")
            for r in o.steps:
                if r.reasons:
                    tail = stderr_lines(r.stderr)[-3:]
                    print(f"    step {r.label}: exit {r.rc}; stderr: {show(' | '.join(tail), 600) or '(empty)'}")
    if opts.json:
        opts.json.parent.mkdir(parents=True, exist_ok=True)
        opts.json.write_text(json.dumps(to_json(outcomes, tot, base, seconds), indent=1, ensure_ascii=False))
        print(f"\nwrote {opts.json}")
    return 1 if failed or damage or tot["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
