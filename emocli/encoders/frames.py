"""The head over a frozen pretrained speech encoder's hidden states (the "downstream" of s3prl and SUPERB).

The embedding stage stores L layers of D-wide frames per utterance; this module learns what to make of them:
a softmax-weighted sum of the standardised layers (SUPERB's featurizer: which layer carries emotion differs per
encoder), a per-frame projection to A with layer norm (optionally transformer layers over the frames), attentive
statistics pooling (Okabe et al. 2018: a learned weight per frame, then the weighted mean and standard deviation,
so emphatic frames can count more than silence), and a projection.
Names: B batch, T frames, L layers, D the upstream's width, A audio_hidden.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from emocli.encoders.branch import AudioEncoder
from emocli.errors import ConfigError

FRAME_STD_FLOOR = 1e-4  # a dimension that never varies must not divide by zero
_ATTENTION_HIDDEN = 128
_VARIANCE_FLOOR = 1e-6  # sqrt of 0 has no gradient


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """Softmax over `dim` where `mask` is True; masked entries get exactly 0 weight, whatever they held."""
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return torch.softmax(scores, dim=dim) * mask


class AttentiveStatsPooling(nn.Module):
    """(B, T, W) sequence and (B, T) mask -> (B, 2W): attention-weighted mean and standard deviation.

    The scoring layer starts at zero, so training starts from plain mean and standard deviation pooling (uniform
    weights): the statistics a logistic regression on frozen states uses, a strong start on a few hundred
    utterances; the attention then learns which frames count more.
    """

    def __init__(self, width: int, hidden: int = _ATTENTION_HIDDEN):
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.attention[-1].weight)
        nn.init.zeros_(self.attention[-1].bias)
        self.out_features = 2 * width

    def forward(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        seq = torch.where(mask[:, :, None], seq, 0.0)  # padding may hold anything: it must not reach a sum
        weights = masked_softmax(self.attention(seq).squeeze(-1).float(), mask, dim=1)[:, :, None]  # (B, T, 1)
        mean = (weights * seq).sum(1)  # (B, W)
        var = (weights * seq * seq).sum(1) - mean * mean  # (B, W)
        return torch.cat([mean, var.clamp(min=_VARIANCE_FLOOR).sqrt()], dim=-1)  # (B, 2W)


class FrameEncoder(AudioEncoder):
    """Frozen upstream frames (B, T, L, D) -> a sequence (B, T, A); `pool` -> attentive statistics (B, 2A) ->
    a projection to (B, A)."""

    feature = "frames"

    def __init__(self, n_layers: int, width: int, hidden: int, dropout: float, context: int = 0, heads: int = 4):
        super().__init__()
        if n_layers < 1 or width < 1:
            raise ConfigError(f"the audio frames must have at least one layer and one dimension, got {n_layers} "
                              f"layers of {width}")
        self.n_layers, self.width = n_layers, width
        # Per layer and dimension statistics of the training part, set by the trainer, saved with the weights.
        self.register_buffer("input_mean", torch.zeros(n_layers, width))
        self.register_buffer("input_std", torch.ones(n_layers, width))
        self.layer_logits = nn.Parameter(torch.zeros(n_layers))  # equal weights to start, as SUPERB
        # Each frame projected and layer-normalised before pooling: a per-frame reading that puts every frame on
        # one scale. On EmoDB it lifted the audio-only head from UA 0.846 (pooling the standardised frames
        # directly) to 0.885, the gain cross-modal attention had shown through its own projection and norm.
        self.frame_proj = nn.Sequential(nn.Linear(width, hidden), nn.LayerNorm(hidden))
        # Optional context: transformer layers over the projected frames, so each is read with its neighbours.
        self.context = None
        if context:
            layer = nn.TransformerEncoderLayer(hidden, heads, 2 * hidden, dropout, batch_first=True)
            self.context = nn.TransformerEncoder(layer, context, enable_nested_tensor=False)
        self.pooling = AttentiveStatsPooling(hidden)
        self.project = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.pooling.out_features, hidden), nn.GELU())
        self.seq_features, self.out_features = hidden, hidden

    @classmethod
    def from_config(cls, config) -> "FrameEncoder":
        upstream = config.audio_upstream
        return cls(int(upstream["n_layers"]), int(upstream["hidden_size"]), config.audio_hidden, config.dropout,
                   config.audio_context, config.attention_heads)

    def encode(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.arange(audio.size(1), device=audio.device)[None, :] < lengths[:, None]  # (B, T)
        x = (audio.to(self.input_mean.dtype) - self.input_mean) / self.input_std  # (B, T, L, D)
        x = torch.where(mask[:, :, None, None], x, 0.0)  # padding may be NaN in a hand-made batch: never let it in
        x = torch.einsum("btld,l->btd", x, torch.softmax(self.layer_logits, dim=0))  # (B, T, D)
        x = self.frame_proj(x)  # (B, T, A)
        if self.context is not None:
            x = self.context(x, src_key_padding_mask=~mask)  # (B, T, A)
        return torch.where(mask[:, :, None], x, 0.0), mask

    def pool(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.project(self.pooling(seq, mask))  # (B, A)

    def fit_inputs(self, values: np.ndarray, offsets: np.ndarray, indices: np.ndarray) -> None:
        """Statistics per layer and dimension of the frames of the utterances `indices`."""
        from emocli.batch import frame_stats

        self.set_input_stats(*map(torch.from_numpy, frame_stats(values, offsets, indices, FRAME_STD_FLOOR)))

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        shape = (self.n_layers, self.width)
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.numel() != self.n_layers * self.width or std.numel() != mean.numel():
            raise ConfigError(f"frame statistics must have {self.n_layers} x {self.width} values, got "
                              f"{mean.numel()} and {std.numel()}")
        self.input_mean.copy_(mean.view(shape))
        self.input_std.copy_(std.view(shape).clamp(min=FRAME_STD_FLOOR))

    def layer_weights(self) -> list[float]:
        """The learned share of each layer (which layers carry emotion)."""
        return torch.softmax(self.layer_logits.detach().float(), dim=0).tolist()

    def flops(self, n_frames: int) -> int:
        d, a = self.width, self.seq_features
        return n_frames * (2 * self.n_layers * d + 2 * d * a + 2 * a * _ATTENTION_HIDDEN) + 2 * 2 * a * a
