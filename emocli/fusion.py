"""How the two views become one vector: picked by name, one module each, the same interface.

    concat  the paper: the two pooled vectors side by side
    gated   a gated multimodal unit (Arevalo et al. 2017): each view projected to D and mixed per dimension by a gate
            that sees both, so the model can lean on audio where the transcript says nothing
    xattn   cross-modal attention over the sequences: audio frames attend to tokens and tokens to frames (one
            layer each way, residual and layer norm), then each side is averaged over its valid positions
A single-view model uses `concat` of its one view. Names: B batch, S audio positions, L tokens, D fusion_hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

FUSIONS = ("concat", "gated", "xattn")


@dataclass
class View:
    """One modality as the fusion sees it: the pooled vector, or the sequence and its mask, or both."""

    pooled: torch.Tensor | None = None  # (B, W)
    seq: torch.Tensor | None = None  # (B, S, W)
    mask: torch.Tensor | None = None  # (B, S) bool, True where valid


class Fusion(nn.Module):
    needs_sequences: ClassVar[bool] = False  # True: the views carry seq and mask, not pooled
    out_features: int

    def forward(self, audio: View | None, text: View | None) -> torch.Tensor:
        raise NotImplementedError


class ConcatFusion(Fusion):
    def __init__(self, audio_features: int, text_features: int):
        super().__init__()
        self.out_features = audio_features + text_features

    def forward(self, audio: View | None, text: View | None) -> torch.Tensor:
        return torch.cat([v.pooled for v in (audio, text) if v is not None], dim=-1)  # (B, A + H)


class GatedFusion(Fusion):
    def __init__(self, audio_features: int, text_features: int, hidden: int):
        super().__init__()
        # Created in this order so that a seed gives the weights it gave before fusions became modules.
        self.audio_proj = nn.Linear(audio_features, hidden)
        self.text_proj = nn.Linear(text_features, hidden)
        self.gate = nn.Linear(audio_features + text_features, hidden)
        self.out_features = hidden

    def forward(self, audio: View | None, text: View | None) -> torch.Tensor:
        a, t = audio.pooled, text.pooled
        gate = torch.sigmoid(self.gate(torch.cat([a, t], dim=-1)))  # (B, D): share of audio per dimension
        return gate * torch.tanh(self.audio_proj(a)) + (1 - gate) * torch.tanh(self.text_proj(t))  # (B, D)


def masked_mean(seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, S, W), (B, S) -> (B, W); `where`, not a product: padded positions may hold NaN from attention."""
    kept = torch.where(mask[:, :, None], seq, 0.0).sum(1)
    return kept / mask.sum(1, keepdim=True).clamp(min=1).to(seq.dtype)


class CrossAttentionFusion(Fusion):
    needs_sequences = True

    def __init__(self, audio_features: int, text_features: int, hidden: int, heads: int, dropout: float):
        super().__init__()
        self.audio_in = nn.Linear(audio_features, hidden)
        self.text_in = nn.Linear(text_features, hidden)
        self.audio_to_text = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.text_to_audio = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.audio_norm = nn.LayerNorm(hidden)
        self.text_norm = nn.LayerNorm(hidden)
        self.out_features = 2 * hidden

    def forward(self, audio: View | None, text: View | None) -> torch.Tensor:
        a = self.audio_in(audio.seq)  # (B, S, D)
        t = self.text_in(text.seq.to(a.dtype))  # (B, L, D)
        # Each side's padding is hidden from the other's attention; a padded query row is dropped by the mean.
        a_att, _ = self.audio_to_text(a, t, t, key_padding_mask=~text.mask, need_weights=False)  # (B, S, D)
        t_att, _ = self.text_to_audio(t, a, a, key_padding_mask=~audio.mask, need_weights=False)  # (B, L, D)
        a = self.audio_norm(a + a_att)
        t = self.text_norm(t + t_att)
        return torch.cat([masked_mean(a, audio.mask), masked_mean(t, text.mask)], dim=-1)  # (B, 2D)


def build_fusion(name: str, audio_features: int, text_features: int, hidden: int, heads: int,
                 dropout: float) -> Fusion:
    """The fusion `name` for the given widths: pooled widths for concat and gated, sequence widths for xattn.
    A single-view model (one width 0) always concatenates, i.e. passes its one view through."""
    if name == "concat" or not (audio_features and text_features):
        return ConcatFusion(audio_features, text_features)
    if name == "gated":
        return GatedFusion(audio_features, text_features, hidden)
    if name == "xattn":
        return CrossAttentionFusion(audio_features, text_features, hidden, heads, dropout)
    raise ValueError(f"unknown fusion {name!r}")  # ModelConfig validated it: a bug if reached
