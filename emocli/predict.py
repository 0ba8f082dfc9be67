"""`emocli predict`: emotions for your own recordings, one file or a folder of thousands.

Every setting comes from the run (feature config, tokenizer, label set), never from defaults, and audio goes
through the very same `features.audio_features` as `prepare`. A file without a transcript is predicted from
audio alone — the fused model learnt that case through modality dropout — and marked so.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from emocli.errors import AudioError, ConfigError, CorpusError, EmocliError
from emocli.features import audio_features, tokenize

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
OUTPUT_SUFFIXES = (".csv", ".jsonl")


@dataclass(frozen=True)
class PredictItem:
    id: str  # the path relative to the input folder (or the file name for a single file)
    path: Path
    text: str | None  # None: no transcript, predict from audio alone


@dataclass(frozen=True)
class Prediction:
    id: str
    path: Path
    text: str | None
    label: str
    probs: dict[str, float]
    audio_only: bool

    def to_json(self) -> dict:
        return {"id": self.id, "file": str(self.path), "text": self.text, "label": self.label,
                "audio_only": self.audio_only, **{f"p_{c}": round(p, 6) for c, p in self.probs.items()}}


@dataclass(frozen=True)
class Failure:
    id: str
    path: Path
    reason: str


# --------------------------------------------------------------------------------------------- inputs


def collect_inputs(source: Path, text: str | None = None, transcripts: Path | None = None) -> list[PredictItem]:
    """One file (with --text) or every audio file under a folder, each paired with its transcript if any."""
    source = Path(source)
    if not source.exists():
        raise CorpusError(f"{source} does not exist; pass a wav file or a folder of recordings")
    if source.is_file():
        if transcripts is not None:
            texts = read_transcripts(transcripts)
            known = {source.stem, source.name}
            unknown = sorted(set(texts) - known)
            if unknown:
                raise CorpusError(f"{transcripts}: id {unknown[0]!r} matches no input file (ids are file stems "
                                  f"or paths relative to the input folder)")
            text = text if text is not None else texts.get(source.stem, texts.get(source.name))
        return [PredictItem(source.name, source, text)]
    if text is not None:
        raise ConfigError("--text goes with a single file; for a folder put <name>.txt beside each wav or pass "
                          "--transcripts FILE")
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                   and not p.name.startswith("._"))
    if not files:
        raise CorpusError(f"{source} holds no audio files ({', '.join(AUDIO_SUFFIXES)}), searched recursively")
    table = read_transcripts(transcripts) if transcripts is not None else None
    items, used = [], set()
    for path in files:
        rel = path.relative_to(source)
        item_id = rel.as_posix()
        if table is not None:
            keys = (item_id, rel.with_suffix("").as_posix(), path.stem)
            key = next((k for k in keys if k in table), None)
            used.add(key)
            items.append(PredictItem(item_id, path, table.get(key) if key else None))
        else:
            items.append(PredictItem(item_id, path, _sidecar_text(path)))
    if table is not None:
        unknown = sorted(set(table) - used)
        if unknown:
            raise CorpusError(f"{transcripts}: {len(unknown)} id(s) match no audio file under {source}, e.g. "
                              f"{unknown[0]!r} (ids are file stems or paths relative to the folder)")
    return items


def _sidecar_text(audio: Path) -> str | None:
    sidecar = audio.with_suffix(".txt")
    if not sidecar.is_file():
        return None
    try:
        return " ".join(sidecar.read_text(encoding="utf-8").split())
    except UnicodeDecodeError:
        raise CorpusError(f"{sidecar} is not UTF-8 text; re-save it as UTF-8") from None


def read_transcripts(path: Path) -> dict[str, str]:
    """A CSV/TSV with header `id,text`; id = file stem or path relative to the input folder."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"cannot read transcripts file {path}: {exc.strerror or exc}") from None
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise CorpusError(f"{path} is not UTF-8 text; re-save it as UTF-8") from None
    delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in content.split("\n", 1)[0] else ","
    reader = csv.DictReader(io.StringIO(content), delimiter=delimiter)
    if reader.fieldnames is None or not {"id", "text"} <= {f.strip() for f in reader.fieldnames}:
        raise CorpusError(f"{path} needs a header with columns id and text (got {reader.fieldnames})")
    table: dict[str, str] = {}
    for row_number, row in enumerate(reader, start=2):
        row = {(k or "").strip(): v for k, v in row.items()}
        item_id, text = (row.get("id") or "").strip(), row.get("text")
        if not item_id or text is None:
            raise CorpusError(f"{path}, row {row_number}: empty id or missing text")
        if item_id in table:
            raise CorpusError(f"{path}, row {row_number}: id {item_id!r} appears twice")
        table[item_id] = " ".join(text.split())
    return table


# --------------------------------------------------------------------------------------------- model


class Predictor:
    """A trained model with the run's own settings; `predict` yields results in input order."""

    def __init__(self, model, config, tokenizer, device):
        self.model, self.config, self.tokenizer, self.device = model, config, tokenizer, device

    @classmethod
    def from_run(cls, run_dir: Path, fold: str | None = None, device: str = "auto") -> "Predictor":
        import torch

        from emocli.bundle import load_model

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but no CUDA device is visible; use --device cpu")
        model, config, tokenizer = load_model(Path(run_dir), fold, device)
        return cls(model, config, tokenizer, torch.device(device))

    @property
    def classes(self) -> tuple[str, ...]:
        return self.config.classes

    def features(self, item: PredictItem) -> np.ndarray:
        spec, _ = audio_features(item.path, self.config.features)
        return spec

    def predict(self, items: Iterable[PredictItem], batch_size: int = 32,
                feature_map: Callable = map) -> Iterator[Prediction | Failure]:
        """Features are computed by `feature_map` (a process pool for folders), the model runs per batch."""
        model_cfg = self.config.model
        batch: list[tuple[PredictItem, np.ndarray]] = []
        for item, result in zip(items, feature_map(_safe_features, [(i.path, self.config.features) for i in items])):
            if isinstance(result, str):
                yield Failure(item.id, item.path, result)
                continue
            if model_cfg.modality == "text" and not item.text:
                yield Failure(item.id, item.path, "this run's model is text-only and the file has no transcript")
                continue
            batch.append((item, result))
            if len(batch) == batch_size:
                yield from self._run_batch(batch)
                batch = []
        if batch:
            yield from self._run_batch(batch)

    def _run_batch(self, batch: list[tuple[PredictItem, np.ndarray]]) -> list[Prediction]:
        import torch

        model_cfg = self.config.model
        inputs = {}
        if model_cfg.uses_audio:
            lengths = [spec.shape[1] for _, spec in batch]
            padded = np.zeros((len(batch), batch[0][1].shape[0], max(lengths)), dtype=np.float32)  # (B, F, T)
            for row, (_, spec) in enumerate(batch):
                padded[row, :, : spec.shape[1]] = spec
            inputs["spec"] = torch.from_numpy(padded).to(self.device)
            inputs["spec_lengths"] = torch.tensor(lengths, device=self.device)
        present = [bool(item.text) for item, _ in batch]
        if model_cfg.uses_text:
            ids, mask = tokenize(self.tokenizer, [item.text or "" for item, _ in batch], self.config.features.max_tokens)
            inputs["input_ids"] = torch.from_numpy(ids.astype(np.int64)).to(self.device)
            inputs["attention_mask"] = torch.from_numpy(mask.astype(np.int64)).to(self.device)
            inputs["text_present"] = torch.tensor(present, device=self.device)
        with torch.inference_mode():
            probs = torch.softmax(self.model(**inputs).logits.float(), dim=-1).cpu().numpy()  # (B, C)
        results = []
        for (item, _), p, has_text in zip(batch, probs, present):
            audio_only = model_cfg.modality == "audio" or not has_text
            results.append(Prediction(item.id, item.path, item.text if model_cfg.uses_text and has_text else None,
                                      self.classes[int(p.argmax())], dict(zip(self.classes, map(float, p))),
                                      audio_only))
        return results


def _safe_features(job) -> np.ndarray | str:
    path, features = job
    try:
        spec, _ = audio_features(path, features)
    except AudioError as exc:
        return str(exc)
    return spec


@contextlib.contextmanager
def feature_pool(n_items: int, workers: int = 0):
    """Decode and compute features on every core for folders; plain map for a single file."""
    import multiprocessing

    from emocli.prepare import _limit_threads

    n_workers = workers or os.cpu_count() or 1
    if n_workers == 1 or n_items < 8:
        yield map
        return
    with multiprocessing.get_context("fork").Pool(n_workers, initializer=_limit_threads) as pool:
        yield lambda fn, jobs: pool.imap(fn, jobs, chunksize=4)


# --------------------------------------------------------------------------------------------- output


def check_output_path(path: Path) -> None:
    """Fail before any work when the output cannot be written."""
    path = Path(path)
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(f"--output {path}: use a .csv or .jsonl file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"--output {path}: folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"--output {path}: not writable")


def write_predictions(predictions: list[Prediction], classes: tuple[str, ...], path: Path) -> None:
    """CSV or JSON lines, written under a temporary name and renamed: a crash leaves no partial file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            if path.suffix.lower() == ".jsonl":
                for p in predictions:
                    handle.write(json.dumps(p.to_json()) + "\n")
            else:
                fields = ["id", "file", "text", "label", "audio_only", *[f"p_{c}" for c in classes]]
                writer = csv.DictWriter(handle, fieldnames=fields)
                writer.writeheader()
                for p in predictions:
                    writer.writerow(p.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise EmocliError(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
