"""Benchmark `emocli prepare` against a plain serial librosa loop and the soundfile decode floor.

Run: .venv/bin/python bench/bench_prepare.py [--wavs 1000 4000 10000] [--mean-seconds 4.5] [--repeats 3]
Corpora are IEMOCAP-shaped: mean utterance 4.5 s, and 55 % of the wavs in the 4 classes (IEMOCAP: 5,531 of
10,039), so `--wavs 10000` is an IEMOCAP-sized archive (~10k wavs, ~12 h) of which ~5.5k utterances are kept.
Each size: generate the corpus, then in the same run measure
  (a) serial `librosa.load` + `librosa.feature.melspectrogram` over every kept utterance's wav (the baseline),
  (b) soundfile decoding alone of the same wavs (the floor no feature extractor can beat),
  (c) `emocli prepare` from the .tar.gz (cold: unpack + features + tokenise + write), in a fresh process,
  (d) `emocli prepare` from the extracted folder, i.e. from the very files (a) reads, in a fresh process,
  (e) the command again (cache hit), wall time of the whole process,
  (f) peak RSS (VmHWM) of the prepare process and, separately, of its worker processes (sampled every 50 ms).
Machines here are noisy: the ratios to (a) matter, not the absolute times. Each of (a)-(d) is the best of
`--repeats` runs (default 3), the methods interleaved; every run's time is kept in the JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EMOCLI = [sys.executable, "-m", "emocli"]

KEPT_SHARE = 5531 / 10039  # IEMOCAP's 4-class utterances among all its wavs
_CHILD = r"""
import json, os, sys, threading, time
from pathlib import Path
t0 = time.perf_counter()

def hwm_mb(pid):
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(l for l in status if l.startswith("VmHWM")).split()[1]) / 1024

seen = {}  # pid -> (samples, latest high-water mark)
def sample_workers():  # every 50 ms, the high-water mark of each live child
    while True:
        for children in Path("/proc/self/task").glob("*/children"):
            for pid in children.read_text().split():
                try:
                    seen[pid] = (seen.get(pid, (0, 0.0))[0] + 1, hwm_mb(pid))
                except (OSError, StopIteration):
                    pass
        time.sleep(0.05)

threading.Thread(target=sample_workers, daemon=True).start()
from emocli.prepare import prepare, PrepareConfig
r = prepare(Path(sys.argv[1]), Path(sys.argv[2]), PrepareConfig())
# VmHWM, not ru_maxrss: Linux carries the parent's RSS at fork or exec into a child's ru_maxrss, so any child
# forked late (the benchmark's own, or a `uname` a library runs) reported the main process's peak as a worker's.
# For the same reason only children seen for 150 ms or more count: a `uname` caught between its fork and its
# exec has the parent's high-water mark; the pool's workers live for the whole run.
workers = [mb for samples, mb in seen.values() if samples >= 3]
print(json.dumps({"seconds": time.perf_counter() - t0, "hit": r.cache_hit, "n": r.summary["utterances"],
                  "self_rss_mb": hwm_mb("self"), "workers_rss_mb": max(workers, default=0.0)}))
"""


def cold_prepare(source: Path, cache_path: Path) -> dict:
    cache_path.unlink(missing_ok=True)
    return json.loads(subprocess.run([sys.executable, "-c", _CHILD, str(source), str(cache_path)], check=True,
                                     capture_output=True, text=True, cwd=ROOT).stdout)


def serial_librosa(wavs: list[Path]) -> float:
    import librosa

    def log_mel(wav: Path) -> None:
        y, sr = librosa.load(wav, sr=16_000)
        librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, n_fft=512, hop_length=160, win_length=400,
                                                           n_mels=128, fmax=8_000), ref=1.0)

    log_mel(wavs[0])  # librosa's lazy imports and caches are paid once, outside the timing: a fair baseline
    started = time.perf_counter()
    for wav in wavs:
        log_mel(wav)
    return time.perf_counter() - started


def decode_floor(wavs: list[Path]) -> tuple[float, float]:
    import soundfile as sf

    sf.read(wavs[0], dtype="float32")
    started = time.perf_counter()
    seconds = 0.0
    for wav in wavs:
        audio, rate = sf.read(wav, dtype="float32")
        seconds += len(audio) / rate
    return time.perf_counter() - started, seconds


def run_size(n_wavs: int, mean_seconds: float, work: Path, repeats: int = 1) -> dict:
    import shutil

    from emocli.synth import SynthConfig, synthesize

    per_class = round(n_wavs * KEPT_SHARE / 4)
    corpus = work / f"corpus-{n_wavs}"
    cache_path = work / f"cache-{n_wavs}.h5"
    t0 = time.perf_counter()
    truth = synthesize(corpus, SynthConfig(per_class=per_class, seed=1, mean_seconds=mean_seconds,
                                           dropped_fraction=1 / KEPT_SHARE - 1))
    synth_s = time.perf_counter() - t0

    from emocli import cache as cache_mod

    # Best of `repeats` for each timed method, the methods interleaved, so that a burst of noise on a shared
    # machine does not land on one method only.
    colds, folders, floors, serials = [], [], [], []
    for _ in range(repeats):
        shutil.rmtree(work / ".emocli-work", ignore_errors=True)
        colds.append(cold_prepare(truth.archive, cache_path))
        extracted = next((work / ".emocli-work").glob("extract-*/IEMOCAP_full_release"))
        folders.append(cold_prepare(extracted, work / f"cache-{n_wavs}-folder.h5"))
        wavs = [Path(p) for p in cache_mod.read_cache(cache_path).audio_paths]  # the files prepare turned into features
        floors.append(decode_floor(wavs))
        serials.append(serial_librosa(wavs))
    cold = min(colds, key=lambda r: r["seconds"])
    folder = min(folders, key=lambda r: r["seconds"])
    floor_s, audio_s = min(floors)
    serial_s = min(serials)
    t0 = time.perf_counter()
    subprocess.run(EMOCLI + ["prepare", str(truth.archive), "--cache", str(cache_path), "--json"], check=True,
                   capture_output=True, cwd=ROOT)
    cached_s = time.perf_counter() - t0
    n = len(wavs)
    # Each round's own ratio too: its serial loop and its prepare ran seconds apart, so a slow spell of this
    # shared machine that lands on one method only (and survives a best-of) shows as one odd round.
    folder_rounds = [s / f["seconds"] for s, f in zip(serials, folders)]
    archive_rounds = [s / c["seconds"] for s, c in zip(serials, colds)]
    return {
        "wavs_in_archive": len(truth.codes), "utterances": n, "audio_hours": audio_s / 3600, "synth_s": synth_s,
        "archive_mb": truth.archive.stat().st_size / 2**20,
        "serial_librosa_s": serial_s, "serial_utt_per_s": n / serial_s, "serial_audio_s_per_s": audio_s / serial_s,
        "decode_floor_s": floor_s, "decode_utt_per_s": n / floor_s,
        "prepare_archive_s": cold["seconds"], "prepare_archive_utt_per_s": n / cold["seconds"],
        "prepare_archive_audio_s_per_s": audio_s / cold["seconds"], "archive_x_serial": serial_s / cold["seconds"],
        "prepare_folder_s": folder["seconds"], "prepare_folder_utt_per_s": n / folder["seconds"],
        "prepare_folder_audio_s_per_s": audio_s / folder["seconds"], "folder_x_serial": serial_s / folder["seconds"],
        "folder_x_serial_per_round": folder_rounds, "folder_x_serial_median_round": float(np.median(folder_rounds)),
        "archive_x_serial_per_round": archive_rounds, "archive_x_serial_median_round": float(np.median(archive_rounds)),
        "repeats": repeats, "prepare_archive_all_s": [r["seconds"] for r in colds],
        "prepare_folder_all_s": [r["seconds"] for r in folders], "serial_librosa_all_s": serials,
        "cached_rerun_s": cached_s,
        "peak_rss_main_mb": max(r["self_rss_mb"] for r in colds + folders),
        "peak_rss_worker_mb": max(r["workers_rss_mb"] for r in colds + folders),
        "cache_mb": cache_path.stat().st_size / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wavs", type=int, nargs="+", default=[1000, 4000, 10000])
    parser.add_argument("--mean-seconds", type=float, default=4.5)
    parser.add_argument("--repeats", type=int, default=3, help="best of N for each timed method (noisy machines)")
    # Outside the checkout by default: on the project's VM something watches the checkout, and every file
    # created under it costs 0.3 ms instead of 0.03 (3 s of unpacking 10k wavs that no user pays).
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "emocli-bench-prepare")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "prepare.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = [run_size(n, args.mean_seconds, args.work, args.repeats) for n in args.wavs]
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"prepare on {platform.node()} ({len(__import__('os').sched_getaffinity(0))} cores)")
    for col in ("wavs", "kept utts", "audio h", "serial utt/s", "decode utt/s", "archive utt/s", "x serial",
                "(median round)", "folder utt/s", "x serial", "(median round)", "cached s", "RSS main MB",
                "RSS worker MB"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["wavs_in_archive"]), str(r["utterances"]), f"{r['audio_hours']:.2f}",
                      f"{r['serial_utt_per_s']:.0f}", f"{r['decode_utt_per_s']:.0f}",
                      f"{r['prepare_archive_utt_per_s']:.0f}", f"{r['archive_x_serial']:.2f}",
                      f"{r['archive_x_serial_median_round']:.2f}",
                      f"{r['prepare_folder_utt_per_s']:.0f}", f"{r['folder_x_serial']:.2f}",
                      f"{r['folder_x_serial_median_round']:.2f}",
                      f"{r['cached_rerun_s']:.2f}", f"{r['peak_rss_main_mb']:.0f}", f"{r['peak_rss_worker_mb']:.0f}")
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
                                    "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
