"""What every frozen pretrained speech encoder ("upstream", as s3prl calls it) gives the rest of emocli.

An `Embedder` turns 16 kHz mono float32 audio into its hidden states, one (T, hidden) matrix per layer it exposes.
The embedding stage stores them (`emocli.embed`), the model's audio head reads them (`emocli.encoders.frames`), and
`predict` calls the very same `embed` on a new file. Nothing downstream knows which encoder produced them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class EmbedderInfo:
    """A resolved, not yet loaded, speech encoder: where it is and what it produces."""

    kind: str  # "whisper-ct2" (CTranslate2 Whisper encoder) | "hf" (a transformers speech encoder folder)
    name: str  # as the user named it: "whisper", "whisper-base", or the folder
    path: str  # the folder holding the weights
    weights_sha256: str  # of the weights file(s) as loaded: part of every stage fingerprint
    sample_rate: int  # Hz of the audio `embed` takes (16000 for all known encoders)
    n_layers: int  # matrices per utterance `embed` returns (1 for CTranslate2 Whisper: its last layer only)
    hidden_size: int  # width of each frame
    frame_rate_hz: float  # frames per second of audio (50 for Whisper and wav2vec2-family encoders)
    settings: dict = field(default_factory=dict)  # what changes the numbers: compute type, model type, ...

    def identity(self) -> dict:
        """What a stage's fingerprint covers: not the path or name, only what decides the numbers."""
        data = asdict(self)
        data.pop("path")
        data.pop("name")
        return data

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "EmbedderInfo":
        """From a run's or stage's JSON, which is untrusted input: EncoderError unless it has exactly our fields."""
        from dataclasses import fields

        from emocli.errors import EncoderError

        known = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) - {"settings"} != known - {"settings"}:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise EncoderError(f"the recorded speech encoder has fields {got}, expected {sorted(known)}: it was "
                               f"written by another emocli version — retrain into a new --run")
        return cls(**data)


class Embedder(Protocol):
    info: EmbedderInfo

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """float32 mono audio at info.sample_rate, shape (S,) -> (n_layers, T, hidden_size) float32 hidden states,
        T about S / sample_rate * frame_rate_hz. Deterministic: the same audio gives the same numbers."""
        ...

