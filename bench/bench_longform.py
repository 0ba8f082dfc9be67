"""Long recordings on real speech (EmoDB): the timeline's accuracy, and the real-time factor and peak memory of
`emocli predict` on 10-minute and 1-hour recordings, beside the recogniser alone (faster-whisper with its own VAD).

    python bench/bench_longform.py --work /tmp/longform [--minutes 10 60] [--emodb ../shared/data/emodb]

1. A fused model (Whisper tiny.en head + MiniLM, the issue-12 recipe) is trained leave-one-session-out on EmoDB's
   4-class manifest (reused when --work already holds it).
2. Timeline: for each session S, its utterances are joined into one recording in four emotion blocks (0.4-1.2 s
   pauses between utterances); `emocli predict --fold loso-S` (a model that never heard S's speakers) labels it. The
   score is the share of the speech time whose predicted label is the true one (predicted segments overlapped with
   the true utterance spans), beside the same model on the separate utterance files (time-weighted accuracy).
3. Speed: 10-minute and 1-hour recordings (EmoDB utterances cycled, 0.3-1.5 s pauses) through `emocli predict`
   (VAD, recognition of every utterance, classification), timed with /usr/bin/time on this machine's cores; beside
   faster-whisper transcribing the same file with its VAD filter (tiny.en int8, the same weights).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16_000
REPO = Path(__file__).resolve().parent.parent
EMOCLI = [sys.executable, "-m", "emocli"]
CLASSES = ("angry", "happy", "sad", "neutral")


def run(cmd: list, **kw) -> subprocess.CompletedProcess:
    print("$", " ".join(map(str, cmd)), flush=True)
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if result.returncode not in (0, 1):
        print(result.stdout[-3000:], result.stderr[-3000:])
        raise SystemExit(f"failed: {cmd}")
    return result


def timed(cmd: list) -> tuple[float, int, subprocess.CompletedProcess]:
    """(wall seconds, peak RSS in MB of the command) via GNU time."""
    started = time.perf_counter()
    result = run(["/usr/bin/time", "-f", "MAXRSS %M", *cmd])
    wall = time.perf_counter() - started
    rss = int([line for line in result.stderr.splitlines() if line.startswith("MAXRSS")][-1].split()[1]) // 1024
    return wall, rss, result


def rows_of(manifest: Path) -> list[dict]:
    with open(manifest, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def train(work: Path, emodb: Path) -> Path:
    cache, run_dir = work / "cache.h5", work / "run"
    if (run_dir / "summary.json").is_file():
        return run_dir
    run([*EMOCLI, "prepare", emodb / "manifest-4class.csv", "--cache", cache, "--audio-encoder", "whisper"])
    run([*EMOCLI, "train", cache, "--run", run_dir, "--protocol", "loso", "--freeze-text", "--class-weighted",
         "--audio-encoder", "whisper", "--epochs", "30", "--lr", "1e-3", "--step-size", "22", "--weight-decay",
         "1e-4"])
    return run_dir


def join(paths: list[Path], gaps: tuple[float, float], rng: np.random.Generator, out: Path,
         total_s: float | None = None) -> list[tuple[float, float, Path]]:
    """Write the utterances one after another (cycled until `total_s` if given) with random pauses; their spans."""
    spans, at, k = [], 0.0, 0
    with sf.SoundFile(out, "w", RATE, 1, subtype="PCM_16") as handle:
        while True:
            path = paths[k % len(paths)]
            k += 1
            pause = np.zeros(int(rng.uniform(*gaps) * RATE), np.float32)
            audio, rate = sf.read(path, dtype="float32")
            if rate != RATE:
                import soxr

                audio = soxr.resample(audio, rate, RATE).astype(np.float32)
            handle.write(pause)
            at += pause.size / RATE
            handle.write(audio)
            spans.append((at, at + audio.size / RATE, path))
            at += audio.size / RATE
            if (total_s is None and k == len(paths)) or (total_s is not None and at >= total_s):
                break
        handle.write(np.zeros(RATE // 2, np.float32))
    return spans


def correct_share(rows: list[dict], truth: list[tuple[float, float, str]]) -> float:
    """Share of the true speech time covered by a predicted segment with the true label."""
    right = 0.0
    for start, end, label in truth:
        for r in rows:
            overlap = min(end, float(r["end"])) - max(start, float(r["start"]))
            if overlap > 0 and r["label"] == label:
                right += overlap
    return right / sum(end - start for start, end, _ in truth)


def timeline(work: Path, emodb: Path, run_dir: Path) -> dict:
    rng = np.random.default_rng(0)
    rows = rows_of(emodb / "manifest-4class.csv")
    config = json.loads((run_dir / "config.json").read_text())
    shares, whole_files = [], []
    for fold in config["folds"]:
        session = fold.removeprefix("loso-")
        mine = [r for r in rows if r["session"] == session]
        ordered = [r for c in rng.permutation(CLASSES) for r in mine if r["label"] == c]  # four emotion blocks
        recording = work / f"session{session}.wav"
        spans = join([emodb / r["path"] for r in ordered], (0.4, 1.2), rng, recording)
        truth = [(s, e, r["label"]) for (s, e, _), r in zip(spans, ordered)]
        out = work / f"timeline-{session}.csv"
        run([*EMOCLI, "predict", run_dir, recording, "--fold", fold, "--asr", "off", "--output", out,
             "--plot", work / "plots", "--show", "0"])
        predicted = rows_of(out)
        shares.append(correct_share(predicted, truth))
        # the same model on the separate files, weighted by duration
        folder = work / f"files-{session}"
        folder.mkdir(exist_ok=True)
        for r in ordered:
            link = folder / Path(r["path"]).name
            if not link.exists():
                link.symlink_to((emodb / r["path"]).resolve())
        out = work / f"files-{session}.csv"
        run([*EMOCLI, "predict", run_dir, folder, "--fold", fold, "--asr", "off", "--output", out, "--show", "0"])
        by_name = {Path(p["file"]).name: p["label"] for p in rows_of(out)}
        durations = {Path(r["path"]).name: e - s for (s, e, _), r in zip(spans, ordered)}
        whole_files.append(sum(d for n, d in durations.items()
                               if by_name.get(n) == next(r["label"] for r in ordered
                                                         if Path(r["path"]).name == n)) / sum(durations.values()))
        print(f"session {session}: {len(ordered)} utterances, {spans[-1][1]:.0f} s; timeline {100 * shares[-1]:.1f} % "
              f"of speech time right; separate files {100 * whole_files[-1]:.1f} %", flush=True)
    return {"timeline": (float(np.mean(shares)), float(np.std(shares))),
            "files": (float(np.mean(whole_files)), float(np.std(whole_files)))}


FASTER_WHISPER_ALONE = """
import sys, time
from emocli.encoders.whisper import packaged_entry, packaged_folder
from faster_whisper import WhisperModel
model = WhisperModel(str(packaged_folder(packaged_entry("whisper"))), device="cpu", compute_type="int8", cpu_threads=2)
segments, info = model.transcribe(sys.argv[1], language="en", beam_size=1, temperature=0.0, vad_filter=True,
                                  condition_on_previous_text=False, without_timestamps=True)
print(sum(1 for _ in segments), "segments")
"""


def speed(work: Path, emodb: Path, run_dir: Path, minutes: list[int]) -> list[dict]:
    rng = np.random.default_rng(1)
    paths = [emodb / r["path"] for r in rows_of(emodb / "manifest-all.csv")]
    results = []
    for m in minutes:
        recording = work / f"long-{m}min.wav"
        if not recording.exists():
            join(paths, (0.3, 1.5), rng, recording, total_s=60.0 * m)
        seconds = sf.info(recording).duration
        wall, rss, result = timed([*EMOCLI, "predict", run_dir, recording, "--output", work / f"long-{m}min.csv",
                                   "--show", "0"])
        rows = rows_of(work / f"long-{m}min.csv")
        alone_wall, alone_rss, _ = timed([sys.executable, "-c", FASTER_WHISPER_ALONE, recording])
        results.append({"minutes": m, "audio_s": seconds, "segments": len(rows), "wall_s": wall, "rtf": seconds / wall,
                        "peak_rss_mb": rss, "asr_alone_wall_s": alone_wall, "asr_alone_rtf": seconds / alone_wall,
                        "asr_alone_peak_rss_mb": alone_rss})
        print(json.dumps(results[-1]), flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, default=Path("/tmp/longform"))
    parser.add_argument("--emodb", type=Path, default=REPO.parent / "shared" / "data" / "emodb")
    parser.add_argument("--minutes", type=int, nargs="*", default=[10, 60])
    parser.add_argument("--skip-timeline", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
    run_dir = train(args.work, args.emodb)
    report = {"cores": len(os.sched_getaffinity(0))}
    if not args.skip_timeline:
        report["timeline"] = timeline(args.work, args.emodb, run_dir)
        t, f = report["timeline"]["timeline"], report["timeline"]["files"]
        print(f"timeline: {100 * t[0]:.1f} ± {100 * t[1]:.1f} % of speech time labelled right (5 sessions, LOSO); "
              f"separate files {100 * f[0]:.1f} ± {100 * f[1]:.1f} %")
    report["speed"] = speed(args.work, args.emodb, run_dir, args.minutes)
    (args.work / "report.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
