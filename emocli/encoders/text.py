"""The text branch: a BERT-family encoder (the packaged MiniLM, or any local BERT folder) and its pooling.

Names: B batch, L tokens, H the encoder's hidden size.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from emocli.errors import ConfigError, TextModelError

POOLINGS = ("mean", "cls")


class TextEncoder(nn.Module):
    """A Hugging Face encoder and its pooling: (B, L) token ids -> (B, H) sentence embedding."""

    def __init__(self, encoder: nn.Module, pooling: str = "mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"text pooling {pooling!r} is not one of {', '.join(POOLINGS)}")
        self.encoder, self.pooling = encoder, pooling

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path, pooling: str = "mean") -> "TextEncoder":
        """The packaged MiniLM or a local BERT folder, weights checked; never touches a hub."""
        from emocli.text_model import load_encoder, resolve_text_model

        return cls(load_encoder(resolve_text_model(name_or_dir)), pooling)

    @classmethod
    def from_config(cls, hf_config: dict, pooling: str = "mean") -> "TextEncoder":
        """The same architecture with untrained weights, from `hf_config()` of a saved model: a run directory
        rebuilds its encoder from this and its own weights, without the original folder."""
        from emocli.bert import NativeBert, native_support
        from emocli.text_model import BERT_FAMILY

        model_type = hf_config.get("model_type")
        if model_type not in BERT_FAMILY:
            raise TextModelError(f"the saved text encoder is a {model_type or 'unknown'} model, not a BERT-family "
                                 f"encoder ({', '.join(sorted(BERT_FAMILY))})")
        if native_support(hf_config) is None:
            return cls(NativeBert(hf_config), pooling)
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.for_model(**hf_config)
        return cls(AutoModel.from_config(config), pooling)

    def hf_config(self) -> dict:
        return self.encoder.config.to_dict()

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.encoder.config.vocab_size)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L) token ids and mask -> (B, L, H) hidden states and the (B, L) bool mask of real tokens."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        return hidden, attention_mask.bool()

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, H), (B, L) -> (B, H) sentence embedding: the mean over real tokens (sentence-transformers) or [CLS]."""
        if self.pooling == "cls":
            return hidden[:, 0]  # (B, H)
        weights = mask.to(hidden.dtype)[:, :, None]  # (B, L, 1)
        # An empty transcript has no tokens: clamp avoids 0/0 (its embedding is replaced by the missing one).
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (B, H)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.pool(*self.encode(input_ids, attention_mask))  # (B, H)

    def flops(self, n_tokens: int) -> int:
        """Forward FLOPs of the transformer layers' matmuls for one item of n_tokens (embeddings and norms,
        a rounding error, left out)."""
        c = self.encoder.config
        h, i, layers, n = c.hidden_size, c.intermediate_size, c.num_hidden_layers, n_tokens
        per_layer = 2 * n * 4 * h * h + 2 * 2 * n * n * h + 2 * 2 * n * h * i  # Q,K,V,O; QK^T and AV; FFN
        return layers * per_layer
