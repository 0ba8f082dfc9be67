"""Training throughput of `emocli train` beside a naive loop, on CPU and (where one is present) on a GPU.

Run: .venv/bin/python bench/bench_train.py [--per-class 50] [--epochs 1] [--modes cpu-default cpu-frozen naive]
     on a GPU machine: python bench/bench_train.py --modes gpu-fp32 gpu-bf16 naive-gpu --bert-base --per-class 1383

Modes (all train the fused model: text encoder + ModifiedAlexNet at full width, concat fusion, batch 32, Adam):
  cpu-default  the product on CPU: trainable text encoder, fp32
  cpu-frozen   the product's CPU-friendly mode: frozen text encoder, embeddings computed once
  cpu-small    frozen text encoder and ModifiedAlexNet at 1/8 width: the demo's configuration
  naive        the same model in a plain fp32 loop that reads each utterance from the HDF5 file through a
               per-item torch DataLoader (the usual first implementation), on the same device as --device
  gpu-fp32 / gpu-bf16 / naive-gpu   the same on CUDA
The product's figure is its own per-epoch `utt_per_s` (training steps only), from metrics.jsonl. On a GPU the
model FLOP utilisation is 3 x counted forward FLOPs x utt/s over the measured bf16 matmul rate.
--bert-base swaps the text encoder for a bert-base-sized BertModel with random weights (timing only; the
vocabulary is MiniLM's, which is bert-base-uncased's WordPiece vocabulary).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_cache(work: Path, per_class: int, mean_seconds: float, text_model: str) -> Path:
    from emocli.prepare import PrepareConfig, prepare
    from emocli.synth import SynthConfig, synthesize

    corpus = work / f"corpus-{per_class}"
    if not (corpus / "synth-truth.json").is_file():
        synthesize(corpus, SynthConfig(per_class=per_class, seed=5, mean_seconds=mean_seconds))
    cache_path = work / f"cache-{per_class}-{Path(text_model).name}.h5"
    prepare(corpus / "IEMOCAP_full_release.tar.gz", cache_path, PrepareConfig(text_model=text_model))
    return cache_path


def bert_base_folder(work: Path) -> Path:
    """A bert-base-sized encoder (12 layers, hidden 768) with random weights and MiniLM's WordPiece files."""
    from transformers import BertConfig, BertModel

    from emocli.text_model import resolve_text_model

    folder = work / "bert-base-random"
    if not (folder / "model.safetensors").is_file():
        import torch

        torch.manual_seed(0)
        BertModel(BertConfig()).save_pretrained(folder, safe_serialization=True)
        source = resolve_text_model("all-MiniLM-L6-v2").path
        for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            shutil.copy(source / name, folder / name)
    return folder


def product(cache_path: Path, work: Path, text_model: str, freeze: bool, device: str, precision: str,
            epochs: int, batch_size: int, audio_width: float = 1.0) -> dict:
    from emocli.model import ModelConfig
    from emocli.train import TrainConfig, train

    run = work / f"run-{int(time.time() * 1000)}"
    mc = ModelConfig(text_model=text_model, freeze_text=freeze, audio_width=audio_width)
    tc = TrainConfig(repeats=1, epochs=epochs, batch_size=batch_size, device=device, precision=precision)
    started = time.perf_counter()
    train(cache_path, run, mc, tc)
    wall = time.perf_counter() - started
    log = [json.loads(line) for line in (run / "folds/random-0/metrics.jsonl").read_text().splitlines()]
    speed = log[-1]["utt_per_s"] if len(log) > 1 else log[0]["utt_per_s"]  # the first epoch also pays warm-up
    shutil.rmtree(run, ignore_errors=True)
    return {"utt_per_s": speed, "wall_s": wall, "epochs": epochs}


def naive(cache_path: Path, text_model: str, device: str, seconds_budget: float, batch_size: int) -> dict:
    """A plain loop: per-item HDF5 reads through a DataLoader, fp32, trainable encoder."""
    import h5py
    import torch
    from torch.utils.data import DataLoader, Dataset

    from emocli.model import EmotionModel

    class PerItem(Dataset):
        def __init__(self, path):
            self.path = path
            with h5py.File(path, "r") as h5:
                self.offsets = h5["spec_offsets"][()]
                self.n = len(h5["labels"])
            self.h5 = None

        def __len__(self):
            return self.n

        def __getitem__(self, i):
            if self.h5 is None:
                self.h5 = h5py.File(self.path, "r")  # opened lazily, per worker
            spec = self.h5["spec"][self.offsets[i]:self.offsets[i + 1]].T.astype(np.float32)
            return (torch.from_numpy(spec), torch.from_numpy(self.h5["input_ids"][i].astype(np.int64)),
                    torch.from_numpy(self.h5["attention_mask"][i].astype(np.int64)), int(self.h5["labels"][i]))

    def collate(items):
        t_max = max(s.shape[1] for s, *_ in items)
        spec = torch.zeros(len(items), items[0][0].shape[0], t_max)
        for k, (s, *_rest) in enumerate(items):
            spec[k, :, : s.shape[1]] = s
        return (spec, torch.tensor([s.shape[1] for s, *_ in items]), torch.stack([i[1] for i in items]),
                torch.stack([i[2] for i in items]), torch.tensor([i[3] for i in items]))

    dev = torch.device(device)
    model = EmotionModel(model_config(text_model)).to(dev).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loader = DataLoader(PerItem(cache_path), batch_size=batch_size, shuffle=True, collate_fn=collate, num_workers=0)
    seen, started = 0, None
    batches = (batch for _ in range(1000) for batch in loader)  # epochs until the time budget is spent
    for step, (spec, lengths, ids, mask, labels) in enumerate(batches):
        if step == 1:  # the first step pays allocation and kernel selection
            if dev.type == "cuda":
                torch.cuda.synchronize()
            started, seen = time.perf_counter(), 0
        out = model(spec=spec.to(dev), spec_lengths=lengths.to(dev), input_ids=ids.to(dev),
                    attention_mask=mask.to(dev), labels=labels.to(dev))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        seen += len(labels)
        if started is not None and time.perf_counter() - started > seconds_budget:
            break
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return {"utt_per_s": seen / (time.perf_counter() - started), "utterances": seen}


def model_config(text_model: str):
    """The paper's fused model with this text encoder (its width read from the encoder's config)."""
    from emocli.model import ModelConfig
    from emocli.text_model import encoder_hidden_size, resolve_text_model

    return ModelConfig(text_model=text_model, audio_width=1.0,
                       text_hidden=encoder_hidden_size(resolve_text_model(text_model)))


def bf16_matmul_tflops() -> float:
    import torch

    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 20 * 2 * 8192**3 / (time.perf_counter() - started) / 1e12


def flops_per_item(cache_path: Path, text_model: str) -> float:
    """Counted forward FLOPs of one average utterance (mean frames, mean tokens) of this cache."""
    from emocli.cache import read_cache
    from emocli.model import EmotionModel

    data = read_cache(cache_path)
    model = EmotionModel(model_config(text_model))
    return float(model.count_flops_per_item(int(data.spec_lengths.mean()), int(data.attention_mask.sum(1).mean())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--mean-seconds", type=float, default=4.5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--naive-seconds", type=float, default=60.0)
    parser.add_argument("--modes", nargs="+", default=["cpu-default", "cpu-frozen", "cpu-small", "naive"])
    parser.add_argument("--bert-base", action="store_true")
    parser.add_argument("--work", type=Path, default=ROOT / "data" / "bench-train")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "train.json")
    args = parser.parse_args()
    if any("gpu" in mode for mode in args.modes):
        import torch

        if not torch.cuda.is_available():  # said before minutes of corpus generation, not after
            raise SystemExit("the gpu-* modes need a CUDA device and none is visible here; run them on a GPU "
                             "machine, or pick cpu-default cpu-frozen cpu-small naive")
    args.work.mkdir(parents=True, exist_ok=True)
    text_model = str(bert_base_folder(args.work)) if args.bert_base else "all-MiniLM-L6-v2"
    cache_path = make_cache(args.work, args.per_class, args.mean_seconds, text_model)
    rows = []
    for mode in args.modes:
        device = "cuda" if "gpu" in mode else "cpu"
        if mode.startswith("naive"):
            r = naive(cache_path, text_model, device, args.naive_seconds, args.batch_size)
        else:
            precision = "bf16" if mode == "gpu-bf16" else "fp32"
            r = product(cache_path, args.work, text_model, mode in ("cpu-frozen", "cpu-small"), device, precision,
                        args.epochs, args.batch_size, audio_width=0.125 if mode == "cpu-small" else 1.0)
        rows.append({"mode": mode, **r})
        print(json.dumps(rows[-1]), flush=True)
    extra = {}
    if any("gpu" in m for m in args.modes):
        extra["bf16_matmul_tflops"] = bf16_matmul_tflops()
        extra["forward_flops_per_item"] = flops_per_item(cache_path, text_model)
        for r in rows:
            r["mfu"] = 3 * extra["forward_flops_per_item"] * r["utt_per_s"] / (extra["bf16_matmul_tflops"] * 1e12)
            r["seconds_per_5531"] = 5531 / r["utt_per_s"]
    naive_rows = {r["mode"]: r["utt_per_s"] for r in rows if r["mode"].startswith("naive")}
    for r in rows:
        base = naive_rows.get("naive-gpu" if "gpu" in r["mode"] else "naive")
        if base and not r["mode"].startswith("naive"):
            r["x_naive"] = r["utt_per_s"] / base
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"train throughput, {'bert-base (random)' if args.bert_base else 'all-MiniLM-L6-v2'} + "
                        f"ModifiedAlexNet, fused, batch {args.batch_size}")
    for col in ("mode", "utt/s", "x naive", "s per 5,531", "MFU"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["mode"], f"{r['utt_per_s']:.1f}", f"{r.get('x_naive', float('nan')):.2f}",
                      f"{5531 / r['utt_per_s']:.0f}", f"{100 * r['mfu']:.1f} %" if "mfu" in r else "-")
    Console().print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
                                    "per_class": args.per_class, "rows": rows, **extra}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
