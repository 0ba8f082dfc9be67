"""Speech recognition for audio without a transcript: Whisper through faster-whisper, on the same pinned, packaged
CTranslate2 weights as the Whisper audio encoder (`emocli.encoders.whisper` resolves them and checks their sha256;
nothing is ever downloaded).

Decoding is greedy at temperature 0, without conditioning on earlier text: the same audio always gives the same
words, and a segment's transcript never depends on the segments before it. The confidence of a transcript is the
recogniser's own geometric-mean token probability, exp(mean log p), over every token it emitted.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emocli.errors import ConfigError, EncoderError

SAMPLE_RATE_HZ = 16_000
DEFAULT_ASR_MODEL = "whisper"  # Whisper tiny.en int8: 6x real time on one core for English speech
ASR_MODES = ("auto", "off")
TOKENS_PER_SECOND = 8.0  # fast speech is ~4 words (~5-6 tokens) a second
MIN_TOKENS = 8
MAX_TOKENS = 220  # Whisper's decoder holds 448 positions, half of them for the prompt


@dataclass(frozen=True)
class AsrConfig:
    model: str = DEFAULT_ASR_MODEL
    compute_type: str = "int8"
    language: str | None = None  # None: English for an English-only model, detected for a multilingual one
    beam_size: int = 1

    def to_json(self) -> dict:
        return {"model": self.model, "compute_type": self.compute_type, "language": self.language,
                "beam_size": self.beam_size}


@dataclass(frozen=True)
class Transcript:
    text: str  # "" when the recogniser heard no words
    confidence: float | None  # exp(mean token log-probability); None when no token was emitted
    language: str | None = None


def recogniser_identity(config: AsrConfig) -> dict:
    """What transcripts made with `config` depend on (the weights' sha256 and the decoding), without loading."""
    from emocli.encoders.whisper import resolve_whisper

    info = resolve_whisper(config.model, config.compute_type)
    return {"weights_sha256": info.weights_sha256, **config.to_json(), "decoding": _DECODING}


_DECODING = "greedy-t0-v2"  # bump when transcribe() decodes differently


class Recogniser:
    """A loaded Whisper recogniser; `transcribe` one utterance (16 kHz mono float32) at a time."""

    def __init__(self, model, name: str, weights_sha256: str, english_only: bool, config: AsrConfig):
        self._model, self.name, self.weights_sha256 = model, name, weights_sha256
        self.english_only, self.config = english_only, config

    @classmethod
    def load(cls, config: AsrConfig = AsrConfig(), device: str = "cpu", threads: int = 0) -> "Recogniser":
        from emocli.encoders.whisper import available_cores, file_sha256, resolve_whisper

        info = resolve_whisper(config.model, config.compute_type)
        folder = Path(info.path)
        if file_sha256(folder / "model.bin") != info.weights_sha256:  # changed between resolving and loading
            raise EncoderError(f"{folder / 'model.bin'} changed while it was being loaded; run the command again")
        if not (folder / "tokenizer.json").is_file():
            raise EncoderError(f"{folder} has no tokenizer.json, which speech recognition needs; use a Whisper "
                               f"folder converted with its tokenizer (ct2-transformers-converter --copy_files "
                               f"tokenizer.json)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: the path given is always a local folder
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise ConfigError("speech recognition needs the package faster-whisper; install it with "
                              "`pip install faster-whisper`, or pass --asr off") from None
        try:
            model = WhisperModel(str(folder), device=device, compute_type=config.compute_type,
                                 cpu_threads=threads or available_cores(), local_files_only=True)
        except Exception as exc:  # CTranslate2's RuntimeError/ValueError, multi-line
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise EncoderError(f"cannot load {folder} for speech recognition ({reason})") from None
        return cls(model, info.name, info.weights_sha256, not model.model.is_multilingual, config)

    def transcribe(self, audio: np.ndarray) -> Transcript:
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise EncoderError(f"speech recognition takes mono audio of shape (samples,), got {audio.shape}")
        if audio.size < SAMPLE_RATE_HZ // 10 or not np.any(audio):
            return Transcript("", None)
        language = self.config.language or ("en" if self.english_only else None)
        # Greedy decoding can loop ("see how we can see how we can ..." on speech in another language): no one
        # speaks more than ~8 tokens a second, so the output is capped at that (and at Whisper's own limit).
        max_tokens = int(min(MAX_TOKENS, MIN_TOKENS + TOKENS_PER_SECOND * audio.size / SAMPLE_RATE_HZ))
        segments, info = self._model.transcribe(
            audio, language=language, beam_size=self.config.beam_size, temperature=0.0,
            condition_on_previous_text=False, without_timestamps=True, vad_filter=False, word_timestamps=False,
            max_new_tokens=max_tokens)
        texts, logprob_sum, tokens = [], 0.0, 0
        for segment in segments:  # a generator: decoding happens here
            texts.append(segment.text.strip())
            n = max(len(segment.tokens), 1)
            logprob_sum += segment.avg_logprob * n
            tokens += n
        text = " ".join(t for t in texts if t)
        confidence = math.exp(logprob_sum / tokens) if tokens and text else None
        return Transcript(text, confidence, getattr(info, "language", None))


# --------------------------------------------------------------------------------------------- word error rate

_TAG = re.compile(r"\[[^\]]*\]|<[^>]*>")  # IEMOCAP's [LAUGHTER], [BREATHING], <noise>
_NOT_WORD = re.compile(r"[^\w'\s]")


def normalise_for_wer(text: str) -> list[str]:
    """The words compared by WER: non-speech tags dropped, case and punctuation ignored, Unicode composed, so
    "Don't!" and "don't" agree (as in the field's usual Whisper normalisation, simplified)."""
    text = unicodedata.normalize("NFC", _TAG.sub(" ", text)).lower()
    return _NOT_WORD.sub(" ", text.replace("’", "'")).split()


def word_errors(reference: str, hypothesis: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words): the Levenshtein distance over words."""
    ref, hyp = normalise_for_wer(reference), normalise_for_wer(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h))
        previous = current
    return previous[-1], len(ref)


def corpus_wer(references: list[str], hypotheses: list[str]) -> float | None:
    """Word error rate over a corpus: total errors over total reference words (not a mean of per-utterance rates);
    None when the references hold no words."""
    errors = words = 0
    for reference, hypothesis in zip(references, hypotheses):
        e, n = word_errors(reference, hypothesis)
        errors, words = errors + e, words + n
    return errors / words if words else None
