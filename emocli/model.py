"""The emotion classifier, the whole forward in one file: ModelConfig, ModifiedAlexNet, TextEncoder, EmotionModel.

Khan et al., "A Hybrid Approach to Emotion Classification Using Multimodal Text and Audio Data": a BERT encoder
reads the transcript, an AlexNet with one input channel reads the log-mel spectrogram, the two embeddings are
concatenated and an MLP predicts one of four emotions. Beyond the paper:
  - a gated fusion (a learned per-dimension mix of the two projected views) next to plain concatenation;
  - a learned "missing" text embedding, so a fused model still predicts when there is no transcript, and
    modality dropout that teaches it to (training only);
  - exact invariance to padding and batch composition: an utterance gets the same logits alone or in any batch.

Names: B batch, F mel bins (n_mels), T frames (10 ms each), L tokens, H text hidden size, A audio embedding size,
D fusion_hidden, C classes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from emocli.errors import CheckpointError, ConfigError, TextModelError

MODALITIES = ("audio", "text", "both")
FUSIONS = ("concat", "gated")
POOLINGS = ("mean", "cls")
# AlexNet's layer sizes: five conv widths, the classifier width, and the grid its classifier reads.
ALEXNET_CHANNELS = (64, 192, 384, 256, 256)
ALEXNET_FC = 4096
ALEXNET_GRID = 6
# The shortest input (frames, and mel bins) that leaves one position after AlexNet's three max-pools:
# 63 -> conv1 15 -> pool 7 -> conv2 7 -> pool 3 -> conv3..5 3 -> pool 1. At 10 ms per frame, 0.63 s.
MIN_FRAMES = 63
_MAX_SIZE = 1 << 16  # no sane class count, mel count or hidden width comes near it
_MAX_WIDTH = 16.0  # 16x AlexNet is already ~15 billion parameters
SPEC_STD_FLOOR_DB = 1e-3  # a mel bin that never varies (e.g. always at the -100 dB floor) must not divide by 0


@dataclass(frozen=True)
class ModelConfig:
    n_classes: int = 4
    n_mels: int = 128
    modality: str = "both"  # "audio" | "text" | "both": the single-view baselines are the same code
    fusion: str = "concat"  # "concat" (the paper) | "gated"; only matters when modality == "both"
    audio_width: float = 1.0  # ModifiedAlexNet channel/FC multiplier: 1.0 is AlexNet itself, 0.125 a CPU toy
    text_model: str = "all-MiniLM-L6-v2"  # a name or folder, resolved by emocli.text_model
    text_hidden: int = 384  # the encoder's hidden size; the trainer fills it from the encoder config
    text_pooling: str = "mean"  # "mean" over the attention mask (sentence-transformers) | "cls"
    freeze_text: bool = False  # the encoder stays in eval mode and gets no gradient (CPU-friendly)
    fusion_hidden: int = 256
    dropout: float = 0.3  # in AlexNet's classifier and in the fusion head
    # Training only: the probability of hiding an item's transcript (modality "both" only). Only text is
    # dropped: every utterance has audio at inference, but a transcript may be missing, which is the case
    # this teaches the model to handle.
    modality_dropout: float = 0.0

    def __post_init__(self):
        # A run's config.json is untrusted input: sizes must be real, bounded integers before any layer is built.
        for name in ("n_classes", "n_mels", "text_hidden", "fusion_hidden"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_SIZE:
                raise ConfigError(f"model setting {name}={value!r} must be a whole number from 1 to {_MAX_SIZE}")
        if not isinstance(self.audio_width, (int, float)) or isinstance(self.audio_width, bool) \
                or not math.isfinite(self.audio_width) or not 0 < self.audio_width <= _MAX_WIDTH:
            raise ConfigError(f"audio_width={self.audio_width!r} must be a number in (0, {_MAX_WIDTH}]")
        if self.modality not in MODALITIES:
            raise ConfigError(f"modality {self.modality!r} is not one of {', '.join(MODALITIES)}")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion {self.fusion!r} is not one of {', '.join(FUSIONS)}")
        if self.text_pooling not in POOLINGS:
            raise ConfigError(f"text pooling {self.text_pooling!r} is not one of {', '.join(POOLINGS)}")
        if self.n_classes < 2:
            raise ConfigError(f"n_classes must be at least 2, got {self.n_classes}")
        if self.n_mels < MIN_FRAMES:
            raise ConfigError(f"n_mels {self.n_mels} is too few for ModifiedAlexNet's pools; use at least {MIN_FRAMES}")
        if self.audio_width <= 0:
            raise ConfigError(f"audio_width must be positive, got {self.audio_width}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.modality_dropout <= 1.0:
            raise ConfigError(f"dropout must be in [0, 1) and modality_dropout in [0, 1], got "
                              f"{self.dropout} and {self.modality_dropout}")

    @property
    def uses_audio(self) -> bool:
        return self.modality in ("audio", "both")

    @property
    def uses_text(self) -> bool:
        return self.modality in ("text", "both")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ModelConfig":
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"model config has unknown fields {sorted(unknown)}: it was written by a newer emocli")
        return cls(**data)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


@dataclass
class EmotionOutput:
    logits: torch.Tensor  # (B, C)
    loss: torch.Tensor | None = None  # scalar, only when labels were given


# ----------------------------------------------------------------------------------------------------------------
# Audio: ModifiedAlexNet


def _time_geometry(layer: nn.Module) -> tuple[int, int, int]:
    """(kernel, stride, padding) of a conv or pool along the time axis (the last one)."""
    pick = lambda v: v[-1] if isinstance(v, tuple) else v  # noqa: E731
    return pick(layer.kernel_size), pick(layer.stride), pick(layer.padding)


def _out_length(n: torch.Tensor | int, layer: nn.Module):
    """Valid output length of a conv/pool given valid input length n (floor mode, dilation 1, as AlexNet uses)."""
    kernel, stride, padding = _time_geometry(layer)
    return (n + 2 * padding - kernel) // stride + 1


def _mask_time(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero every frame at or beyond each item's length (where, not multiply: padding may hold NaN or inf)."""
    valid = torch.arange(x.size(-1), device=x.device) < lengths[:, None]  # (B, T)
    return torch.where(valid.view(x.size(0), *([1] * (x.dim() - 2)), x.size(-1)), x, 0.0)


def _adaptive_pool_weights(lengths: torch.Tensor, n_frames: int, n_out: int) -> torch.Tensor:
    """(B, T, n_out) averaging weights equal to adaptive_avg_pool1d over each item's own [0, length).

    Bin i averages frames [floor(i * n / n_out), ceil((i + 1) * n / n_out)), as PyTorch's adaptive pooling does;
    frames beyond the item's length get weight 0, so padding can never reach the output.
    """
    i = torch.arange(n_out, device=lengths.device)
    start = (i * lengths[:, None]) // n_out  # (B, n_out)
    end = ((i + 1) * lengths[:, None] + n_out - 1) // n_out  # (B, n_out), ceil division
    t = torch.arange(n_frames, device=lengths.device)[None, :, None]  # (1, T, 1)
    inside = (t >= start[:, None, :]) & (t < end[:, None, :])  # (B, T, n_out)
    return inside.float() / (end - start)[:, None, :].float()


class ModifiedAlexNet(nn.Module):
    """AlexNet on one input channel (the log-mel image: frequency is height, time is width) -> (B, A).

    The layer indices of `features` and `classifier` are torchvision's, so its pretrained weights load by name.
    """

    def __init__(self, n_mels: int, width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        c1, c2, c3, c4, c5 = (max(1, round(c * width)) for c in ALEXNET_CHANNELS)
        fc = max(1, round(ALEXNET_FC * width))
        self.n_mels, self.width, self.out_features = n_mels, width, fc
        # Per-mel-bin statistics of the training set, in dB; set by the trainer, saved with the weights.
        self.register_buffer("spec_mean", torch.zeros(n_mels))
        self.register_buffer("spec_std", torch.ones(n_mels))
        # Shapes for F = 128 mel bins; T1..T5 follow the same arithmetic on each item's own length.
        self.features = nn.Sequential(                      # (B, 1, 128, T)
            nn.Conv2d(1, c1, kernel_size=11, stride=4, padding=2),  # (B, c1, 31, T1), T1 = (T - 7) // 4 + 1
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),          # (B, c1, 15, T2), T2 = (T1 - 3) // 2 + 1
            nn.Conv2d(c1, c2, kernel_size=5, padding=2),    # (B, c2, 15, T2)
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),          # (B, c2, 7, T3)
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),    # (B, c3, 7, T3)
            nn.ReLU(),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1),    # (B, c4, 7, T3)
            nn.ReLU(),
            nn.Conv2d(c4, c5, kernel_size=3, padding=1),    # (B, c5, 7, T3)
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),          # (B, c5, 3, T5)
        )
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(c5 * ALEXNET_GRID * ALEXNET_GRID, fc),  # (B, fc)
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(fc, fc),                              # (B, fc)
            nn.ReLU(),
        )

    def forward(self, spec: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        x = (spec.to(self.spec_mean.dtype) - self.spec_mean[:, None]) / self.spec_std[:, None]  # (B, F, T)
        x = _mask_time(x, lengths)  # (B, F, T): padding is now exactly 0, the training mean, whatever it held
        # Short utterances are padded with that 0 to MIN_FRAMES and count as that long, so every pool has a window.
        if x.size(-1) < MIN_FRAMES:
            x = F.pad(x, (0, MIN_FRAMES - x.size(-1)))  # (B, F, MIN_FRAMES)
        n = lengths.clamp(min=MIN_FRAMES)  # (B,) valid frames
        x = x[:, None]  # (B, 1, F, T)
        for layer in self.features:
            x = layer(x)
            if not isinstance(layer, nn.ReLU):
                # A conv or pool changed the time axis: recompute each item's valid length and zero what lies
                # beyond it, so the next layer sees exactly the zeros it would see on the item alone.
                n = _out_length(n, layer)
                x = _mask_time(x, n)
        x = F.adaptive_avg_pool2d(x, (ALEXNET_GRID, None))  # (B, c5, 6, T5): frequency is the same for all
        weights = _adaptive_pool_weights(n, x.size(-1), ALEXNET_GRID)  # (B, T5, 6)
        x = torch.einsum("bcft,bto->bcfo", x, weights.to(x.dtype))  # (B, c5, 6, 6): time pooled per item
        return self.classifier(x.flatten(1))  # (B, A)

    def flops(self, n_frames: int) -> int:
        """Forward FLOPs (2 per multiply-add) of the convs and linears for one item of n_frames."""
        f, t, total = self.n_mels, max(n_frames, MIN_FRAMES), 0
        for layer in self.features:
            if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
                f, t = _out_length(f, layer), _out_length(t, layer)
            if isinstance(layer, nn.Conv2d):
                kh, kw = layer.kernel_size
                total += 2 * layer.in_channels * layer.out_channels * kh * kw * f * t
        return total + sum(2 * m.in_features * m.out_features for m in self.classifier if isinstance(m, nn.Linear))

    def load_torchvision_alexnet(self, state_dict_path: str | Path) -> list[str]:
        """Initialise from a local torchvision AlexNet state dict, "pre-trained" as in the paper.

        The five convs and the two hidden classifier layers are copied (their shapes match AlexNet's exactly);
        the first conv's RGB filters are averaged into one channel; the 1000-way ImageNet layer is not used.
        Returns the names loaded.
        """
        if self.width != 1.0:
            raise ConfigError(f"torchvision AlexNet weights fit only audio_width 1.0, not {self.width}; "
                              f"drop the AlexNet weights or use full width")
        source = _load_tensor_file(Path(state_dict_path))
        own = self.state_dict()
        names = [n for n in own if n.startswith(("features.", "classifier."))]
        missing = [n for n in names if n not in source]
        if missing:
            raise CheckpointError(f"{state_dict_path} is not a torchvision AlexNet state dict: missing {missing[:3]}")
        loaded = {}
        for name in names:
            tensor = source[name].to(own[name].dtype)
            if name == "features.0.weight":
                tensor = tensor.mean(dim=1, keepdim=True)  # (64, 3, 11, 11) -> (64, 1, 11, 11)
            if tensor.shape != own[name].shape:
                raise CheckpointError(f"{state_dict_path}: {name} has shape {tuple(tensor.shape)}, "
                                      f"expected {tuple(own[name].shape)} (is it AlexNet?)")
            loaded[name] = tensor
        self.load_state_dict(loaded, strict=False)
        return names


def _load_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    """A flat name -> tensor dict from .safetensors, or from .pth/.pt with pickle restricted to tensors."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)  # never unpickles arbitrary objects
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"{path}: cannot read as a tensor file ({reason}); safetensors is safest") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a plain state dict of tensors")
    return state


# ----------------------------------------------------------------------------------------------------------------
# Text: a BERT-family encoder pooled to one sentence vector


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

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, H)
        if self.pooling == "cls":
            return hidden[:, 0]  # (B, H)
        mask = attention_mask.to(hidden.dtype)[:, :, None]  # (B, L, 1)
        # An empty transcript has no tokens: clamp avoids 0/0 (its embedding is replaced by the missing one).
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)  # (B, H)

    def flops(self, n_tokens: int) -> int:
        """Forward FLOPs of the transformer layers' matmuls for one item of n_tokens (embeddings and norms,
        a rounding error, left out)."""
        c = self.encoder.config
        h, i, layers, n = c.hidden_size, c.intermediate_size, c.num_hidden_layers, n_tokens
        per_layer = 2 * n * 4 * h * h + 2 * 2 * n * n * h + 2 * 2 * n * h * i  # Q,K,V,O; QK^T and AV; FFN
        return layers * per_layer


# ----------------------------------------------------------------------------------------------------------------
# The classifier


class EmotionModel(nn.Module):
    """Audio and/or text embeddings -> fusion -> MLP -> (B, C) logits, with the loss when labels are given."""

    def __init__(self, config: ModelConfig, text_encoder: TextEncoder | None = None):
        """`text_encoder` defaults to the pretrained `config.text_model`; pass `TextEncoder.from_config(...)`
        to rebuild a saved model whose weights come from its own state dict."""
        super().__init__()
        self.config = config
        self.audio = self.text = None
        features = 0  # width of what the head reads
        if config.uses_audio:
            self.audio = ModifiedAlexNet(config.n_mels, config.audio_width, config.dropout)
            features += self.audio.out_features
        if config.uses_text:
            self.text = text_encoder or TextEncoder.from_pretrained(config.text_model, config.text_pooling)
            if self.text.hidden_size != config.text_hidden:
                raise ConfigError(f"text_hidden is {config.text_hidden} but the encoder {config.text_model!r} has "
                                  f"hidden size {self.text.hidden_size}; set text_hidden from its config")
            if config.freeze_text:
                self.text.requires_grad_(False)
            # Stands in for the sentence embedding when the transcript is missing or dropped.
            self.missing_text = nn.Parameter(torch.empty(config.text_hidden))
            if not self.missing_text.is_meta:  # random ops on the meta device import torch._dynamo (1.5 s)
                nn.init.normal_(self.missing_text, std=0.02)
            features += config.text_hidden
        if config.modality == "both" and config.fusion == "gated":
            # A gated multimodal unit (Arevalo et al. 2017): each view projected to D, mixed per dimension by a
            # gate that sees both raw embeddings, so the model can lean on audio where the text is uninformative.
            d = config.fusion_hidden
            self.audio_proj = nn.Linear(self.audio.out_features, d)
            self.text_proj = nn.Linear(config.text_hidden, d)
            self.gate = nn.Linear(self.audio.out_features + config.text_hidden, d)
            features = d
        self.head = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(features, config.fusion_hidden),  # (B, D)
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.fusion_hidden, config.n_classes),  # (B, C)
        )
        # Ones give plain cross-entropy; the trainer may set inverse class frequencies. Saved with the weights.
        self.register_buffer("class_weights", torch.ones(config.n_classes))
        self.train()

    # -- helpers for the trainer, the predictor and the benchmark -------------------------------------------------

    def train(self, mode: bool = True) -> "EmotionModel":
        super().train(mode)
        if self.text is not None and self.config.freeze_text:
            self.text.eval()  # a frozen encoder's dropout stays off, so precomputed embeddings stay valid
        return self

    def set_spec_stats(self, mean, std) -> None:
        """Per-mel-bin mean and std (dB) of the training spectrograms; a no-op for a text-only model."""
        if self.audio is None:
            return
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.shape != (self.config.n_mels,) or std.shape != (self.config.n_mels,):
            raise ConfigError(f"spectrogram statistics must have {self.config.n_mels} values (one per mel bin), "
                              f"got {tuple(mean.shape)} and {tuple(std.shape)}")
        self.audio.spec_mean.copy_(mean)
        self.audio.spec_std.copy_(std.clamp(min=SPEC_STD_FLOOR_DB))

    def set_class_weights(self, weights) -> None:
        weights = torch.as_tensor(weights, dtype=torch.float32).flatten()
        if weights.shape != (self.config.n_classes,):
            raise ConfigError(f"class weights must have {self.config.n_classes} values, got {tuple(weights.shape)}")
        self.class_weights.copy_(weights)

    def load_torchvision_alexnet(self, state_dict_path: str | Path) -> list[str]:
        if self.audio is None:
            raise ConfigError("a text-only model has no AlexNet to initialise")
        return self.audio.load_torchvision_alexnet(state_dict_path)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, H) pooled sentence embeddings; without grad when the encoder is frozen (precompute them once)."""
        if self.text is None:
            raise ConfigError("an audio-only model has no text encoder")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_text):
            return self.text(input_ids, attention_mask)  # (B, H)

    def trainable_parameters(self, text: bool | None = None) -> list[nn.Parameter]:
        """Parameters that get gradients: all of them (text=None), only the text encoder's (True) or all but
        the text encoder's (False), so the trainer can give a pretrained encoder its own learning rate."""
        encoder = {id(p) for p in self.text.parameters()} if self.text is not None else set()
        return [p for p in self.parameters()
                if p.requires_grad and (text is None or (id(p) in encoder) == text)]

    def count_flops_per_item(self, n_frames: int, n_tokens: int) -> int:
        """Analytic forward FLOPs for one item: convs, linears and the transformer's matmuls.
        Pass n_tokens=0 when the text embeddings are precomputed (frozen text)."""
        total = self.audio.flops(n_frames) if self.audio is not None else 0
        if self.text is not None and n_tokens > 0:
            total += self.text.flops(n_tokens)
        for module in (getattr(self, "audio_proj", None), getattr(self, "text_proj", None),
                       getattr(self, "gate", None), *self.head):
            if isinstance(module, nn.Linear):
                total += 2 * module.in_features * module.out_features
        return total

    # -- the forward -----------------------------------------------------------------------------------------------

    def forward(self, spec: torch.Tensor | None = None, spec_lengths: torch.Tensor | None = None,
                input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                text_present: torch.Tensor | None = None, text_embeds: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> EmotionOutput:
        """spec (B, F, T) raw log-mel dB with spec_lengths (B,) valid frames; input_ids and attention_mask (B, L),
        or text_embeds (B, H) from `encode_text`; text_present (B,) bool, False where there is no transcript
        (no text input at all means no transcript for anyone); labels (B,) for the loss."""
        views = []
        if self.audio is not None:
            if spec is None:
                raise ValueError(f"a {self.config.modality!r} model needs spec")
            if spec_lengths is None:
                spec_lengths = torch.full((spec.size(0),), spec.size(-1), dtype=torch.long, device=spec.device)
            audio = self.audio(spec, spec_lengths)  # (B, A)
            views.append(audio)

        if self.text is not None:
            if text_embeds is not None:
                text = text_embeds.to(self.missing_text.dtype)  # (B, H), computed by encode_text
            elif input_ids is not None:
                if attention_mask is None:
                    attention_mask = torch.ones_like(input_ids)
                text = self.encode_text(input_ids, attention_mask)  # (B, H)
            else:  # predicting from audio alone: every item lacks a transcript
                if self.audio is None or (text_present is not None and bool(text_present.any())):
                    raise ValueError("text is present but neither input_ids nor text_embeds was given")
                text = self.missing_text.expand(spec.size(0), -1)  # (B, H)
                text_present = torch.zeros(spec.size(0), dtype=torch.bool, device=text.device)
            present = torch.ones(text.size(0), dtype=torch.bool, device=text.device) if text_present is None \
                else text_present.to(device=text.device, dtype=torch.bool)  # (B,)
            if self.training and self.config.modality == "both" and self.config.modality_dropout > 0:
                # Hide some transcripts so the fused model learns to predict from audio alone.
                keep = torch.rand(present.shape, device=present.device) >= self.config.modality_dropout
                present = present & keep
            text = torch.where(present[:, None], text, self.missing_text)  # (B, H)
            views.append(text)

        if self.config.modality == "both" and self.config.fusion == "gated":
            gate = torch.sigmoid(self.gate(torch.cat([audio, text], dim=-1)))  # (B, D): share of audio per dim
            fused = gate * torch.tanh(self.audio_proj(audio)) + (1 - gate) * torch.tanh(self.text_proj(text))  # (B, D)
        else:
            fused = torch.cat(views, dim=-1)  # (B, A + H), or one view alone for a single-modality model
        logits = self.head(fused)  # (B, C)

        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float(), labels, weight=self.class_weights)
        return EmotionOutput(logits=logits, loss=loss)
