"""The emotion classifier, the whole forward in one file: ModelConfig and EmotionModel = encoders -> fusion -> head.

Khan et al., "A Hybrid Approach to Emotion Classification Using Multimodal Text and Audio Data": a BERT encoder
reads the transcript, an AlexNet with one input channel reads the log-mel spectrogram, the two embeddings are
concatenated and an MLP predicts one of four emotions. Beyond the paper:
  - the audio branch is picked by name (`emocli.encoders`): the paper's ModifiedAlexNet, or a head over a frozen
    pretrained speech encoder's hidden states (Whisper, wav2vec2, HuBERT, WavLM);
  - the fusion is picked by name (`emocli.fusion`): concat (the paper), gated, cross-modal attention;
  - a learned "missing" text embedding, so a fused model still predicts when there is no transcript, and
    modality dropout that teaches it to (training only);
  - exact invariance to padding and batch composition: an utterance gets the same logits alone or in any batch.

Names: B batch, T audio frames, L tokens, H text hidden size, D fusion_hidden, C classes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from emocli.encoders import audio_encoder_class, needs_upstream
from emocli.encoders.alexnet import MIN_FRAMES, ModifiedAlexNet
from emocli.encoders.text import POOLINGS, TextEncoder
from emocli.errors import ConfigError
from emocli.fusion import FUSIONS, View, build_fusion

MODALITIES = ("audio", "text", "both")
# classes: one emotion category | dimensions: valence, arousal, dominance (regression) | both at once
TASKS = ("classes", "dimensions", "both")
N_DIMENSIONS = 3  # valence, arousal, dominance (emocli.corpus.records.DIMENSIONS)
_MAX_SIZE = 1 << 16  # no sane class count, mel count or hidden width comes near it
_MAX_WIDTH = 16.0  # 16x AlexNet is already ~15 billion parameters
__all__ = ["ModelConfig", "EmotionModel", "EmotionOutput", "ModifiedAlexNet", "TextEncoder", "MIN_FRAMES"]


@dataclass(frozen=True)
class ModelConfig:
    n_classes: int = 4
    n_mels: int = 128
    modality: str = "both"  # "audio" | "text" | "both": the single-view baselines are the same code
    fusion: str = "concat"  # "concat" (the paper) | "gated" | "xattn"; only matters when modality == "both"
    audio_encoder: str = "alexnet"  # a name of emocli.encoders.AUDIO_ENCODERS: "alexnet" | "frames" | registered
    # For "frames": the frozen upstream that made them (EmbedderInfo.to_json()); empty for log-mel branches.
    audio_upstream: dict = field(default_factory=dict)
    audio_hidden: int = 256  # "frames": the width of the head's output (and of its context layers)
    audio_context: int = 0  # "frames": transformer layers over the frames before pooling (0: none)
    audio_width: float = 1.0  # ModifiedAlexNet channel/FC multiplier: 1.0 is AlexNet itself, 0.125 a CPU toy
    text_model: str = "all-MiniLM-L6-v2"  # a name or folder, resolved by emocli.text_model
    text_hidden: int = 384  # the encoder's hidden size; the trainer fills it from the encoder config
    text_pooling: str = "mean"  # "mean" over the attention mask (sentence-transformers) | "cls"
    freeze_text: bool = False  # the encoder stays in eval mode and gets no gradient (CPU-friendly)
    fusion_hidden: int = 256
    attention_heads: int = 4  # xattn only; must divide fusion_hidden
    dropout: float = 0.3  # in AlexNet's classifier, the frames head and the fusion head
    # Training only: the probability of hiding an item's transcript (modality "both" only). Only text is
    # dropped: every utterance has audio at inference, but a transcript may be missing, which is the case
    # this teaches the model to handle.
    modality_dropout: float = 0.0
    task: str = "classes"  # one of TASKS; "classes" is the paper's model

    def __post_init__(self):
        # A run's config.json is untrusted input: sizes must be real, bounded integers before any layer is built.
        for name in ("n_classes", "n_mels", "text_hidden", "fusion_hidden", "audio_hidden", "attention_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_SIZE:
                raise ConfigError(f"model setting {name}={value!r} must be a whole number from 1 to {_MAX_SIZE}")
        if not isinstance(self.audio_width, (int, float)) or isinstance(self.audio_width, bool) \
                or not math.isfinite(self.audio_width) or not 0 < self.audio_width <= _MAX_WIDTH:
            raise ConfigError(f"audio_width={self.audio_width!r} must be a number in (0, {_MAX_WIDTH}]")
        if self.task not in TASKS:
            raise ConfigError(f"task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.modality not in MODALITIES:
            raise ConfigError(f"modality {self.modality!r} is not one of {', '.join(MODALITIES)}")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion {self.fusion!r} is not one of {', '.join(FUSIONS)}")
        if self.text_pooling not in POOLINGS:
            raise ConfigError(f"text pooling {self.text_pooling!r} is not one of {', '.join(POOLINGS)}")
        if not isinstance(self.audio_encoder, str) or not isinstance(self.audio_upstream, dict):
            raise ConfigError("audio_encoder must be a name and audio_upstream a JSON object")
        if needs_upstream(self.audio_encoder) != bool(self.audio_upstream):
            raise ConfigError(f"the {self.audio_encoder!r} audio encoder {'needs' if not self.audio_upstream else 'takes no'} "
                              f"audio_upstream (the pretrained encoder it is built around)")
        if self.audio_upstream:
            for key in ("n_layers", "hidden_size"):
                value = self.audio_upstream.get(key)
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_SIZE:
                    raise ConfigError(f"audio_upstream {key}={value!r} must be a whole number from 1 to {_MAX_SIZE}")
        if isinstance(self.audio_context, bool) or not isinstance(self.audio_context, int) \
                or not 0 <= self.audio_context <= 8:
            raise ConfigError(f"audio_context={self.audio_context!r} must be a whole number from 0 to 8")
        if self.audio_context and self.audio_hidden % self.attention_heads:
            raise ConfigError(f"audio_hidden {self.audio_hidden} must be a multiple of attention_heads "
                              f"{self.attention_heads} for --audio-context")
        if self.fusion_hidden % self.attention_heads:
            raise ConfigError(f"fusion_hidden {self.fusion_hidden} must be a multiple of attention_heads "
                              f"{self.attention_heads}")
        if self.n_classes < 2:
            raise ConfigError(f"n_classes must be at least 2, got {self.n_classes}")
        if self.audio_encoder == "alexnet" and self.n_mels < MIN_FRAMES:
            raise ConfigError(f"n_mels {self.n_mels} is too few for ModifiedAlexNet's pools; use at least {MIN_FRAMES}")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.modality_dropout <= 1.0:
            raise ConfigError(f"dropout must be in [0, 1) and modality_dropout in [0, 1], got "
                              f"{self.dropout} and {self.modality_dropout}")

    @property
    def predicts_classes(self) -> bool:
        return self.task in ("classes", "both")

    @property
    def predicts_dimensions(self) -> bool:
        return self.task in ("dimensions", "both")

    @property
    def uses_audio(self) -> bool:
        return self.modality in ("audio", "both")

    @property
    def uses_text(self) -> bool:
        return self.modality in ("text", "both")

    @property
    def audio_feature(self) -> str:
        """What the audio branch reads from a batch: "logmel", "frames" or "waveform" (emocli.encoders.branch)."""
        return audio_encoder_class(self.audio_encoder).feature if self.uses_audio else ""

    @property
    def text_sequences(self) -> bool:
        """True when the fusion reads the text as token states rather than one pooled vector."""
        return self.modality == "both" and self.fusion == "xattn"

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
    logits: torch.Tensor | None  # (B, C); None for a model of task "dimensions"
    loss: torch.Tensor | None = None  # scalar, only when labels (or dimension targets) were given
    dimensions: torch.Tensor | None = None  # (B, 3) valence, arousal, dominance on the corpus's scale


def concordance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Lin's concordance correlation coefficient per column of (N, K) predictions and targets -> (K,); rows with
    a NaN target are left out of their column. The field's metric for dimensional emotion, and (as 1 - CCC)
    its usual loss."""
    known = ~torch.isnan(target)  # (N, K)
    n = known.sum(dim=0).clamp(min=1)  # (K,)
    target = torch.where(known, target, 0.0)
    pred = torch.where(known, pred, 0.0)
    mean_p, mean_t = pred.sum(0) / n, target.sum(0) / n  # (K,)
    dp, dt = torch.where(known, pred - mean_p, 0.0), torch.where(known, target - mean_t, 0.0)
    var_p, var_t, cov = (dp * dp).sum(0) / n, (dt * dt).sum(0) / n, (dp * dt).sum(0) / n
    return 2 * cov / (var_p + var_t + (mean_p - mean_t) ** 2 + 1e-8)


class EmotionModel(nn.Module):
    """Audio and/or text -> encoders -> fusion -> MLP -> (B, C) logits, with the loss when labels are given."""

    def __init__(self, config: ModelConfig, text_encoder: TextEncoder | None = None, audio_encoder=None):
        """`text_encoder` defaults to the pretrained `config.text_model`, `audio_encoder` to the branch
        `config.audio_encoder` names; pass `TextEncoder.from_config(...)` and the branch's `for_saved(config)` to
        rebuild a saved model whose weights come from its own state dict."""
        super().__init__()
        self.config = config
        self.audio = self.text = None
        # Built in this order (audio, text, missing-text vector, fusion, head): a seed gives the paper's model the
        # weights it gave before encoders and fusions became modules (tests/test_paper_pinned.py).
        audio_width = text_width = 0  # what the fusion reads of each view
        if config.uses_audio:
            self.audio = audio_encoder or audio_encoder_class(config.audio_encoder).from_config(config)
            audio_width = self.audio.seq_features if config.text_sequences else self.audio.out_features
        if config.uses_text:
            self.text = text_encoder or TextEncoder.from_pretrained(config.text_model, config.text_pooling)
            if self.text.hidden_size != config.text_hidden:
                raise ConfigError(f"text_hidden is {config.text_hidden} but the encoder {config.text_model!r} has "
                                  f"hidden size {self.text.hidden_size}; set text_hidden from its config")
            if config.freeze_text:
                self.text.requires_grad_(False)
            # Stands in for the sentence embedding (or the token states) when the transcript is missing or dropped.
            self.missing_text = nn.Parameter(torch.empty(config.text_hidden))
            if not self.missing_text.is_meta:  # random ops on the meta device import torch._dynamo (1.5 s)
                nn.init.normal_(self.missing_text, std=0.02)
            text_width = config.text_hidden
        self.fusion = build_fusion(config.fusion, audio_width, text_width, config.fusion_hidden,
                                   config.attention_heads, config.dropout)
        self.head = self._mlp(config.n_classes) if config.predicts_classes else None  # (B, C)
        # Ones give plain cross-entropy; the trainer may set inverse class frequencies. Saved with the weights.
        self.register_buffer("class_weights", torch.ones(config.n_classes))
        self.dimension_head = None
        if config.predicts_dimensions:
            self.dimension_head = self._mlp(N_DIMENSIONS)  # (B, 3) standardised
            # The training part's mean and std of each dimension: the head learns standardised values (any
            # corpus scale), and its outputs are mapped back to the corpus's scale. Saved with the weights.
            self.register_buffer("dimension_mean", torch.zeros(N_DIMENSIONS))
            self.register_buffer("dimension_std", torch.ones(N_DIMENSIONS))
        self.train()

    def _mlp(self, outputs: int) -> nn.Sequential:
        config = self.config
        return nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(self.fusion.out_features, config.fusion_hidden),  # (B, D)
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.fusion_hidden, outputs),  # (B, outputs)
        )

    # -- helpers for the trainer, the predictor and the benchmark -------------------------------------------------

    def train(self, mode: bool = True) -> "EmotionModel":
        super().train(mode)
        if self.text is not None and self.config.freeze_text:
            self.text.eval()  # a frozen encoder's dropout stays off, so precomputed embeddings stay valid
        return self

    def set_input_stats(self, mean, std) -> None:
        """Per-feature mean and std of the training part's audio frames; a no-op for a text-only model."""
        if self.audio is not None:
            self.audio.set_input_stats(mean, std)

    def set_dimension_stats(self, mean, std) -> None:
        """The training part's per-dimension mean and std (the scale the dimensional head's outputs are mapped to)."""
        self.dimension_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
        self.dimension_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp(min=1e-3))

    def set_class_weights(self, weights) -> None:
        weights = torch.as_tensor(weights, dtype=torch.float32).flatten()
        if weights.shape != (self.config.n_classes,):
            raise ConfigError(f"class weights must have {self.config.n_classes} values, got {tuple(weights.shape)}")
        self.class_weights.copy_(weights)

    def load_torchvision_alexnet(self, state_dict_path: str | Path) -> list[str]:
        if not isinstance(self.audio, ModifiedAlexNet):
            raise ConfigError("only an alexnet audio branch can start from torchvision AlexNet weights")
        return self.audio.load_torchvision_alexnet(state_dict_path)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """What the fusion reads of the text: (B, H) pooled, or (B, L, H) token states for a sequence fusion;
        without grad when the encoder is frozen (the trainer precomputes them once)."""
        if self.text is None:
            raise ConfigError("an audio-only model has no text encoder")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.config.freeze_text):
            if self.config.text_sequences:
                return self.text.encode(input_ids, attention_mask)[0]  # (B, L, H)
            return self.text(input_ids, attention_mask)  # (B, H)

    def trainable_parameters(self, text: bool | None = None) -> list[nn.Parameter]:
        """Parameters that get gradients: all of them (text=None), only the text encoder's (True) or all but
        the text encoder's (False), so the trainer can give a pretrained encoder its own learning rate."""
        encoder = {id(p) for p in self.text.parameters()} if self.text is not None else set()
        return [p for p in self.parameters()
                if p.requires_grad and (text is None or (id(p) in encoder) == text)]

    def count_flops_per_item(self, n_frames: int, n_tokens: int) -> int:
        """Analytic forward FLOPs for one item: the audio branch, the transformer's matmuls, fusion and head.
        Pass n_tokens=0 when the text embeddings are precomputed (frozen text)."""
        total = self.audio.flops(n_frames) if self.audio is not None else 0
        if self.text is not None and n_tokens > 0:
            total += self.text.flops(n_tokens)
        heads = [*(self.head or ()), *(self.dimension_head or ())]
        for module in (*self.fusion.modules(), *heads):
            if isinstance(module, nn.Linear):
                total += 2 * module.in_features * module.out_features
        return total

    # -- the forward -----------------------------------------------------------------------------------------------

    def forward(self, audio: torch.Tensor | None = None, audio_lengths: torch.Tensor | None = None,
                input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                text_present: torch.Tensor | None = None, text_embeds: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, dimension_targets: torch.Tensor | None = None) -> EmotionOutput:
        """audio (B, T, ...) time-major features of the audio branch (log-mel dB (B, T, F), or upstream frames
        (B, T, L, D)) with audio_lengths (B,) valid frames; input_ids and attention_mask (B, L), or text_embeds from
        `encode_text` ((B, H), or (B, L, H) with attention_mask); text_present (B,) bool, False where there is no
        transcript (no text input at all means no transcript for anyone); labels (B,) and, for a dimensional model,
        dimension_targets (B, 3) (NaN: unknown) for the loss: cross-entropy + (1 - mean CCC) for task "both"."""
        sequences = self.config.text_sequences
        audio_view = text_view = None
        if self.audio is not None:
            if audio is None:
                raise ValueError(f"a {self.config.modality!r} model needs audio")
            if audio_lengths is None:
                audio_lengths = torch.full((audio.size(0),), audio.size(1), dtype=torch.long, device=audio.device)
            seq, mask = self.audio.encode(audio, audio_lengths)  # (B, S, W), (B, S)
            audio_view = View(seq=seq, mask=mask) if sequences else View(pooled=self.audio.pool(seq, mask))

        if self.text is not None:
            batch = audio.size(0) if audio is not None else (input_ids if input_ids is not None else text_embeds).size(0)
            if text_embeds is not None:
                text = text_embeds.to(self.missing_text.dtype)  # (B, H) or (B, L, H), computed by encode_text
            elif input_ids is not None:
                if attention_mask is None:
                    attention_mask = torch.ones_like(input_ids)
                text = self.encode_text(input_ids, attention_mask)  # (B, H) or (B, L, H)
            else:  # predicting from audio alone: every item lacks a transcript
                if self.audio is None or (text_present is not None and bool(text_present.any())):
                    raise ValueError("text is present but neither input_ids nor text_embeds was given")
                text = self.missing_text.expand(batch, *([1] if sequences else []), -1)  # (B, H) or (B, 1, H)
                attention_mask = torch.zeros(batch, 1, dtype=torch.long, device=text.device)
                text_present = torch.zeros(batch, dtype=torch.bool, device=text.device)
            present = torch.ones(batch, dtype=torch.bool, device=text.device) if text_present is None \
                else text_present.to(device=text.device, dtype=torch.bool)  # (B,)
            if self.training and self.config.modality == "both" and self.config.modality_dropout > 0:
                # Hide some transcripts so the fused model learns to predict from audio alone.
                keep = torch.rand(present.shape, device=present.device) >= self.config.modality_dropout
                present = present & keep
            if sequences:
                text_view = View(*self._with_missing_tokens(text, attention_mask, present))
            else:
                text_view = View(pooled=torch.where(present[:, None], text, self.missing_text))  # (B, H)

        fused = self.fusion(audio_view, text_view)  # (B, F)
        logits = self.head(fused) if self.head is not None else None  # (B, C)
        dimensions = standard = None
        if self.dimension_head is not None:
            standard = self.dimension_head(fused).float()  # (B, 3)
            dimensions = standard * self.dimension_std + self.dimension_mean
        loss = None
        if logits is not None and labels is not None:
            loss = F.cross_entropy(logits.float(), labels, weight=self.class_weights)
        if standard is not None and dimension_targets is not None:
            target = (dimension_targets.float() - self.dimension_mean) / self.dimension_std
            known = ~torch.isnan(target).all(dim=0)  # dimensions with any target in this batch
            ccc_loss = 1 - concordance(standard, target)[known].mean() if bool(known.any()) else standard.sum() * 0
            loss = ccc_loss if loss is None else loss + ccc_loss
        return EmotionOutput(logits=logits, loss=loss, dimensions=dimensions)

    def _with_missing_tokens(self, states: torch.Tensor, attention_mask: torch.Tensor, present: torch.Tensor
                             ) -> tuple[None, torch.Tensor, torch.Tensor]:
        """Token states where a missing transcript is one token, the learned missing-text vector."""
        mask = attention_mask.bool() & present[:, None]  # (B, L)
        first = torch.zeros_like(mask)
        first[:, 0] = True
        missing = ~present[:, None, None] & first[:, :, None]  # (B, L, 1): position 0 of rows without text
        states = torch.where(missing, self.missing_text.to(states.dtype), states)  # (B, L, H)
        return None, states, mask | (first & ~present[:, None])
