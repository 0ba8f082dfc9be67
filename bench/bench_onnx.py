"""ONNX export vs emocli's torch predictor on one run: agreement, cold start and throughput.

Run: .venv/bin/python bench/bench_onnx.py RUN AUDIO [--transcripts FILE | --manifest FILE] [--export DIR]
                                          [--files 200] [--batch-size 16] [--threads N] [--fold NAME]
  RUN      a finished run (`emocli train --run`), exported with `emocli.export.export_onnx` into --export (default:
           a temporary folder; an existing export there is reused)
  AUDIO    a folder of recordings (searched recursively); transcripts come from <name>.txt beside each file, from
           --transcripts (id,text table, as `emocli predict --transcripts`), from --manifest (emocli's path,label,text
           manifest), or, for an IEMOCAP-format folder (`emocli synth OUT --format dir`), from its transcription files

It prints one table:
  max |p_onnx - p_torch|   over every file and class: onnx_runner.OnnxEmotionModel.predict_file against
                           emocli.predict.Predictor on the same files and transcripts, in this process
  cold start               seconds from launching a fresh Python process to its first prediction (one file): the
                           runner copied into the export folder (numpy + onnxruntime) vs Predictor.from_run (torch);
                           best of 2
  utt/s                    files per second after that first prediction, in the same process: decode, log-mel,
                           tokens and the model, --batch-size at a time, one process (no feature pool) for both
Both engines use every core unless --threads is given.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Each child prints one JSON line when its first prediction is done, then one with the folder's throughput.
_ONNX_CHILD = """
import json, sys, time
args = json.loads(sys.argv[1])
sys.path.insert(0, args["export"])
from onnx_runner import OnnxEmotionModel
model = OnnxEmotionModel(args["export"], threads=args["threads"])
first = args["items"][0]
model.predict_file(first["path"], first["text"])
print(json.dumps({"ready": True}), flush=True)
started = time.perf_counter()
audio = [model.read_audio(item["path"]) for item in args["items"]]
model.predict_batch([a for a, _ in audio], [r for _, r in audio], [item["text"] for item in args["items"]],
                    batch_size=args["batch_size"])
print(json.dumps({"seconds": time.perf_counter() - started}), flush=True)
"""

_TORCH_CHILD = """
import json, sys, time
from pathlib import Path
args = json.loads(sys.argv[1])
if args["threads"]:
    import torch
    torch.set_num_threads(args["threads"])
from emocli.predict import PredictItem, Predictor
predictor = Predictor.from_run(Path(args["run"]), fold=args["fold"], device="cpu")
items = [PredictItem(str(k), Path(item["path"]), item["text"]) for k, item in enumerate(args["items"])]
list(predictor.predict(items[:1]))
print(json.dumps({"ready": True}), flush=True)
started = time.perf_counter()
list(predictor.predict(items, batch_size=args["batch_size"]))
print(json.dumps({"seconds": time.perf_counter() - started}), flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("audio", type=Path)
    parser.add_argument("--transcripts", type=Path)
    parser.add_argument("--manifest", type=Path)
    parser.add_argument("--export", type=Path)
    parser.add_argument("--fold")
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    items = collect(args.audio, args.transcripts, args.manifest)[:args.files]
    if not items:
        raise SystemExit(f"no recordings found under {args.audio}")
    with tempfile.TemporaryDirectory(prefix="bench-onnx-") as scratch:
        export_dir = args.export or Path(scratch) / "export"
        export_seconds = ensure_export(args.run, export_dir, args.fold)
        diff, agree, items = agreement(args.run, export_dir, args.fold, items)
        settings = {"run": str(args.run), "export": str(export_dir), "fold": args.fold, "threads": args.threads,
                    "batch_size": args.batch_size, "items": items}
        rows = {name: measure(child, settings) for name, child in (("torch", _TORCH_CHILD), ("onnx", _ONNX_CHILD))}
    with_text = sum(item["text"] is not None for item in items)
    print(f"run {args.run}: {len(items)} files ({with_text} with a transcript), batch {args.batch_size}, "
          f"threads {args.threads or 'all'}, {os.cpu_count()} cores"
          + (f"; exported in {export_seconds:.1f} s" if export_seconds is not None else ""))
    print(f"max |p_onnx - p_torch| = {diff:.2e}; same label for {agree}/{len(items)} files")
    print(f"{'engine':<34}{'cold start (s)':>16}{'utt/s':>10}")
    for name, label in (("torch", "emocli Predictor (torch)"), ("onnx", "onnx_runner (onnxruntime)")):
        cold, rate = rows[name]
        print(f"{label:<34}{cold:>16.2f}{rate:>10.1f}")


def collect(audio: Path, transcripts: Path | None, manifest: Path | None) -> list[dict]:
    """[{"path", "text"}] for every recording under `audio`, with its transcript or None."""
    from emocli.predict import collect_inputs

    if manifest is not None:
        return _from_manifest(manifest)
    iemocap = next(audio.glob("**/Session*/dialog/transcriptions"), None)
    if transcripts is None and iemocap is not None:
        texts = _iemocap_texts(iemocap.parent.parent.parent)
        return [{"path": str(item.path), "text": texts.get(item.path.stem)}
                for item in collect_inputs(audio) if not item.problem]
    return [{"path": str(item.path), "text": item.text}
            for item in collect_inputs(audio, transcripts=transcripts) if not item.problem]


def _from_manifest(manifest: Path) -> list[dict]:
    with open(manifest, encoding="utf-8-sig", newline="") as handle:
        delimiter = "\t" if manifest.suffix.lower() == ".tsv" else ","
        rows = list(csv.DictReader(handle, delimiter=delimiter))
    return [{"path": str((manifest.parent / row["path"]).resolve()),
             "text": " ".join((row.get("text") or "").split()) or None} for row in rows]


def _iemocap_texts(root: Path) -> dict[str, str]:
    """utt_id -> transcript as `emocli prepare` normalises it (tags kept)."""
    from emocli.corpus.iemocap import normalise_text, parse_transcription, session_files

    texts = {}
    for _, _, transcription_files in session_files(root):
        for path in transcription_files:
            parsed, _ = parse_transcription(path.read_text(encoding="utf-8", errors="replace"), path.name)
            texts.update({utt: normalise_text(raw, "keep") or None for utt, raw in parsed.items()})
    return texts


def ensure_export(run: Path, export_dir: Path, fold: str | None) -> float | None:
    """Export unless `export_dir` already holds an export; the seconds it took, or None when reused."""
    if (export_dir / "config.json").is_file():
        return None
    from emocli.export import export_onnx

    started = time.perf_counter()
    export_onnx(run, export_dir, fold)
    return time.perf_counter() - started


def agreement(run: Path, export_dir: Path, fold: str | None, items: list[dict]) -> tuple[float, int, list[dict]]:
    """(max |p_onnx - p_torch|, files whose most probable class agrees, the files both can predict), both engines
    in this process; a file the predictor refuses (too short, silent) is left out of the timings too."""
    from emocli.onnx_runner import OnnxEmotionModel
    from emocli.predict import Failure, PredictItem, Predictor

    predictor = Predictor.from_run(run, fold=fold, device="cpu")
    model = OnnxEmotionModel(export_dir)
    torch_items = [PredictItem(str(k), Path(item["path"]), item["text"]) for k, item in enumerate(items)]
    worst, agree, usable = 0.0, 0, []
    for item, prediction in zip(items, predictor.predict(torch_items, batch_size=16)):
        if isinstance(prediction, Failure):
            print(f"skipped {item['path']}: {prediction.reason}", file=sys.stderr)
            continue
        usable.append(item)
        onnx = model.predict_file(item["path"], item["text"])
        # Class probabilities, and for a dimensional model its three values: every output compared.
        want = np.array([prediction.probs[c] for c in model.classes]
                        + [prediction.dimensions[d] for d in model.dimension_names])
        got = np.array([onnx[c] for c in model.classes] + [onnx[d] for d in model.dimension_names])
        worst = max(worst, float(np.abs(got - want).max()))
        n = len(model.classes)
        agree += int(not n or want[:n].argmax() == got[:n].argmax())
    return worst, agree, usable


def measure(child: str, settings: dict) -> tuple[float, float]:
    """(cold start in seconds, utterances per second) of a child script, each from a fresh process; best of 2."""
    best_cold, best_rate = float("inf"), 0.0
    payload = json.dumps(settings)
    for _ in range(2):
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", child, payload], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, cwd=ROOT)
        first = process.stdout.readline()
        cold = time.perf_counter() - started
        second = process.stdout.readline()
        _, errors = process.communicate()
        if process.returncode != 0 or not first or not second:
            raise SystemExit(f"the benchmark child failed:\n{errors[-2000:]}")
        best_cold = min(best_cold, cold)
        best_rate = max(best_rate, len(settings["items"]) / json.loads(second)["seconds"])
    return best_cold, best_rate


if __name__ == "__main__":
    main()
