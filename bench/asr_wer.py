"""Word error rate of emocli's offline recogniser on a corpus with gold transcripts.

    python bench/asr_wer.py synth-truth.json            # a generated corpus (emocli synth --format dir)
    python bench/asr_wer.py manifest.csv [--limit N]    # a manifest with path,text columns (e.g. EmoDB's)

Prints the corpus WER (errors over reference words, after emocli.asr.normalise_for_wer), the real-time factor and
the worst utterances. --model whisper-base compares the multilingual model.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

from emocli.asr import AsrConfig, Recogniser, corpus_wer, word_errors
from emocli.features import load_audio


def pairs_from(source: Path) -> list[tuple[Path, str]]:
    if source.suffix == ".json":
        truth = json.loads(source.read_text())
        root = Path(truth["archive"])
        out = []
        for uid, text in sorted(truth["texts"].items()):
            session, dialog = int(uid[4]), uid.rsplit("_", 1)[0]
            out.append((root / f"Session{session}" / "sentences" / "wav" / dialog / f"{uid}.wav", text))
        return out
    with open(source, newline="", encoding="utf-8") as handle:
        return [(source.parent / row["path"], row["text"]) for row in csv.DictReader(handle)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("source", type=Path)
    parser.add_argument("--model", default="whisper")
    parser.add_argument("--language", default=None)
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    pairs = pairs_from(args.source)
    if args.limit:
        pairs = pairs[:: max(1, len(pairs) // args.limit)][: args.limit]
    recogniser = Recogniser.load(AsrConfig(model=args.model, language=args.language))
    refs, hyps, seconds, started = [], [], 0.0, time.perf_counter()
    for path, text in pairs:
        audio = load_audio(path, 16_000)
        seconds += audio.size / 16_000
        refs.append(text)
        hyps.append(recogniser.transcribe(audio).text)
    took = time.perf_counter() - started
    wer = corpus_wer(refs, hyps)
    print(f"{args.source}: {len(pairs)} utterances, {seconds:.0f} s of audio, model {args.model}: "
          f"WER {100 * wer:.1f} %, {seconds / took:.1f}x real time")
    worst = sorted(zip(refs, hyps), key=lambda rh: -word_errors(*rh)[0] / max(1, word_errors(*rh)[1]))[:5]
    for ref, hyp in worst:
        print(f"  ref: {ref}\n  hyp: {hyp}")


if __name__ == "__main__":
    main()
