"""The raw waveform as a stage: what an end-to-end fine-tuned speech encoder reads (`--finetune-audio`).

Stored like any embedding stage (`emocli.embed`), one "frame" per sample, float16 as every stage and batch, so the
audio a model is fine-tuned on is the audio `predict` gives it: the cache's files, truncated and resampled as
prepare kept them.
"""

from __future__ import annotations

import numpy as np

from emocli.encoders.base import EmbedderInfo

KIND = "waveform"
SAMPLE_RATE_HZ = 16_000
WAVEFORM = EmbedderInfo(kind=KIND, name="waveform-16k", path="", weights_sha256="", sample_rate=SAMPLE_RATE_HZ,
                        n_layers=1, hidden_size=1, frame_rate_hz=float(SAMPLE_RATE_HZ))


class WaveformEmbedder:
    """The identity "encoder": (S,) audio -> (1, S, 1)."""

    info = WAVEFORM

    def embed(self, audio: np.ndarray) -> np.ndarray:
        return np.asarray(audio, dtype=np.float32)[None, :, None]
