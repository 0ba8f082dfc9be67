"""Run a folder written by `emocli export --format onnx` with numpy and onnxruntime only: no torch, no emocli.

This file is copied into every exported folder; it needs numpy and onnxruntime, and soundfile (and soxr, for rates
other than the model's) only to read audio files. A model that reads transcripts with a BERT WordPiece tokenizer
(all-MiniLM-L6-v2, bert-base-uncased, ...) is tokenised by this file's own `WordPiece`; only another kind of
tokenizer.json needs the `tokenizers` library.

    from onnx_runner import OnnxEmotionModel          # or: from emocli.onnx_runner import ...
    model = OnnxEmotionModel("exported/")
    model.predict(waveform, 16000, "I can't believe it")   # {"angry": 0.71, "happy": 0.05, ...}
    model.predict_file("clip.wav", text=None)                # audio alone (a fused model handles it)
    model.predict_batch([w1, w2], 16000, ["hello", None])    # the same numbers as one by one

What the graph reads (config.json "onnx" lists names, dtypes and shapes; B, T and L are dynamic):
    features (B, T, n_mels) float32   log-mel dB, zero past each item's end
    feature_lengths (B,) int64        valid frames of each item
    input_ids, attention_mask (B, L) int64, text_present (B,) bool   (models that read text)
and returns `probs` (B, C) softmax probabilities in config.json's class order ("labels": codes "classes", names
"names"), and/or `dimensions` (B, 3) valence, arousal, dominance for a model trained to predict them (task
dimensions or both). Padding never changes an item's result.

The front end, outside the graph, reproduces emocli's `features.log_mel` step by step:
  1. mono float32 at the run's sample rate (soxr "HQ" resampling, as librosa's soxr_hq), cut to max_seconds;
     shorter than min_seconds or a peak below silence_peak is refused, as `emocli predict` refuses it;
  2. centred STFT: zero padding of n_fft/2 on both sides, frames every hop_length samples, the periodic Hann window
     of win_length centred in n_fft (frontend.npz "window"), |rfft|^2;
  3. mel power = power @ mel_filters.T (frontend.npz "mel_filters", emocli's own Slaney filterbank saved at export,
     so it is exact by construction; summed over each band's non-zero bins), floored at 1e-10, 10 * log10;
  4. rounded to float16 and back, as emocli's cache stores features and its predictor rounds them.
numpy's FFT and sums differ from emocli's (scipy) in float32 rounding only: about one value in 5000 lands one
float16 step (0.03 dB) away, which moves the probabilities by about 1e-7.
Tokenisation is the run's own tokenizer.json, read by `WordPiece` below (plain Python; the export checks that it
gives emocli's token ids, and config.json "tokenizer" "engine" says so) or else run by the `tokenizers` library,
truncated and padded to max_tokens exactly as emocli does, then trimmed to the batch's longest transcript. A missing or blank transcript is tokenised as "" with text_present False: the model then uses
its learned missing-text embedding.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

EXPORT_FORMAT = 1  # the config.json layout this runner reads
LOG_FLOOR_POWER = 1e-10  # -100 dB, as emocli.features


class OnnxEmotionModel:
    """An exported emocli classifier: waveforms (and transcripts) in, class probabilities out."""

    def __init__(self, folder: str | Path, threads: int | None = None, verify: bool = True):
        """`threads`: onnxruntime's intra-op threads (None: its default, every core); `verify`: check the graph's
        sha256 against config.json before loading it."""
        self.folder = Path(folder)
        self.config = _read_config(self.folder)
        onnx = self.config["onnx"]
        graph = self.folder / onnx["file"]
        if verify and _sha256(graph) != onnx["sha256"]:
            raise ValueError(f"{graph} does not match the sha256 in config.json: the file was changed or damaged; "
                             f"export the run again")
        self.features = self.config["features"]
        labels = self.config["labels"]
        self.codes: tuple[str, ...] = tuple(labels["classes"])  # the corpus's class codes ("ang", ...)
        # What results are keyed by, as in `emocli predict`: the class names ("angry", ...), in output order.
        self.classes: tuple[str, ...] = tuple(labels["names"])
        self.dimension_names: tuple[str, ...] = tuple(self.config.get("dimensions") or ())
        if set(self.classes) & set(self.dimension_names):
            raise ValueError(f"{self.folder}: a class is named like a dimension; results could not tell them apart")
        self.input_names = tuple(i["name"] for i in onnx["inputs"])
        self.output_names = tuple(o["name"] for o in onnx["outputs"])
        if "probs" not in self.output_names:  # a dimensions-only model: no classes, as emocli.load says too
            self.classes = ()
        self.uses_audio = "features" in self.input_names
        self.uses_text = "input_ids" in self.input_names
        self.front_end = None
        if self.uses_audio:
            arrays = np.load(self.folder / self.config["frontend"]["file"], allow_pickle=False)
            self.front_end = FrontEnd(self.features, arrays["window"], arrays["mel_filters"])
        self._tokenizer = self._load_tokenizer() if self.uses_text else None
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: its graph-optimisation notes are not the user's business
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])

    # -- inputs ------------------------------------------------------------------------------------------------------

    def log_mel(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """(T, n_mels) float32 log-mel dB of one waveform, as emocli computes it (see `FrontEnd`)."""
        return self.front_end.log_mel(waveform, sample_rate)

    def read_audio(self, path: str | Path) -> tuple[np.ndarray, int]:
        """(samples (N, channels) float32, rate) of an audio file, read as emocli reads it: at most max_seconds."""
        import soundfile as sf

        with sf.SoundFile(str(path)) as handle:
            frames = -1
            if self.features["max_seconds"] > 0:
                frames = int(math.ceil(self.features["max_seconds"] * handle.samplerate))
            return handle.read(frames=frames, dtype="float32", always_2d=True), handle.samplerate

    def tokenize(self, texts: Sequence[str | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(input_ids (B, L) int64, attention_mask (B, L) int64, text_present (B,) bool), L the longest of the batch."""
        present = np.array([_clean(t) is not None for t in texts], dtype=bool)
        encodings = self._tokenizer.encode_batch([_clean(t) or "" for t in texts])
        ids = np.array([e.ids for e in encodings], dtype=np.int64).reshape(len(texts), -1)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64).reshape(len(texts), -1)
        width = max(int(mask.sum(axis=1).max(initial=0)), 1)  # padding columns no row uses are trimmed
        return ids[:, :width], mask[:, :width], present

    def _load_tokenizer(self):
        info = self.config["tokenizer"]
        data = json.loads((self.folder / info["file"]).read_text(encoding="utf-8"))
        if info.get("engine") == "wordpiece":  # BERT's WordPiece, checked at export: this file's own implementation
            return WordPiece(data, int(self.features["max_tokens"]), int(info["pad_id"]))
        from tokenizers import Tokenizer  # any other tokenizer.json: the library that defines the format

        tokenizer = Tokenizer.from_str(json.dumps(data))
        # tokenizer.json may carry its own truncation and padding: emocli's replace them.
        tokenizer.enable_truncation(max_length=int(self.features["max_tokens"]))
        tokenizer.enable_padding(length=int(self.features["max_tokens"]), pad_id=int(info["pad_id"]),
                                 pad_token=info["pad_token"])
        return tokenizer

    # -- prediction --------------------------------------------------------------------------------------------------

    def run(self, features: Sequence[np.ndarray] | None, texts: Sequence[str | None] | None) -> dict[str, np.ndarray]:
        """The graph on one batch: `features` each (T_i, n_mels) from `log_mel` (None for a text-only model),
        `texts` one transcript or None each (None for an audio-only model). Returns {output name: (B, ...) array}."""
        feeds = {}
        count = len(features) if features is not None else len(texts)
        if self.uses_audio:
            lengths = np.array([len(f) for f in features], dtype=np.int64)
            batch = np.zeros((count, max(int(lengths.max()), 1), self.front_end.n_mels), dtype=np.float32)
            for row, f in zip(batch, features):
                row[:len(f)] = f
            feeds["features"], feeds["feature_lengths"] = batch, lengths
        if self.uses_text:
            texts = list(texts) if texts is not None else [None] * count
            feeds["input_ids"], feeds["attention_mask"], feeds["text_present"] = self.tokenize(texts)
        return dict(zip(self.output_names, self.session.run(list(self.output_names), feeds)))

    def predict_batch(self, waveforms: Sequence[np.ndarray | None], sample_rate: int | Sequence[int],
                      texts: Sequence[str | None] | None = None, batch_size: int = 16) -> list[dict[str, float]]:
        """One dict per item, as `predict`; items are batched by similar length (results come back in input order)."""
        rates = [sample_rate] * len(waveforms) if isinstance(sample_rate, (int, np.integer)) else list(sample_rate)
        texts = [None] * len(waveforms) if texts is None else list(texts)
        if not len(rates) == len(texts) == len(waveforms):
            raise ValueError(f"{len(waveforms)} waveforms, {len(rates)} sample rates and {len(texts)} texts")
        if self.uses_text and not self.uses_audio and any(_clean(t) is None for t in texts):
            raise ValueError("this model reads transcripts only: every item needs a text")
        feats = [self.log_mel(w, r) for w, r in zip(waveforms, rates)] if self.uses_audio else None
        order = sorted(range(len(texts)), key=lambda i: len(feats[i])) if feats is not None else range(len(texts))
        order = list(order)
        results: list[dict[str, float] | None] = [None] * len(texts)
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            outputs = self.run([feats[i] for i in chosen] if feats is not None else None, [texts[i] for i in chosen])
            for row, index in enumerate(chosen):
                results[index] = self._as_dict(outputs, row)
        return results

    def predict(self, waveform: np.ndarray | None, sample_rate: int, text: str | None = None) -> dict[str, float]:
        """{class name: probability} in the model's class order ("angry", "happy", ... as `emocli predict` names
        them), and valence, arousal, dominance for a model that predicts them. `waveform` float samples in [-1, 1],
        (samples,) or (samples, channels), at any rate; None for a text-only model."""
        return self.predict_batch([waveform], sample_rate, [text])[0]

    def predict_file(self, path: str | Path, text: str | None = None) -> dict[str, float]:
        waveform, rate = self.read_audio(path) if self.uses_audio else (None, self.features["sample_rate"])
        return self.predict(waveform, rate, text)

    def label(self, result: dict[str, float]) -> str | None:
        """The most probable class's name ("angry"); None for a model that predicts dimensions only."""
        return max(self.classes, key=lambda c: result[c]) if self.classes else None

    def _as_dict(self, outputs: dict[str, np.ndarray], row: int) -> dict[str, float]:
        result = {}
        if "probs" in outputs:
            result.update(zip(self.classes, map(float, outputs["probs"][row])))
        if "dimensions" in outputs:
            result.update(zip(self.dimension_names, map(float, outputs["dimensions"][row])))
        return result


class FrontEnd:
    """emocli's log-mel front end in numpy: `features` is the run's feature config (config.json "features"),
    `window` (n_fft,) and `mel_filters` (n_mels, n_fft/2+1) emocli's own, from frontend.npz."""

    def __init__(self, features: dict, window: np.ndarray, mel_filters: np.ndarray):
        self.features = features
        self.window = np.asarray(window, dtype=np.float32)  # (n_fft,)
        self.n_mels = len(mel_filters)
        self._bins, self._weights, self._starts, self._empty = _sparse_bands(mel_filters)

    def log_mel(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """(T, n_mels) float32 log-mel dB of one mono or (samples, channels) waveform, T = 1 + samples // hop."""
        fe = self.features
        audio = self.audio(waveform, sample_rate)
        n_fft, hop = fe["n_fft"], fe["hop_length"]
        pad = n_fft // 2
        padded = np.pad(audio, (pad, pad), mode="constant")
        n_frames = 1 + (padded.size - n_fft) // hop
        frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:n_frames]  # (T, n_fft)
        spectrum = np.fft.rfft(frames * self.window, axis=1)  # (T, n_fft/2+1)
        power = np.abs(spectrum).astype(np.float32)
        power *= power
        # Each mel band spans a few FFT bins (98 % of the filterbank is zeros): the bins' weighted sum per band,
        # which is the sum emocli's sparse product computes, and keeps clear of BLAS (whose threads cost more than
        # this product).
        mel = np.add.reduceat(power[:, self._bins] * self._weights, self._starts, axis=1)  # (T, n_mels)
        mel[:, self._empty] = 0.0
        np.maximum(mel, LOG_FLOOR_POWER, out=mel)
        np.log10(mel, out=mel)
        mel *= 10.0
        return mel.astype(np.float16).astype(np.float32)  # the cache's precision, which the model was trained on

    def audio(self, waveform: np.ndarray, sample_rate: int) -> np.ndarray:
        """Float32 mono at the model's rate, cut to max_seconds; ValueError for audio emocli would refuse."""
        fe = self.features
        audio = np.asarray(waveform)
        if audio.ndim not in (1, 2):
            raise ValueError(f"a waveform must be (samples,) or (samples, channels), not {audio.shape}")
        if not np.issubdtype(audio.dtype, np.floating):
            raise ValueError("pass float samples in [-1, 1] (e.g. int16 / 32768), not integers")
        if not np.all(np.isfinite(audio)):
            raise ValueError("the waveform holds NaN or infinite samples")
        # emocli.features.load_audio's order: clip each channel, mix to mono, resample, clip again.
        audio = np.clip(audio.astype(np.float32, copy=False), -1.0, 1.0)
        if audio.ndim == 2:
            audio = audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1)
        rate = int(fe["sample_rate"])
        if sample_rate != rate:
            import soxr

            # librosa.resample(res_type="soxr_hq"), which emocli calls: soxr HQ, then fixed to ceil(n * ratio).
            size = int(math.ceil(audio.size * rate / sample_rate))
            audio = soxr.resample(audio, sample_rate, rate, quality="HQ").astype(np.float32)
            audio = np.pad(audio, (0, max(0, size - audio.size)))[:size]
            audio = np.clip(audio, -1.0, 1.0)
        if fe["max_seconds"] > 0:
            audio = audio[:int(fe["max_seconds"] * rate)]
        if audio.size < fe["min_seconds"] * rate:
            raise ValueError(f"the audio lasts {audio.size / rate:.3f} s, shorter than {fe['min_seconds']} s")
        if not audio.size or float(np.abs(audio).max()) < fe["silence_peak"]:
            raise ValueError(f"the audio is silent (peak amplitude below {fe['silence_peak']})")
        return audio


def _sparse_bands(filters: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(bins, weights, starts, empty) of a (n_mels, n_fft/2+1) filterbank: band m sums power[:, bins[k]] *
    weights[k] for k from starts[m] to the next band's start, its non-zero bins in ascending order; `empty` marks
    bands without a bin (many mels over a short FFT), which np.add.reduceat cannot express: they are set to 0."""
    filters = np.asarray(filters, dtype=np.float32)
    rows, bins = np.nonzero(filters)  # row-major: grouped by band, bins ascending
    starts = np.searchsorted(rows, np.arange(len(filters)))
    empty = np.bincount(rows, minlength=len(filters)) == 0
    return bins, filters[rows, bins], np.minimum(starts, max(len(bins) - 1, 0)), empty


class _Encoding:
    def __init__(self, ids: list[int], attention_mask: list[int]):
        self.ids, self.attention_mask = ids, attention_mask


class WordPiece:
    """BERT's tokenizer from its tokenizer.json, in plain Python, so a text model's export runs on numpy and
    onnxruntime alone: the same steps as the `tokenizers` library's BertNormalizer (control characters removed,
    whitespace to spaces, CJK characters spaced, accents stripped when lower-casing, lower case), BertPreTokenizer
    (split on whitespace and around each punctuation character), WordPiece (greedy longest match, `##` for a
    continuation, a word that cannot be covered or is too long is one [UNK]) and the [CLS] ... [SEP] template,
    truncated and padded to max_tokens. The export checks it against emocli's own token ids before writing."""

    @staticmethod
    def reads(data: dict) -> bool:
        """True for a tokenizer.json this class reproduces exactly (uncased or cased BERT WordPiece)."""
        model, normalizer = data.get("model") or {}, data.get("normalizer") or {}
        post = data.get("post_processor") or {}
        single = [next(iter(step.values()))["id"] for step in post.get("single", [])] if post.get("type") == \
            "TemplateProcessing" else []
        return (model.get("type") == "WordPiece" and normalizer.get("type") == "BertNormalizer"
                and (data.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
                and single == ["[CLS]", "A", "[SEP]"])

    def __init__(self, data: dict, max_tokens: int, pad_id: int):
        model, normalizer = data["model"], data["normalizer"]
        self.vocab: dict[str, int] = model["vocab"]
        self.unk = self.vocab[model["unk_token"]]
        self.prefix = model.get("continuing_subword_prefix", "##")
        self.max_chars = int(model.get("max_input_chars_per_word", 100))
        self.lowercase = bool(normalizer.get("lowercase", True))
        accents = normalizer.get("strip_accents")
        self.strip_accents = self.lowercase if accents is None else bool(accents)
        self.clean_text = bool(normalizer.get("clean_text", True))
        self.chinese = bool(normalizer.get("handle_chinese_chars", True))
        # Added tokens ([CLS], [SEP], ...) written in a text are taken as themselves, before any normalisation.
        self.added = sorted(((t["content"], t["id"]) for t in data.get("added_tokens", []) if t.get("special")),
                            key=lambda item: -len(item[0]))
        self.cls, self.sep = self.vocab["[CLS]"], self.vocab["[SEP]"]
        self.max_tokens, self.pad_id = max_tokens, pad_id

    def encode_batch(self, texts: Sequence[str]) -> list[_Encoding]:
        return [self.encode(text) for text in texts]

    def encode(self, text: str) -> _Encoding:
        ids = [self.cls, *self._ids(text)[:max(self.max_tokens - 2, 0)], self.sep][:self.max_tokens]
        pad = self.max_tokens - len(ids)
        return _Encoding(ids + [self.pad_id] * pad, [1] * len(ids) + [0] * pad)

    def _ids(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece, special in self._split_added(text):
            if special is not None:
                ids.append(special)
                continue
            for word in _bert_words(self._normalise(piece)):
                ids.extend(self._word_ids(word))
        return ids

    def _split_added(self, text: str) -> list[tuple[str, int | None]]:
        pieces: list[tuple[str, int | None]] = []
        start = i = 0
        while i < len(text):
            match = next(((content, token) for content, token in self.added if text.startswith(content, i)), None)
            if match is None:
                i += 1
                continue
            pieces += [(text[start:i], None), ("", match[1])]
            i = start = i + len(match[0])
        pieces.append((text[start:], None))
        return pieces

    def _normalise(self, text: str) -> str:
        import unicodedata

        if self.clean_text:
            text = "".join(" " if _is_whitespace(c) else c for c in text
                           if not (c in "\x00\ufffd" or _is_control(c)))
        if self.chinese:
            text = "".join(f" {c} " if _is_cjk(c) else c for c in text)
        if self.strip_accents:
            text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
        return text.lower() if self.lowercase else text

    def _word_ids(self, word: str) -> list[int]:
        if len(word) > self.max_chars:
            return [self.unk]
        ids, start = [], 0
        while start < len(word):
            end, found = len(word), None
            while start < end:
                piece = (self.prefix if start else "") + word[start:end]
                if piece in self.vocab:
                    found = self.vocab[piece]
                    break
                end -= 1
            if found is None:
                return [self.unk]
            ids.append(found)
            start = end
        return ids


def _is_whitespace(c: str) -> bool:
    return c in " \t\n\r" or (c.isspace() and not _is_control(c))


def _is_control(c: str) -> bool:
    import unicodedata

    # Cc, Cf, Co, Cs as the library's `is_other`; unassigned code points (Cn) stay, and become [UNK]
    return c not in "\t\n\r" and unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs")


def _is_punctuation(c: str) -> bool:
    import unicodedata

    return (c.isascii() and not c.isalnum() and c.isprintable() and not c.isspace()) \
        or unicodedata.category(c).startswith("P")


def _is_cjk(c: str) -> bool:
    cp = ord(c)
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)


def _bert_words(text: str) -> list[str]:
    """BertPreTokenizer: whitespace separates words; every punctuation character is a word of its own."""
    words: list[str] = []
    for chunk in text.split():
        current = ""
        for c in chunk:
            if _is_punctuation(c):
                if current:
                    words.append(current)
                words.append(c)
                current = ""
            else:
                current += c
        if current:
            words.append(current)
    return words


def _clean(text: str | None) -> str | None:
    """Whitespace collapsed as emocli's predictor does; a blank transcript is no transcript."""
    return None if text is None else (" ".join(text.split()) or None)


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{folder} has no config.json; pass a folder written by `emocli export`") from None
    if not isinstance(config, dict) or not config.get("emocli_export"):
        raise ValueError(f"{path} is not an emocli export's config; pass a folder written by `emocli export`")
    if config.get("export_format") != EXPORT_FORMAT:
        raise ValueError(f"{path} has export format {config.get('export_format')}, this runner reads {EXPORT_FORMAT}; "
                         f"use the onnx_runner.py inside that folder")
    return config


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _main(argv: list[str] | None = None) -> int:
    """`python onnx_runner.py FOLDER AUDIO [TRANSCRIPT]`: one JSON object of probabilities (and dimensions)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3):
        print("usage: python onnx_runner.py EXPORTED_FOLDER AUDIO_FILE [TRANSCRIPT]", file=sys.stderr)
        return 1
    try:
        result = OnnxEmotionModel(args[0]).predict_file(args[1], text=args[2] if len(args) == 3 else None)
    except Exception as exc:  # a script's user wants the reason in one line, whatever the library raised
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
