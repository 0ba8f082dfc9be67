"""`emocli predict`: emotions for your own recordings, one file or a folder of thousands.

Every setting comes from the run (feature config, tokenizer, label set), never from defaults, and audio goes
through the very same `features.audio_features` as `prepare`. A file without a transcript is predicted from
audio alone — a fused model learns that case through modality dropout (`train --modality-dropout`, on by
default) — and marked so. A file that cannot be predicted becomes a `Failure` (one line for the CLI) and the
rest goes on.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np

from emocli.atomic import write_bytes_atomic
from emocli.errors import AudioError, ConfigError, CorpusError
from emocli.embed import load_utterance_audio, many_utterance_frames, utterance_frames
from emocli.features import FeatureConfig, audio_features, to_float16, tokenize

if TYPE_CHECKING:  # torch and the model load only once a run is opened: `--help` and input errors stay fast
    import torch

    from emocli.asr import AsrConfig, Recogniser
    from emocli.bundle import RunConfig
    from emocli.encoders.base import Embedder
    from emocli.longform import SegmentConfig
    from emocli.model import EmotionModel

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
OUTPUT_SUFFIXES = (".csv", ".jsonl")
# Features of at most this many batches are held at once, so a folder of thousands of 15 s files never holds
# every spectrogram in memory (a 128 x 1500 float32 log-mel is 0.75 MB).
FEATURE_CHUNK_BATCHES = 8

# Utterances cut from a long recording carry their audio: at most this much of it is held at once (40 MB).
CHUNK_AUDIO_SAMPLES = 10 * 60 * 16_000

FeatureMap = Callable[[Callable, Iterable], Iterable]  # `map`, or a process pool's ordered imap


@dataclass(frozen=True)
class PredictItem:
    id: str  # the path relative to the input folder (or the file name for a single file)
    path: Path
    text: str | None  # None: no transcript (yet)
    problem: str | None = None  # why this entry cannot be predicted (an unreadable folder, a broken transcript)
    text_source: str | None = None  # "given" | "asr" | None (no text); None with a text means "given"
    asr_confidence: float | None = None
    # An utterance cut from a long recording: its audio (16 kHz mono) and where it lies in the file, in seconds.
    audio: np.ndarray | None = None
    start: float | None = None
    end: float | None = None

    @property
    def source_of_text(self) -> str:
        if self.text is None:
            return "none"
        return self.text_source or "given"


@dataclass(frozen=True)
class Prediction:
    id: str
    path: Path
    text: str | None  # the transcript the model read; None when it read none
    label: str | None  # the class name (angry, happy, ...); None for a dimensions-only model
    probs: dict[str, float]  # class name -> probability, every class in the run's class order
    audio_only: bool  # predicted without a transcript
    text_source: str = "given"  # where `text` came from: given | asr | none
    asr_confidence: float | None = None  # the recogniser's mean token probability, for text_source asr
    start: float | None = None  # seconds: the utterance's place in a long recording (None: the whole file)
    end: float | None = None
    # valence, arousal, dominance on the training corpus's scale (IEMOCAP: 1..5), for a dimensional model
    dimensions: dict[str, float] | None = None

    def to_json(self) -> dict:
        return {"id": self.id, "file": str(self.path), "start": _seconds(self.start), "end": _seconds(self.end),
                "text": self.text, "text_source": self.text_source,
                "asr_confidence": None if self.asr_confidence is None else round(self.asr_confidence, 4),
                "label": self.label, "audio_only": self.audio_only,
                **{f"p_{c}": round(p, 6) for c, p in self.probs.items()},
                **{name: round(v, 4) for name, v in (self.dimensions or {}).items()}}


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass(frozen=True)
class Failure:
    id: str
    path: Path
    reason: str


# --------------------------------------------------------------------------------------------- inputs


def collect_inputs(source: Path, text: str | None = None, transcripts: Path | None = None) -> list[PredictItem]:
    """One file, or every audio file under a folder (recursively), each paired with its transcript if any.

    A transcript comes from --text (one file), else from --transcripts, else from `<name>.txt` beside the audio.
    """
    source = Path(source)
    if not source.exists() and not source.is_symlink():
        raise CorpusError(f"{source} does not exist; pass a wav file or a folder of recordings")
    if text is not None and transcripts is not None:
        raise ConfigError("--text and --transcripts both give transcripts; use one of them")
    if source.is_dir():
        if text is not None:
            raise ConfigError("--text goes with a single file; for a folder put <name>.txt beside each wav or "
                              "pass --transcripts FILE")
        root, (files, unreadable) = source, _audio_files(source)
    else:
        root, files, unreadable = source.parent, [source], []
    if transcripts is not None:
        texts = _match_transcripts(read_transcripts(transcripts), files, root, transcripts)
    elif text is not None:
        texts = [_clean(text)]
    else:
        texts = [_sidecar_text(path) for path in files]
    items = [PredictItem(path.relative_to(root).as_posix(), path, *(t if isinstance(t, tuple) else (t, None)))
             for path, t in zip(files, texts)]
    # A folder the walk could not enter is a failure of its own, said and counted, never silently missing.
    return items + [PredictItem(folder.relative_to(root).as_posix() + "/", folder, None, f"cannot read this folder "
                                f"({reason}); its recordings were not predicted") for folder, reason in unreadable]


def _audio_files(folder: Path) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Every audio file under `folder`, sorted, and the folders that could not be read (with the reason).

    Not `is_file()`: a broken link or an unreadable entry named *.wav must be reported, not silently skipped.
    `._*` are macOS AppleDouble shadows of real files, never audio."""
    files: list[Path] = []
    unreadable: list[tuple[Path, str]] = []

    def failed(error: OSError) -> None:
        unreadable.append((Path(error.filename), error.strerror or type(error).__name__))

    for top, dirs, names in os.walk(folder, onerror=failed):
        dirs.sort()
        files.extend(Path(top, name) for name in names
                     if Path(name).suffix.lower() in AUDIO_SUFFIXES and not name.startswith("._"))
    files.sort()
    if not files and not unreadable:
        raise CorpusError(f"{folder} holds no audio files ({', '.join(AUDIO_SUFFIXES)}), searched recursively")
    return files, sorted(unreadable)


def _clean(text: str) -> str | None:
    """Whitespace collapsed as in prepare; an empty transcript is no transcript."""
    return " ".join(text.split()) or None


def _sidecar_text(audio: Path) -> str | None | tuple[None, str]:
    """The transcript beside `audio`, None without one, or (None, problem) for one that cannot be read: that file
    fails, the rest of the folder goes on."""
    sidecar = audio.with_suffix(".txt")
    if not sidecar.is_file():
        return None
    try:
        return _clean(sidecar.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        return None, f"its transcript {sidecar.name} is not UTF-8 text; re-save it as UTF-8"
    except OSError as exc:
        return None, f"cannot read its transcript {sidecar.name}: {exc.strerror or exc}"


def _match_transcripts(table: dict[str, str], files: list[Path], root: Path, where: Path) -> list[str | None]:
    """Each file's transcript; every id must name exactly one file and every file at most one id."""
    names: dict[str, list[int]] = {}  # id spelling -> files it can name: relative path, without suffix, stem
    for index, path in enumerate(files):
        rel = path.relative_to(root)
        # NFC on both sides: macOS writes file names decomposed (NFD), a table typed elsewhere is composed.
        for key in {unicodedata.normalize("NFC", k) for k in (rel.as_posix(), rel.with_suffix("").as_posix(), path.stem)}:
            names.setdefault(key, []).append(index)
    texts: list[str | None] = [None] * len(files)
    owner: dict[int, str] = {}
    for item_id, text in table.items():
        matches = names.get(unicodedata.normalize("NFC", item_id), [])
        if not matches:
            raise CorpusError(f"{where}: id {item_id!r} matches no audio file under {root} (ids are file stems or "
                              f"paths relative to the input folder)")
        if len(matches) > 1:
            raise CorpusError(f"{where}: id {item_id!r} matches {len(matches)} files (e.g. "
                              f"{files[matches[0]].relative_to(root).as_posix()}); use the relative path as id")
        if matches[0] in owner:
            raise CorpusError(f"{where}: ids {owner[matches[0]]!r} and {item_id!r} both name "
                              f"{files[matches[0]].relative_to(root).as_posix()}; keep one")
        owner[matches[0]] = item_id
        texts[matches[0]] = _clean(text)
    return texts


def read_transcripts(path: Path) -> dict[str, str]:
    """A CSV/TSV with header `id,text`; id = file stem or path relative to the input folder."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"cannot read transcripts file {path}: {exc.strerror or exc}") from None
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path} is not UTF-8 text (byte {exc.start}); re-save it as UTF-8") from None
    delimiter = "\t" if path.suffix.lower() == ".tsv" or "\t" in content.split("\n", 1)[0] else ","
    try:
        return _parse_transcripts(csv.DictReader(io.StringIO(content, newline=""), delimiter=delimiter), path)
    except csv.Error as exc:
        raise CorpusError(f"{path} is not a readable CSV/TSV ({exc})") from None


def _parse_transcripts(reader: csv.DictReader, path: Path) -> dict[str, str]:
    if reader.fieldnames is None or not {"id", "text"} <= {(f or "").strip() for f in reader.fieldnames}:
        raise CorpusError(f"{path} needs a header with columns id and text (got {reader.fieldnames})")
    table: dict[str, str] = {}
    for row in reader:
        line = reader.line_num
        if row.get(None):  # DictReader files surplus fields under None: an unquoted delimiter inside the text
            raise CorpusError(f"{path}, line {line}: more fields than the header; quote text that holds the "
                              f"delimiter")
        row = {(k or "").strip(): v for k, v in row.items()}
        item_id, text = (row.get("id") or "").strip().replace("\\", "/").removeprefix("./"), row.get("text")
        if not item_id or text is None:
            raise CorpusError(f"{path}, line {line}: empty id or missing text")
        if item_id in table:
            raise CorpusError(f"{path}, line {line}: id {item_id!r} appears twice")
        table[item_id] = text
    return table


# --------------------------------------------------------------------------------------------- long recordings

SEGMENT_MODES = ("auto", "always", "never")


def expand_recordings(items: Iterable[PredictItem], window_s: float, mode: str = "auto",
                      config: "SegmentConfig | None" = None, notice: Callable[[str, str], None] = lambda i, m: None
                      ) -> Iterator[PredictItem]:
    """Each item as it is, or, for a recording longer than `window_s` (or every one with mode "always"), the
    utterances voice-activity detection finds in it, one item each, cut as the file streams in.

    `notice(id, message)` hears what the user must be told: a truncated recording (mode "never"), a transcript
    that covers a whole recording and so cannot be used for its utterances. A recording without speech, or one that
    cannot be decoded part-way, becomes a failing item after the utterances before the damage."""
    from emocli.longform import SegmentConfig, audio_duration, speech_segments

    if mode not in SEGMENT_MODES:
        raise ConfigError(f"--segment {mode!r} is not one of {', '.join(SEGMENT_MODES)}")
    config = config or SegmentConfig(max_segment_s=window_s)
    vad = None
    for item in items:
        duration = None if item.problem else audio_duration(item.path)
        long = duration is not None and window_s > 0 and duration > window_s
        if item.problem or mode == "never" or (mode == "auto" and not long):
            if long:
                notice(item.id, f"{duration:.1f} s long: only its first {window_s:g} s were classified "
                                f"(--segment auto classifies every utterance of it)")
            yield item
            continue
        if item.text is not None:
            notice(item.id, "its transcript covers the whole recording, not each utterance: the utterances are "
                            "transcribed instead (or pass --asr off)")
        if vad is None:
            from emocli.longform import SileroVad

            vad = SileroVad.load()
        found, damaged = 0, []
        try:
            for segment in speech_segments(item.path, config, vad, on_damage=lambda a, b, why: damaged.append(
                    f"{a:.1f}-{b:.1f} s ({why})")):
                found += 1
                yield PredictItem(item.id, item.path, None, audio=segment.audio, start=segment.start, end=segment.end)
        except AudioError as exc:
            yield dataclasses.replace(item, problem=str(exc).removeprefix(f"{item.path}: "))
            continue
        if damaged:
            yield dataclasses.replace(item, problem=f"cannot decode {', '.join(damaged)}: skipped as silence, the "
                                                    f"rest of the recording was predicted")
        elif not found:
            yield dataclasses.replace(item, problem="no speech found in it (voice-activity detection heard none: "
                                                    "silence, noise or music)")


# --------------------------------------------------------------------------------------------- model


class Predictor:
    """A trained model with the run's own settings; `predict` yields one result per item, in input order."""

    def __init__(self, model: "EmotionModel", config: "RunConfig", tokenizer: object | None, device: "torch.device",
                 upstream: "Embedder | None" = None, recogniser: "Recogniser | None" = None, fold: str | None = None):
        """`tokenizer`: the run's own copy, None for an audio-only model; `upstream`: what makes the audio branch's
        features when they are not the log-mel (a frozen pretrained encoder with the run's weights, or the
        waveform for a fine-tuned one); `recogniser`: transcribes items without a transcript (None: they are
        predicted from audio alone); `fold`: the fold whose model this is."""
        self.model, self.config, self.tokenizer, self.device = model, config, tokenizer, device
        self.upstream, self.recogniser, self.fold = upstream, recogniser, fold
        # The class names (angry, happy, ...) in the model's output order, what every prediction is labelled with;
        # () for a dimensions-only model. Named once: every prediction reads them.
        self.classes: tuple[str, ...] = tuple(config.label_set.display.get(c, c) for c in config.classes) \
            if config.model.predicts_classes else ()

    @classmethod
    def from_run(cls, run_dir: Path, fold: str | None = None, device: str = "auto", max_seconds: float | None = None,
                 asr: "AsrConfig | None" = None) -> "Predictor":
        """`max_seconds`: the longest audio classified as one utterance (default: the run's own, as in prepare);
        `asr`: the recogniser for items without a transcript, loaded only when the model reads text."""
        import dataclasses

        import torch

        from emocli.batch import resolve_device
        from emocli.bundle import load_model

        torch_device = resolve_device(device)
        model, config, tokenizer = load_model(Path(run_dir), fold, str(torch_device))
        from emocli.bundle import default_fold

        fold = fold if fold is not None else default_fold(config)
        if max_seconds is not None:
            config = dataclasses.replace(config, features=dataclasses.replace(config.features, max_seconds=max_seconds))
        from emocli.encoders import feature_source, load_upstream

        source = feature_source(config.model)
        upstream = load_upstream(source, device=torch_device.type) if source is not None else None
        # Conv weights in NHWC: oneDNN's convolutions are 25 % faster in that layout on CPU, and the CNN is three
        # quarters of a prediction's time. Same weights, results equal up to float summation order.
        model.to(memory_format=torch.channels_last)
        recogniser = None
        if asr is not None and config.model.uses_text:
            from emocli.asr import Recogniser

            recogniser = Recogniser.load(asr, device="cuda" if torch_device.type == "cuda" else "cpu")
        return cls(model, config, tokenizer, torch_device, upstream, recogniser, fold)

    @property
    def dimensions(self) -> tuple[str, ...]:
        """("valence", "arousal", "dominance") for a dimensional model, else ()."""
        from emocli.corpus.records import DIMENSIONS

        return DIMENSIONS if self.config.model.predicts_dimensions else ()

    @property
    def window_s(self) -> float:
        """The longest audio classified as one utterance; longer recordings are segmented (or truncated)."""
        return self.config.features.max_seconds

    def features(self, item: PredictItem) -> np.ndarray:
        """(T, ...) float16 audio features of one item, exactly as the training data's were made: the log-mel of
        prepare, or the frozen upstream's frames of the embedding stage."""
        if self.upstream is not None:
            return utterance_frames(self.upstream, self._audio(item, self.upstream.info.sample_rate))
        if item.audio is not None:
            return _log_mel_of(self._audio(item, self.config.features.sample_rate), self.config.features)
        spec, _ = audio_features(item.path, self.config.features)
        return to_float16(spec.T)

    def _audio(self, item: PredictItem, rate: int) -> np.ndarray:
        """The item's samples at `rate`, with prepare's truncation and refusals: from its file, or the utterance
        cut from a long recording."""
        if item.audio is None:
            return load_utterance_audio(item.path, self.config.features, rate)
        return utterance_audio(item.audio, self.config.features, rate, item.path)

    def predict(self, items: Iterable[PredictItem], batch_size: int = 32,
                feature_map: FeatureMap = map) -> Iterator[Prediction | Failure]:
        """Features are computed by `feature_map` (a process pool for folders), the model runs per batch. `items`
        is consumed a chunk at a time: the utterances of a 2-hour recording are never all in memory."""
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, not {batch_size}")
        chunk, block, held = batch_size * FEATURE_CHUNK_BATCHES, [], 0
        for item in items:
            block.append(item)
            held += 0 if item.audio is None else item.audio.size
            if len(block) >= chunk or held >= CHUNK_AUDIO_SAMPLES:
                yield from self._predict_chunk(block, batch_size, feature_map)
                block, held = [], 0
        if block:
            yield from self._predict_chunk(block, batch_size, feature_map)

    def _predict_chunk(self, items: list[PredictItem], batch_size: int,
                       feature_map: FeatureMap) -> list[Prediction | Failure]:
        failed = [Failure(item.id, item.path, item.problem) for item in items if item.problem]
        if failed:  # an unreadable folder or transcript fails alone, before any audio is decoded
            rest = [item for item in items if not item.problem]
            done = iter(self._predict_chunk(rest, batch_size, feature_map)) if rest else iter(())
            return [Failure(item.id, item.path, item.problem) if item.problem else next(done) for item in items]
        items = self._transcribe_missing(items)
        feats = self._chunk_features(items, feature_map)
        results: list[Prediction | Failure | None] = [None] * len(items)
        ready = []
        for index, (item, feat) in enumerate(zip(items, feats)):
            reason = feat if isinstance(feat, str) else self._refusal(item)
            if reason is None:
                ready.append(index)
            else:
                results[index] = Failure(item.id, item.path, reason)
        if self.config.model.uses_audio:
            # Batches of similar lengths: a batch is padded to its longest item, so mixing a 1 s and a 15 s file
            # costs the 1 s one a 15 s forward pass. Results still come out in input order.
            ready.sort(key=lambda i: len(feats[i]))
        from emocli.batch import inference_batch_size

        batch_size = inference_batch_size(self.model, batch_size)
        for start in range(0, len(ready), batch_size):
            batch = ready[start:start + batch_size]
            outputs = self._run_batch([items[i] for i in batch], [feats[i] for i in batch])
            for index, prediction in zip(batch, outputs):
                results[index] = prediction
        return results

    def _transcribe_missing(self, items: list[PredictItem]) -> list[PredictItem]:
        """Items without a transcript, transcribed when there is a recogniser (a file that cannot be decoded is
        left as it is: the audio step names its problem)."""
        if self.recogniser is None:
            return items
        from emocli.asr import SAMPLE_RATE_HZ

        done = []
        for item in items:
            if item.text is None:
                audio = _safe(self._audio, item.path, item, SAMPLE_RATE_HZ)
                if not isinstance(audio, str):
                    heard = self.recogniser.transcribe(audio)
                    item = dataclasses.replace(item, text=heard.text or None, text_source="asr",
                                               asr_confidence=heard.confidence)
            done.append(item)
        return done

    def _chunk_features(self, items: list[PredictItem], feature_map: FeatureMap) -> list[np.ndarray | str | None]:
        """Each item's audio features, or the reason it has none; None for all when the model does not read audio."""
        if not self.config.model.uses_audio:
            return [None] * len(items)  # a text-only model never decodes audio: a broken file costs nothing
        if self.upstream is not None:  # the encoder uses every core itself; decoding is a small share of it
            return self._upstream_features(items)
        if any(item.audio is not None for item in items):  # utterances of a long recording: in memory already
            return [_safe(self.features, item.path, item) for item in items]
        return list(feature_map(_safe_features, [(item.path, self.config.features) for item in items]))

    def _upstream_features(self, items: list[PredictItem]) -> list[np.ndarray | str]:
        """Each item's frames, the decodable ones through the encoder together; the reason for each that fails."""
        rate = self.upstream.info.sample_rate
        audios = [_safe(self._audio, item.path, item, rate) for item in items]
        good = [k for k, a in enumerate(audios) if not isinstance(a, str)]
        frames = many_utterance_frames(self.upstream, [audios[k] for k in good])
        for k, f in zip(good, frames):
            audios[k] = f
        return audios

    def _refusal(self, item: PredictItem) -> str | None:
        if self.config.model.modality == "text" and item.text is None:
            return ("no transcript, and this run's model is text-only; give one with --text, a .txt beside the "
                    "audio or --transcripts")
        return None

    def _run_batch(self, items: list[PredictItem], feats: list[np.ndarray | None]) -> list[Prediction]:
        import torch

        from emocli.batch import ModelInputs, Ragged

        model_cfg = self.config.model
        # An audio-only model reads no transcript, so none counts as used.
        present = np.array([model_cfg.uses_text and item.text is not None for item in items], dtype=bool)
        ids = mask = None
        if model_cfg.uses_text:
            # Fixed-length padding, as in the cache; a missing transcript is tokenised as "" and then replaced
            # by the model's learned missing-text embedding (text_present False).
            ids, mask = tokenize(self.tokenizer, [item.text or "" for item in items], self.config.features.max_tokens)
        audio = Ragged.from_items(feats) if model_cfg.uses_audio else None
        inputs, _ = ModelInputs.build(audio, ids, mask, present if model_cfg.uses_text else None, None
                                      ).batch(np.arange(len(items)), self.device)
        with torch.inference_mode():
            out = self.model(**inputs)
        n = len(items)
        probs = torch.softmax(out.logits.float(), dim=-1).cpu().numpy() if out.logits is not None \
            else np.zeros((n, 0), np.float32)  # (B, C)
        dims = out.dimensions.float().cpu().numpy() if out.dimensions is not None else [None] * n  # (B, 3)
        return [Prediction(item.id, item.path, item.text if has_text else None,
                           self.classes[int(p.argmax())] if p.size else None,
                           dict(zip(self.classes, map(float, p))), audio_only=not has_text,
                           text_source=item.source_of_text if has_text else "none",
                           asr_confidence=item.asr_confidence if has_text else None, start=item.start, end=item.end,
                           dimensions=dict(zip(self.dimensions, map(float, d))) if d is not None else None)
                for item, p, d, has_text in zip(items, probs, dims, present)]


def _safe(compute: Callable, path: Path, *args) -> np.ndarray | str:
    """`compute(*args)`, or the reason it failed: one bad file must not stop a folder of thousands."""
    try:
        return compute(*args)
    except AudioError as exc:
        return str(exc).removeprefix(f"{path}: ")  # the CLI names the file already
    except Exception as exc:  # a decoder's own error on a malformed file: still this file's problem only
        return f"cannot decode ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"


def utterance_audio(audio: np.ndarray, features: FeatureConfig, rate: int, path: Path) -> np.ndarray:
    """An in-memory utterance (16 kHz) as prepare would have kept it: at `rate`, truncated to the window, refused
    when too short or silent."""
    from emocli.longform import SAMPLE_RATE_HZ as SEGMENT_RATE

    if rate != SEGMENT_RATE:
        import soxr

        audio = soxr.resample(audio, SEGMENT_RATE, rate).astype(np.float32)
    if features.max_seconds > 0:
        audio = audio[:int(features.max_seconds * rate)]
    if audio.size < features.min_seconds * rate:
        raise AudioError(f"{path}: an utterance of {audio.size / rate:.2f} s is shorter than {features.min_seconds} s")
    if not audio.size or float(np.abs(audio).max()) < features.silence_peak:
        raise AudioError(f"{path}: the utterance is silent")
    return audio


def _log_mel_of(audio: np.ndarray, features: FeatureConfig) -> np.ndarray:
    from emocli.features import log_mel

    return to_float16(log_mel(audio, features).T)


def _log_mel_f16(path: Path, features: FeatureConfig) -> np.ndarray:
    spec, _ = audio_features(path, features)
    return to_float16(spec.T)  # (T, F), rounded as the cache stores it: train and predict see the same numbers


def _safe_features(job: tuple[Path, FeatureConfig]) -> np.ndarray | str:
    """A worker's log-mel (T, F) float16, or the reason there is none."""
    path, features = job
    return _safe(_log_mel_f16, path, path, features)


# --------------------------------------------------------------------------------------------- output


_CSV_FIELDS = ["id", "file", "start", "end", "text", "text_source", "asr_confidence", "label", "audio_only"]
_CSV_HEADERS = (",".join(_CSV_FIELDS), "id,file,text,label,audio_only")  # this version's, and the one before
_JSONL_KEYS = {"id", "file", "label", "audio_only"}


def _is_our_output(path: Path) -> bool:
    """True for an empty file or a predictions file emocli wrote (its CSV header, or its JSON lines' keys)."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(1 << 16).decode("utf-8-sig").strip()
    except (OSError, UnicodeDecodeError):
        return False
    if not first:
        return True
    if first.startswith(_CSV_HEADERS):
        return True
    try:
        record = json.loads(first)
    except ValueError:
        return False
    return isinstance(record, dict) and _JSONL_KEYS <= set(record)


def check_output_path(path: Path, inputs: Iterable[Path | None] = ()) -> None:
    """Fail before any work when the output cannot be written, or would replace a file emocli did not write (a
    transcripts table, an audio file, anyone's CSV): an output only ever replaces an earlier emocli output."""
    path = Path(path)
    for source in inputs:
        if source is not None and Path(source).exists() and path.exists() and os.path.samefile(source, path):
            raise ConfigError(f"--output {path} is one of the command's inputs; write the predictions elsewhere")
    if path.is_symlink() or (path.exists() and not path.is_dir() and not _is_our_output(path)):
        raise ConfigError(f"--output {path} exists and is not a predictions file emocli wrote; emocli never "
                          f"replaces other files — choose another name, or move that file away yourself")
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(f"--output {path}: use a .csv or .jsonl file name")
    if path.is_dir():
        raise ConfigError(f"--output {path} is a folder; give a file name inside it")
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"--output {path}: folder {parent} does not exist; create it first")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"--output {path}: the file is read-only")
    # Creating a file is the only honest test: permission bits, read-only mounts, immutable folders, ACLs.
    try:
        handle, probe = tempfile.mkstemp(prefix=f".{path.name}.probe-", dir=parent)
    except OSError as exc:
        raise ConfigError(f"--output {path}: folder {parent} is not writable ({exc.strerror or exc})") from None
    os.close(handle)
    os.unlink(probe)


def write_predictions(predictions: list[Prediction], classes: tuple[str, ...], path: Path) -> None:
    """CSV or JSON lines, written atomically: a crash or a full disk leaves the previous file or none, never half."""
    path = Path(path)
    buffer = io.StringIO(newline="")  # the csv module writes its own \r\n; nothing may translate it
    _write_rows(buffer, predictions, classes, jsonl=path.suffix.lower() == ".jsonl")
    write_bytes_atomic(path, buffer.getvalue().encode("utf-8"))


def _write_rows(handle: io.TextIOBase, predictions: list[Prediction], classes: tuple[str, ...], jsonl: bool) -> None:
    if jsonl:
        for p in predictions:
            handle.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")
        return
    dimensions = list(predictions[0].dimensions or {}) if predictions else []
    fields = [*_CSV_FIELDS, *[f"p_{c}" for c in classes], *dimensions]
    writer = csv.DictWriter(handle, fieldnames=fields)
    writer.writeheader()
    for p in predictions:
        writer.writerow({k: _inert(v) for k, v in p.to_json().items()})


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _inert(value):
    """A text cell a spreadsheet would run as a formula gets a leading apostrophe (OWASP's CSV-injection advice);
    numbers and booleans are written as they are."""
    return "'" + value if isinstance(value, str) and value.startswith(_FORMULA_STARTS) else value
