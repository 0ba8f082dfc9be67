"""Benchmark `emocli prepare` against a plain serial librosa loop and the soundfile decode floor.

Run: .venv/bin/python bench/bench_prepare.py [--per-class 500 1000] [--mean-seconds 2.5]
Each size: generate an IEMOCAP-format corpus, then in the same run measure
  (a) serial `librosa.load` + `librosa.feature.melspectrogram` over every utterance wav (the baseline),
  (b) soundfile decoding alone (the floor no feature extractor can beat),
  (c) `emocli prepare` from the .tar.gz (cold: unpack + features + tokenise + write), in a fresh process,
  (d) the same command again (cache hit), wall time of the whole process,
  (e) peak RSS of the prepare process and, separately, of its worker processes.
Machines here are noisy: the ratios (c)/(a) matter, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
EMOCLI = [sys.executable, "-m", "emocli"]

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
t0 = time.perf_counter()
from emocli.prepare import prepare, PrepareConfig
r = prepare(Path(sys.argv[1]), Path(sys.argv[2]), PrepareConfig())
print(json.dumps({"seconds": time.perf_counter() - t0, "hit": r.cache_hit, "n": r.summary["utterances"],
                  "self_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "workers_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def serial_librosa(wavs: list[Path]) -> float:
    import librosa

    started = time.perf_counter()
    for wav in wavs:
        y, sr = librosa.load(wav, sr=16_000)
        librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=sr, n_fft=512, hop_length=160, win_length=400,
                                                           n_mels=128, fmax=8_000), ref=1.0)
    return time.perf_counter() - started


def decode_floor(wavs: list[Path]) -> tuple[float, float]:
    import soundfile as sf

    started = time.perf_counter()
    seconds = 0.0
    for wav in wavs:
        audio, rate = sf.read(wav, dtype="float32")
        seconds += len(audio) / rate
    return time.perf_counter() - started, seconds


def run_size(per_class: int, mean_seconds: float, work: Path) -> dict:
    from emocli.synth import SynthConfig, synthesize

    corpus = work / f"corpus-{per_class}"
    cache_path = work / f"cache-{per_class}.h5"
    cache_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    truth = synthesize(corpus, SynthConfig(per_class=per_class, seed=1, mean_seconds=mean_seconds))
    synth_s = time.perf_counter() - t0

    cold = json.loads(subprocess.run([sys.executable, "-c", _CHILD, str(truth.archive), str(cache_path)],
                                     check=True, capture_output=True, text=True, cwd=ROOT).stdout)
    t0 = time.perf_counter()
    subprocess.run(EMOCLI + ["prepare", str(truth.archive), "--cache", str(cache_path), "--json"], check=True,
                   capture_output=True, cwd=ROOT)
    cached_s = time.perf_counter() - t0

    wavs = sorted((work / ".emocli-work").glob(f"extract-*/**/sentences/wav/*/*.wav"))
    wavs = [w for w in wavs if not w.name.startswith("._")]
    from emocli import cache as cache_mod

    kept = set(cache_mod.read_cache(cache_path).audio_paths)
    wavs = [w for w in wavs if str(w) in kept]  # the same files prepare turned into features
    floor_s, audio_s = decode_floor(wavs)
    serial_s = serial_librosa(wavs)
    n = len(wavs)
    return {
        "per_class": per_class, "utterances": n, "audio_hours": audio_s / 3600, "synth_s": synth_s,
        "serial_librosa_s": serial_s, "serial_utt_per_s": n / serial_s, "serial_audio_s_per_s": audio_s / serial_s,
        "decode_floor_s": floor_s, "decode_utt_per_s": n / floor_s,
        "prepare_cold_s": cold["seconds"], "prepare_utt_per_s": n / cold["seconds"],
        "prepare_audio_s_per_s": audio_s / cold["seconds"], "speedup_vs_serial": serial_s / cold["seconds"],
        "cached_rerun_s": cached_s, "peak_rss_main_mb": cold["self_rss_mb"], "peak_rss_worker_mb": cold["workers_rss_mb"],
        "cache_mb": cache_path.stat().st_size / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, nargs="+", default=[500])
    parser.add_argument("--mean-seconds", type=float, default=2.5)
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "bench-prepare")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "prepare.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    rows = [run_size(n, args.mean_seconds, args.work) for n in args.per_class]
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"prepare on {platform.node()} ({len(__import__('os').sched_getaffinity(0))} cores)")
    for col in ("utts", "audio h", "serial utt/s", "decode utt/s", "prepare utt/s", "prepare audio-s/s", "x serial",
                "cached s", "RSS main MB", "RSS worker MB"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["utterances"]), f"{r['audio_hours']:.2f}", f"{r['serial_utt_per_s']:.0f}",
                      f"{r['decode_utt_per_s']:.0f}", f"{r['prepare_utt_per_s']:.0f}", f"{r['prepare_audio_s_per_s']:.0f}",
                      f"{r['speedup_vs_serial']:.2f}", f"{r['cached_rerun_s']:.2f}", f"{r['peak_rss_main_mb']:.0f}",
                      f"{r['peak_rss_worker_mb']:.0f}")
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
                                    "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
