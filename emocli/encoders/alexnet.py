"""The paper's audio branch: ModifiedAlexNet, AlexNet on one input channel, over the cache's log-mel spectrogram.

Exact under padding: every conv and pool recomputes each item's valid length and zeroes what lies beyond it, so an
utterance gets the same embedding alone or in any batch. Names: B batch, F mel bins, T frames (10 ms each),
A the embedding width (AlexNet's classifier width times `audio_width`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from emocli.encoders.branch import AudioEncoder
from emocli.errors import CheckpointError, ConfigError

# AlexNet's layer sizes: five conv widths, the classifier width, and the grid its classifier reads.
ALEXNET_CHANNELS = (64, 192, 384, 256, 256)
ALEXNET_FC = 4096
ALEXNET_GRID = 6
# The shortest input (frames, and mel bins) that leaves one position after AlexNet's three max-pools:
# 63 -> conv1 15 -> pool 7 -> conv2 7 -> pool 3 -> conv3..5 3 -> pool 1. At 10 ms per frame, 0.63 s.
MIN_FRAMES = 63
SPEC_STD_FLOOR_DB = 1e-3  # a mel bin that never varies (e.g. always at the -100 dB floor) must not divide by 0


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


class ModifiedAlexNet(AudioEncoder):
    """AlexNet on one input channel (the log-mel image: frequency is height, time is width) -> (B, A).

    The layer indices of `features` and `classifier` are torchvision's, so its pretrained weights load by name.
    """

    def __init__(self, n_mels: int, width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        c1, c2, c3, c4, c5 = (max(1, round(c * width)) for c in ALEXNET_CHANNELS)
        fc = max(1, round(ALEXNET_FC * width))
        self.n_mels, self.width, self.out_features, self.seq_features = n_mels, width, fc, fc
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

    feature = "logmel"

    @classmethod
    def from_config(cls, config) -> "ModifiedAlexNet":
        return cls(config.n_mels, config.audio_width, config.dropout)

    def encode(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, F) log-mel dB as the batch builder gives it -> a sequence of one element, (B, 1, A), and its mask."""
        vector = self(audio.transpose(1, 2).contiguous(), lengths)  # (B, A)
        return vector[:, None], torch.ones(vector.size(0), 1, dtype=torch.bool, device=vector.device)

    def pool(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return seq[:, 0]  # (B, A): AlexNet pools time itself

    def fit_inputs(self, values, offsets, indices) -> None:
        from emocli.batch import frame_stats

        mean, std = frame_stats(values, offsets, indices, SPEC_STD_FLOOR_DB)
        self.set_input_stats(torch.from_numpy(mean), torch.from_numpy(std))

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean.shape != (self.n_mels,) or std.shape != (self.n_mels,):
            raise ConfigError(f"spectrogram statistics must have {self.n_mels} values (one per mel bin), "
                              f"got {tuple(mean.shape)} and {tuple(std.shape)}")
        self.spec_mean.copy_(mean)
        self.spec_std.copy_(std.clamp(min=SPEC_STD_FLOOR_DB))

    def forward(self, spec: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """spec (B, F, T) raw log-mel dB, lengths (B,) valid frames -> (B, A)."""
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
