"""A BERT encoder in plain torch, parameter for parameter the same as transformers' `BertModel`.

Why not transformers' own: importing `transformers.BertModel` costs about 4 s before any work (torch's own import
is 1.4 s), which alone broke `emocli predict`'s cold-start budget. This module loads the same safetensors files
and computes the same hidden states (tests compare it with transformers on random and packaged weights), with
`scaled_dot_product_attention` so a GPU gets its fused attention kernels. Only plain BERT is built here
(absolute position embeddings, gelu/relu); any other encoder of the BERT family still goes through
transformers (`text_model.load_encoder`).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from emocli.errors import TextModelError

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),  # transformers' "gelu" is the exact, erf-based one
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


@dataclass(frozen=True)
class BertSettings:
    """The architecture numbers of a Hugging Face BERT config.json (what the weights' shapes depend on)."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12


def native_support(config: dict) -> str | None:
    """Why this config cannot be run natively, or None when it can."""
    if config.get("model_type") != "bert":
        return f"model type {config.get('model_type')!r} is not plain BERT"
    if config.get("position_embedding_type", "absolute") != "absolute":
        return f"position embeddings {config.get('position_embedding_type')!r} are not absolute"
    if config.get("hidden_act", "gelu") not in ACTIVATIONS:
        return f"activation {config.get('hidden_act')!r} is not one of {', '.join(ACTIVATIONS)}"
    if config.get("is_decoder") or config.get("add_cross_attention"):
        return "it is configured as a decoder"
    return None


def bert_settings(config: dict) -> BertSettings:
    """The numbers of a config.json, checked: a missing or absurd one is a clear error, not a shape crash."""
    reason = native_support(config)
    if reason is not None:
        raise TextModelError(f"cannot build the text encoder natively: {reason}")
    values = {}
    for name, field in BertSettings.__dataclass_fields__.items():
        if name not in config:
            if field.default is not MISSING:  # optional, with transformers' default
                continue
            raise TextModelError(f"the text encoder's config.json lacks {name!r}")
        values[name] = config[name]
    try:
        settings = BertSettings(**values)
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            value = getattr(settings, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 1 << 20:
                raise ValueError(f"{name} = {value!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "layer_norm_eps"):
            value = getattr(settings, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{name} = {value!r}")
        if settings.hidden_size % settings.num_attention_heads:
            raise ValueError(f"hidden_size {settings.hidden_size} is not a multiple of "
                             f"num_attention_heads {settings.num_attention_heads}")
    except (TypeError, ValueError) as exc:
        raise TextModelError(f"the text encoder's config.json is not a valid BERT config: {exc}") from None
    return settings


class _Config:
    """What callers read of a transformers config: attributes, and `to_dict()` for saving next to the weights."""

    def __init__(self, raw: dict, settings: BertSettings):
        self._raw = dict(raw)
        for name, value in settings.__dict__.items():
            setattr(self, name, value)

    def to_dict(self) -> dict:
        return dict(self._raw)


class _Dense(nn.Module):
    """A linear layer under transformers' names (`dense`), optionally with the residual LayerNorm of BERT."""

    def __init__(self, n_in: int, n_out: int, eps: float | None = None):
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)
        if eps is not None:
            self.LayerNorm = nn.LayerNorm(n_out, eps=eps)


class _SelfAttention(nn.Module):
    def __init__(self, s: BertSettings):
        super().__init__()
        self.query = nn.Linear(s.hidden_size, s.hidden_size)
        self.key = nn.Linear(s.hidden_size, s.hidden_size)
        self.value = nn.Linear(s.hidden_size, s.hidden_size)


class _Attention(nn.Module):
    def __init__(self, s: BertSettings):
        super().__init__()
        self.self = _SelfAttention(s)
        self.output = _Dense(s.hidden_size, s.hidden_size, s.layer_norm_eps)


class BertLayer(nn.Module):
    def __init__(self, s: BertSettings):
        super().__init__()
        self.heads, self.head_dim = s.num_attention_heads, s.hidden_size // s.num_attention_heads
        self.hidden_dropout, self.attention_dropout = s.hidden_dropout_prob, s.attention_probs_dropout_prob
        self.act = ACTIVATIONS[s.hidden_act]
        self.attention = _Attention(s)
        self.intermediate = _Dense(s.hidden_size, s.intermediate_size)
        self.output = _Dense(s.intermediate_size, s.hidden_size, s.layer_norm_eps)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, heads, L, d)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x (B, L, H); bias (B, 1, 1, L) added to the attention scores: 0 for tokens, a huge negative for padding."""
        att = self.attention.self
        context = F.scaled_dot_product_attention(
            self._heads(att.query(x)), self._heads(att.key(x)), self._heads(att.value(x)), attn_mask=bias,
            dropout_p=self.attention_dropout if self.training else 0.0)  # (B, heads, L, d)
        context = context.transpose(1, 2).reshape(x.shape)  # (B, L, H)
        out = self.attention.output
        x = out.LayerNorm(F.dropout(out.dense(context), self.hidden_dropout, self.training) + x)
        hidden = self.act(self.intermediate.dense(x))  # (B, L, I)
        out = self.output
        return out.LayerNorm(F.dropout(out.dense(hidden), self.hidden_dropout, self.training) + x)  # (B, L, H)


class _Embeddings(nn.Module):
    def __init__(self, s: BertSettings):
        super().__init__()
        # `_weight` skips nn.Embedding's own random fill: NativeBert initialises (or loads) every weight itself,
        # and on the meta device that fill would import torch._dynamo (1.8 s).
        self.word_embeddings = nn.Embedding(s.vocab_size, s.hidden_size, _weight=torch.empty(s.vocab_size, s.hidden_size))
        self.position_embeddings = nn.Embedding(s.max_position_embeddings, s.hidden_size,
                                                _weight=torch.empty(s.max_position_embeddings, s.hidden_size))
        self.token_type_embeddings = nn.Embedding(s.type_vocab_size, s.hidden_size,
                                                  _weight=torch.empty(s.type_vocab_size, s.hidden_size))
        self.LayerNorm = nn.LayerNorm(s.hidden_size, eps=s.layer_norm_eps)
        self.dropout = s.hidden_dropout_prob

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.size(1), device=input_ids.device)  # (L,)
        # One segment (type 0) throughout: emocli feeds single sentences.
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions) + self.token_type_embeddings.weight[0]
        return F.dropout(self.LayerNorm(x), self.dropout, self.training)  # (B, L, H)


class _Encoder(nn.Module):
    def __init__(self, s: BertSettings):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(s) for _ in range(s.num_hidden_layers))


class _Pooler(nn.Module):
    def __init__(self, s: BertSettings):
        super().__init__()
        self.dense = nn.Linear(s.hidden_size, s.hidden_size)


@dataclass(frozen=True)
class BertOutput:
    last_hidden_state: torch.Tensor  # (B, L, H)


class NativeBert(nn.Module):
    """(B, L) token ids and attention mask -> (B, L, H) hidden states, with `BertModel`'s parameter names."""

    def __init__(self, raw_config: dict):
        super().__init__()
        settings = bert_settings(raw_config)
        self.config = _Config(raw_config, settings)
        self.embeddings = _Embeddings(settings)
        self.encoder = _Encoder(settings)
        # Unused by emocli (it pools the hidden states itself), kept so state dicts match `BertModel`'s one for one.
        self.pooler = _Pooler(settings)
        self._init_weights(0.02 if not isinstance(raw_config.get("initializer_range"), float)
                           else raw_config["initializer_range"])

    def _init_weights(self, std: float) -> None:
        """transformers' initialisation, for encoders built from a config alone; nothing to do on the meta device
        (a model built there to receive saved weights)."""
        if self.embeddings.word_embeddings.weight.is_meta:
            return
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
            if isinstance(module, nn.Linear):
                nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> BertOutput:
        if input_ids.size(1) > self.config.max_position_embeddings:
            raise ValueError(f"{input_ids.size(1)} tokens exceed the encoder's {self.config.max_position_embeddings} "
                             f"positions")
        x = self.embeddings(input_ids)  # (B, L, H)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # Additive, in the activations' dtype; finfo.min rather than -inf so a row with no token gives no NaN.
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min  # (B, 1, 1, L)
        for layer in self.encoder.layer:
            x = layer(x, bias)
        return BertOutput(last_hidden_state=x)


def _standard_name(key: str) -> str | None:
    """A checkpoint key under `BertModel`'s names, or None for what the encoder does not use.

    Original Google checkpoints (bert-base-uncased's own files) carry a `bert.` prefix, LayerNorm `gamma`/`beta`
    and pre-training heads (`cls.*`); transformers renames them on load, and so do we.
    """
    if key.startswith("cls.") or key.endswith("position_ids"):
        return None
    key = key.removeprefix("bert.")
    if ".LayerNorm." in key:
        key = key.replace(".LayerNorm.gamma", ".LayerNorm.weight").replace(".LayerNorm.beta", ".LayerNorm.bias")
    return key


def load_native_bert(config: dict, weights: Path) -> NativeBert:
    """The BERT of `config` (a config.json's content) with its safetensors weights; every encoder weight must be
    there with its shape."""
    from safetensors.torch import load_file

    model = NativeBert(config)
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # safetensors raises its own types for a damaged header
        raise TextModelError(f"cannot read {weights}: {exc}".splitlines()[0]) from None
    state = {name: t for key, t in tensors.items() if (name := _standard_name(key)) is not None}
    expected = model.state_dict()
    pooler = {k for k in expected if k.startswith("pooler.")}  # absent from some checkpoints; never used
    missing = sorted(set(expected) - set(state) - pooler)
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or wrong:
        what = [f"{label} {', '.join(keys[:3])}" for label, keys in (("missing", missing), ("wrong shape", wrong)) if keys]
        raise TextModelError(f"{weights} does not match its config.json ({'; '.join(what)})")
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return model
