"""The embedding stage's speed beside its baseline from the same run: prepare's log-mel path over the same files.

    python bench/bench_embed.py [MANIFEST] [--encoders whisper whisper-base] [--compute-types int8 float32]

For each encoder and compute type: utterances/s and audio-seconds/s of `ensure_stage` (decode + encode + write),
the extrapolation to IEMOCAP's ~7 h of kept audio, and the log-mel cache build over the same files. Caches and
stages go to a temporary folder; the manifest is only read.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

IEMOCAP_KEPT_SECONDS = 7 * 3600  # ~7 h of 4-class audio at max_seconds 15


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("manifest", nargs="?", default="../shared/data/emodb/manifest-4class.csv")
    parser.add_argument("--encoders", nargs="+", default=["whisper", "whisper-base"])
    parser.add_argument("--compute-types", nargs="+", default=["int8", "float32"])
    args = parser.parse_args()

    from emocli import cache
    from emocli.embed import ensure_stage
    from emocli.encoders import audio_branch
    from emocli.prepare import PrepareConfig, prepare

    with tempfile.TemporaryDirectory() as tmp:
        cache_path = Path(tmp) / "cache.h5"
        started = time.perf_counter()
        prepare(Path(args.manifest), cache_path, PrepareConfig())
        logmel = time.perf_counter() - started
        data = cache.read_cache(cache_path)
        n, seconds = len(data), float(data.durations.sum())
        print(f"{n} utterances, {seconds:.0f} s of audio")
        print(f"baseline: log-mel cache (prepare) {logmel:.1f} s = {n / logmel:.0f} utt/s, {seconds / logmel:.0f}x real time")
        for encoder in args.encoders:
            for compute_type in args.compute_types:
                upstream = audio_branch(encoder, compute_type)[1]
                started = time.perf_counter()
                ensure_stage(cache_path, upstream, data, device="cpu")
                took = time.perf_counter() - started
                print(f"{encoder} {compute_type}: {took:.1f} s = {n / took:.1f} utt/s, {seconds / took:.0f}x real time; "
                      f"IEMOCAP's ~7 h would take {IEMOCAP_KEPT_SECONDS / (seconds / took) / 60:.1f} min")


if __name__ == "__main__":
    main()
