"""Cached features -> a batch of model inputs: one builder for train, eval and predict, and where they run.

Every path feeds the model the same thing: audio features as float16 (as the cache stores them; predict rounds its
fresh features the same way), zero-padded time-major (B, T, ...) with their lengths; token ids trimmed to the
longest transcript of the batch; `text_present` False for a blank transcript. The model is exact under padding,
so how utterances are grouped into batches never changes a prediction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from emocli.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
_GPU_SHARE = 0.5  # keep the inputs on the GPU only if they take at most this share of its free memory
_STATS_CHUNK_BYTES = 64 << 20


def resolve_device(name: str) -> torch.device:
    """auto: the CUDA device of this process (LOCAL_RANK under torchrun) when one is visible, else the CPU."""
    if name not in DEVICES:
        raise ConfigError(f"--device {name!r} is not one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(cuda_missing_line())
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


# The CUDA wheel index of the pinned torch (README, "GPU"); the default index gives a CPU build on these machines.
CUDA_TORCH_INSTALL = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"


def cuda_missing_line() -> str:
    """Why --device cuda cannot be used, naming the fix: a CPU-only torch build, or no GPU visible to a CUDA one."""
    if torch.version.cuda is None:
        return (f"--device cuda was asked for, but this torch ({torch.__version__}) is a CPU-only build; install the "
                f"CUDA build (`{CUDA_TORCH_INSTALL}`, see the README's GPU section) or use --device cpu")
    return (f"--device cuda was asked for, but torch {torch.__version__} (CUDA {torch.version.cuda}) sees no GPU "
            "(check nvidia-smi and CUDA_VISIBLE_DEVICES); use --device cpu or auto")


def use_bf16(device: torch.device, precision: str) -> bool:
    """auto: bf16 autocast on CUDA (tensor cores), fp32 on CPU (exact, and the reference numbers)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision == "bf16" or (precision == "auto" and device.type == "cuda")


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)


def inference_batch_size(model, requested: int) -> int:
    """`requested`, or 1 for an audio branch whose padding changes its outputs (a group-norm wav2vec2 being
    fine-tuned): outside training a prediction must not depend on what it was batched with."""
    audio = getattr(model, "audio", None)
    return requested if audio is None or audio.padding_exact else 1


@dataclass
class Ragged:
    """Variable-length items stored end to end: item i is values[offsets[i]:offsets[i] + lengths[i]]."""

    values: torch.Tensor  # (F, ...) float16, every item's frames concatenated
    offsets: torch.Tensor  # (N,) int64
    lengths: torch.Tensor  # (N,) int64
    host_lengths: np.ndarray  # (N,) the same lengths on the host: reading them from a GPU would stall it

    @classmethod
    def from_arrays(cls, values: np.ndarray, offsets: np.ndarray) -> "Ragged":
        """`values` (F, ...) and `offsets` (N + 1,) as the cache stores them."""
        lengths = np.diff(offsets).astype(np.int64)
        return cls(torch.from_numpy(values), torch.from_numpy(offsets[:-1].astype(np.int64)),
                   torch.from_numpy(lengths), lengths)

    @classmethod
    def from_items(cls, items: Sequence[np.ndarray]) -> "Ragged":
        """Items (T_i, ...) float16, as predict computes them one file at a time."""
        lengths = np.asarray([len(x) for x in items], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        return cls.from_arrays(np.concatenate(items) if len(items) else np.zeros((0,), np.float16), offsets)

    def to(self, device: torch.device) -> "Ragged":
        return Ragged(self.values.to(device), self.offsets.to(device), self.lengths.to(device), self.host_lengths)

    def padded(self, idx: torch.Tensor, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, ...) float32, zero past each item's end, and (B,) lengths, T the longest of the batch."""
        lengths = self.lengths[idx]  # (B,)
        t_max = max(int(self.host_lengths[indices].max()), 1)
        steps = torch.arange(t_max, device=self.values.device)  # (T,)
        valid = steps[None, :] < lengths[:, None]  # (B, T)
        frames = torch.where(valid, self.offsets[idx][:, None] + steps[None, :], 0)  # (B, T)
        shape = (*valid.shape, *([1] * (self.values.dim() - 1)))
        return torch.where(valid.view(shape), self.values[frames].float(), 0.0), lengths  # (B, T, ...)


@dataclass
class ModelInputs:
    """What the model reads of N utterances, on one device (the GPU when it fits); `batch` gathers by index."""

    audio: Ragged | None  # log-mel (F, n_mels) or upstream frames (F, L, D); None for a text-only model
    input_ids: torch.Tensor | None  # (N, L) int64; None for an audio-only model
    attention_mask: torch.Tensor | None  # (N, L) int64
    text_present: torch.Tensor | None  # (N,) bool
    labels: torch.Tensor | None  # (N,) int64; None when predicting
    host_text_widths: np.ndarray | None = None  # (N,) tokens per transcript, on the host
    text_embeds: torch.Tensor | None = None  # (N, H) or (N, L, H) once precomputed for a frozen encoder
    dimensions: torch.Tensor | None = None  # (N, 3) valence, arousal, dominance targets (NaN: unknown)

    @classmethod
    def build(cls, audio: Ragged | None, input_ids: np.ndarray | None, attention_mask: np.ndarray | None,
              texts_present: np.ndarray | None, labels: np.ndarray | None,
              device: torch.device = torch.device("cpu"), dimensions: np.ndarray | None = None) -> "ModelInputs":
        home = device if device.type == "cuda" and _fits_on(device, audio) else torch.device("cpu")
        text = input_ids is not None
        return cls(
            audio=audio.to(home) if audio is not None else None,
            input_ids=torch.from_numpy(input_ids.astype(np.int64)).to(home) if text else None,
            attention_mask=torch.from_numpy(attention_mask.astype(np.int64)).to(home) if text else None,
            text_present=torch.from_numpy(np.asarray(texts_present, dtype=bool)).to(home) if text else None,
            labels=torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(home) if labels is not None else None,
            host_text_widths=np.asarray(attention_mask, dtype=np.int64).sum(axis=1) if text else None,
            dimensions=torch.from_numpy(np.asarray(dimensions, dtype=np.float32)).to(home)
            if dimensions is not None else None)

    def __len__(self) -> int:
        for part in (self.labels, self.text_present):
            if part is not None:
                return len(part)
        return len(self.audio.lengths)

    def batch(self, indices: np.ndarray, device: torch.device) -> tuple[dict, torch.Tensor | None]:
        """(model keyword arguments, labels or None) for the utterances `indices`, on `device`; the dimensional
        targets, when there are any, travel in the keyword arguments (`dimension_targets`)."""
        indices = np.asarray(indices, dtype=np.int64)
        home = (self.audio.values if self.audio is not None else self.input_ids).device
        idx = torch.from_numpy(indices).to(home)
        kwargs = {}
        if self.audio is not None:
            audio, lengths = self.audio.padded(idx, indices)
            kwargs["audio"] = audio.contiguous().to(device, non_blocking=True)  # (B, T, ...)
            kwargs["audio_lengths"] = lengths.to(device)
        if self.input_ids is not None:
            width = max(int(self.host_text_widths[indices].max()), 1)  # trim padding columns no row uses
            kwargs["text_present"] = self.text_present[idx].to(device)
            mask = self.attention_mask[idx][:, :width].to(device)  # (B, L)
            if self.text_embeds is not None:
                embeds = self.text_embeds[idx.to(self.text_embeds.device)]
                kwargs["text_embeds"] = (embeds if embeds.dim() == 2 else embeds[:, :width]).to(device)
                if embeds.dim() == 3:
                    kwargs["attention_mask"] = mask
            else:
                kwargs["input_ids"] = self.input_ids[idx][:, :width].to(device)
                kwargs["attention_mask"] = mask
        if self.dimensions is not None:
            kwargs["dimension_targets"] = self.dimensions[idx].to(device)  # (B, 3)
        labels = self.labels[idx].to(device) if self.labels is not None else None
        return kwargs, labels


def audio_arrays(data, model_config, stage=None) -> tuple[np.ndarray, np.ndarray] | None:
    """(values (F, ...), offsets (N + 1,)) of what the model's audio branch reads of a cache: its log-mel, or the
    embedding stage (`stage`) for a frozen upstream's frames or the waveform; None for a text-only model."""
    feature = model_config.audio_feature
    if feature == "logmel":
        return data.spec, data.spec_offsets
    if feature in ("frames", "waveform"):
        return stage.values, stage.offsets
    return None


def inputs_from_cache(data, model_config, stage=None, labels: bool = True,
                      device: torch.device = torch.device("cpu")) -> ModelInputs:
    """A cache (and its stage) as the batch builder's inputs, for training and for scoring a cache alike: a blank
    transcript counts as no transcript."""
    arrays = audio_arrays(data, model_config, stage)
    text = model_config.uses_text
    present = np.array([bool(t.strip()) for t in data.texts], dtype=bool) if text else None
    dimensions = data.dimensions if labels and model_config.predicts_dimensions else None
    return ModelInputs.build(Ragged.from_arrays(*arrays) if arrays is not None else None,
                             data.input_ids if text else None, data.attention_mask if text else None, present,
                             data.labels if labels else None, device, dimensions)


def _fits_on(device: torch.device, audio: Ragged | None) -> bool:
    if audio is None:
        return True
    free = torch.cuda.mem_get_info(device)[0]
    return audio.values.numel() * audio.values.element_size() < _GPU_SHARE * free


def frame_stats(values: np.ndarray, offsets: np.ndarray, indices: np.ndarray,
                floor: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std over every frame of the utterances `indices` (float64 sums for stability);
    `values` (F, ...) as stored, the statistics shaped like one frame."""
    frames = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in indices])
    flat = values.reshape(len(values), -1)
    total, sq = np.zeros(flat.shape[1]), np.zeros(flat.shape[1])
    step = max(1, _STATS_CHUNK_BYTES // (8 * flat.shape[1]))  # frames per float64 chunk of ~64 MB, any width
    for start in range(0, len(frames), step):  # chunked: the whole corpus in float64 would be 4x its float16
        chunk = flat[frames[start:start + step]].astype(np.float64)  # (chunk, features)
        total += chunk.sum(axis=0)
        sq += (chunk * chunk).sum(axis=0)
    n = float(len(frames))
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean * mean, 0.0))
    shape = values.shape[1:]
    return mean.astype(np.float32).reshape(shape), np.maximum(std, floor).astype(np.float32).reshape(shape)
