"""A pretrained Hugging Face speech encoder fine-tuned end to end, with the frames head on top (`--finetune-audio`).

It reads the waveform stage (B, S) and runs the encoder inside the model, so gradients reach its weights (its own
learning rate: `train --audio-lr`); the CNN front end stays frozen, as wav2vec2 fine-tuning usually does. Meant
for a GPU. Encoders whose padding changes their outputs (group-norm CNNs such as wav2vec2-base) are run one
utterance at a time outside training (`padding_exact`), so a prediction never depends on its batch.
Names: B batch, S samples, L layers, T frames, D width.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from emocli.encoders.base import EmbedderInfo
from emocli.encoders.branch import AudioEncoder
from emocli.encoders.frames import FrameEncoder
from emocli.errors import EncoderError


class FinetunedSpeechEncoder(AudioEncoder):
    feature = "waveform"

    def __init__(self, encoder, head: FrameEncoder):
        super().__init__()
        self.encoder, self.head = encoder, head  # emocli.encoders.hf_speech.HFSpeechEncoder, the frames head
        self.encoder.freeze_feature_encoder()
        self.seq_features, self.out_features = head.seq_features, head.out_features

    @classmethod
    def from_config(cls, config) -> "FinetunedSpeechEncoder":
        """The pretrained encoder from its folder (weights checked against the run's checksum)."""
        from emocli.encoders.hf_speech import HFSpeechEncoder

        return cls(HFSpeechEncoder.from_folder(EmbedderInfo.from_json(config.audio_upstream)),
                   FrameEncoder.from_config(config))

    @classmethod
    def for_saved(cls, config) -> "FinetunedSpeechEncoder":
        """The architecture alone, its weights to come from a run's own state dict."""
        from emocli.encoders.hf_speech import HFSpeechEncoder, located

        info = located(EmbedderInfo.from_json(config.audio_upstream))  # a cached id's snapshot may have moved
        try:
            hf_config = json.loads((Path(info.path) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EncoderError(f"the fine-tuned encoder's architecture is read from {info.path}/config.json, which "
                               f"is unreadable ({exc}); put the encoder folder back where the run was trained") from None
        from emocli.encoders.hf_speech import _json_digest

        if _json_digest(hf_config) != info.settings.get("config_sha256"):
            raise EncoderError(f"{info.path}/config.json changed since this run was trained (it defines the "
                               f"fine-tuned encoder's architecture); restore it, or retrain")
        return cls(HFSpeechEncoder.from_config(hf_config, info.settings), FrameEncoder.from_config(config))

    @property
    def padding_exact(self) -> bool:
        return bool(self.encoder.padding_exact)

    def encode(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, S, 1, 1) as the waveform stage is batched, lengths (B,) samples."""
        hidden, frames = self.encoder(audio[:, :, 0, 0], lengths)  # (B, L, T, D), (B,)
        return self.head.encode(hidden.transpose(1, 2), frames)  # (B, T, D), (B, T)

    def pool(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.head.pool(seq, mask)

    def fit_inputs(self, values, offsets, indices) -> None:
        """Nothing to fit from raw audio: the encoder normalises its own input, and its states move while it is
        fine-tuned, so fixed statistics of them would go stale (the head starts at identity scaling)."""

    def encoder_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.encoder.parameters() if p.requires_grad]
