"""The trainable audio branch: what the model needs of every audio encoder, whatever features it reads."""

from __future__ import annotations

from typing import ClassVar

import torch

FEATURE_KINDS = ("logmel", "frames", "waveform")
# logmel: the cache's own log-mel spectrogram, a batch of (B, T, n_mels) dB, 100 frames per second.
# frames: a frozen upstream's hidden states from the embedding stage, a batch of (B, T, L, D): L layers of width D.
# waveform: the 16 kHz audio from the waveform stage, a batch of (B, S, 1, 1), for end-to-end fine-tuning.


class AudioEncoder(torch.nn.Module):
    """What the model needs of an audio branch. Subclasses set `feature` and implement the three methods.

    `encode` must be exact under padding: an item's outputs may not depend on how long the batch is padded (the
    lengths say where each item ends), so that batched predictions equal one-by-one predictions.
    """

    feature: ClassVar[str] = "logmel"  # one of FEATURE_KINDS
    seq_features: int  # width of each element of the sequence `encode` returns
    out_features: int  # width of the vector `pool` returns

    @classmethod
    def from_config(cls, config) -> "AudioEncoder":  # config: emocli.model.ModelConfig
        raise NotImplementedError

    @classmethod
    def for_saved(cls, config) -> "AudioEncoder":
        """The branch to load a run's saved weights into (the same as `from_config` unless building it would load
        pretrained weights that the state dict replaces anyway)."""
        return cls.from_config(config)

    @property
    def padding_exact(self) -> bool:
        """True when a padded batch gives each item exactly what it gets alone (see `encode`)."""
        return True

    def encode(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, T, ...) as the batch builder gives it, lengths (B,) valid frames -> (B, S, seq_features)
        sequence and (B, S) bool mask of its valid elements."""
        raise NotImplementedError

    def pool(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, S, seq_features), (B, S) -> (B, out_features): the utterance vector concat and gated fusion read."""
        raise NotImplementedError

    def fit_inputs(self, values, offsets, indices) -> None:
        """Learn input normalisation from the training part, once per fold, before the first step: `values` (F, ...)
        every utterance's frames end to end as the cache or stage stores them, `offsets` (N + 1,), `indices` the
        training utterances. By default, per-feature mean and std of their frames."""
        from emocli.batch import frame_stats

        mean, std = frame_stats(values, offsets, indices, floor=0.0)
        self.set_input_stats(torch.from_numpy(mean), torch.from_numpy(std))

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-feature mean and std of the training part's frames (the trainer calls it once per fold)."""

    def flops(self, n_frames: int) -> int:
        """Forward FLOPs for one item of n_frames (for the benchmark's MFU); 0 when not counted."""
        return 0
