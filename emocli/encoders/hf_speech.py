"""A local Hugging Face speech encoder (wav2vec2, HuBERT, WavLM, data2vec-audio, or Whisper's encoder) run by
transformers: 16 kHz audio -> the hidden states of every layer, as SUPERB's weighted sum reads them.

Only a folder on disk is ever read (config.json, model.safetensors, preprocessor_config.json); the hub is switched off
before transformers loads, and pickled weights are refused. `HFSpeechEncoder` is a trainable module (end-to-end
fine-tuning); `load_hf_speech` wraps it as a frozen `Embedder` for the embedding stage and `predict`.

What each family needs:
- wav2vec2 / HuBERT / WavLM whose CNN uses layer norm (feat_extract_norm "layer", as the large models) take an
  attention mask, and a padded batch gives each item what it gives alone.
- The same families with group norm (feat_extract_norm "group": wav2vec2-base, HuBERT-base) must get no mask, as
  Hugging Face's feature extractors do: the first conv layer's GroupNorm normalises over all time steps, padding
  included, so padding changes every frame. Batch equal lengths only.
- data2vec-audio takes a mask, but its stack of positional convolutions carries padded frames into the real ones:
  batch equal lengths only.
- Whisper's encoder has a fixed 30 s positional table, so every utterance is padded to 30 s windows anyway, and a
  batch is exact.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from emocli.encoders.base import EmbedderInfo
from emocli.errors import EncoderError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

KIND = "hf"
WAV2VEC2_FAMILY = frozenset({"wav2vec2", "hubert", "wavlm", "data2vec-audio"})
SPEECH_MODEL_TYPES = WAV2VEC2_FAMILY | {"whisper"}
# Whether a padded batch gives each item exactly what it gives alone (see the module docstring).
_PADDING_EXACT = frozenset({"wav2vec2", "hubert", "wavlm"})  # ... when feat_extract_norm is "layer"
WEIGHTS_FILE = "model.safetensors"
SAMPLE_RATE_HZ = 16_000  # what every known speech encoder was trained on
NORM_EPS = 1e-7  # variance floor of Wav2Vec2FeatureExtractor's zero-mean unit-variance normalisation
# Whisper's front end, fixed by its training (openai/whisper audio.py):
WHISPER_N_FFT = 400  # samples: a 25 ms window
WHISPER_HOP = 160  # samples: 10 ms between mel frames
WHISPER_CONV_STRIDE = 2  # conv2 halves the mel frames: 50 encoder states per second
_HASH_CHUNK = 1 << 22  # bytes read per hashing step


# ---------------------------------------------------------------------------------------------------------- resolve

_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime_ns, ctime_ns, inode) -> sha256


def weights_sha256(path: Path) -> str:
    """The file's sha256, computed once per version of the file in this process (a rewrite changes the ctime, an
    atomic replace the inode, even when size and mtime are restored)."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    digest = _DIGESTS.get(key)
    if digest is None:
        hasher = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(_HASH_CHUNK):
                hasher.update(block)
        digest = _DIGESTS[key] = hasher.hexdigest()
    return digest


def resolve_hf_speech(folder: str | Path, name: str | None = None) -> EmbedderInfo:
    """Check a Hugging Face speech encoder folder and describe what it produces (config only; nothing is loaded).
    `name`: what the user called it (a cached model id) where that is not the folder itself."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise EncoderError(f"speech encoder folder {folder} does not exist; pass a local Hugging Face folder "
                           f"(config.json, model.safetensors). Nothing is downloaded.")
    path = path.resolve()
    config = _read_json(path / "config.json", required=True, folder=path)
    model_type = str(config.get("model_type", ""))
    if model_type not in SPEECH_MODEL_TYPES:
        raise EncoderError(f"{path} holds a {model_type or 'unknown'} model, not a speech encoder; pass a "
                           f"{', '.join(sorted(SPEECH_MODEL_TYPES))} folder")
    preprocessor = _read_json(path / "preprocessor_config.json", required=False, folder=path)
    weights = _weights_file(path)
    n_layers, hidden, sample_rate, frame_rate, normalize = _describe(config, preprocessor, path)
    return EmbedderInfo(kind=KIND, name=str(folder) if name is None else name, path=str(path),
                        weights_sha256=weights_sha256(weights),
                        sample_rate=sample_rate, n_layers=n_layers, hidden_size=hidden, frame_rate_hz=frame_rate,
                        settings={"model_type": model_type, "normalize": normalize,
                                  # The architecture is config.json: an edit that keeps the weights' shapes (heads,
                                  # activation, eps) changes the numbers, so it changes the stage and is refused by
                                  # a run made before it.
                                  "config_sha256": _json_digest(config), "preprocessor_sha256": _json_digest(preprocessor)})


def located(info: EmbedderInfo) -> EmbedderInfo:
    """`info` where its folder is; a cached model id whose recorded snapshot is gone (another machine, a pruned or
    moved cache) is found again in this cache by its id, and `from_folder` then refuses any other weights."""
    if Path(info.path).is_dir():
        return info
    from emocli.hf_cache import cached_snapshot

    snapshot = cached_snapshot(info.name)
    return info if snapshot is None else dataclasses.replace(info, path=str(snapshot.resolve()))


def _json_digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _read_json(file: Path, required: bool, folder: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not required:
            return {}
        raise EncoderError(f"{folder} is not a Hugging Face model folder: config.json is missing; pass a "
                           f"{', '.join(sorted(SPEECH_MODEL_TYPES))} folder") from None
    except (OSError, ValueError) as exc:
        raise EncoderError(f"cannot read {file}: {exc}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise EncoderError(f"{file} is not a JSON object; restore it from the model's original folder")
    return data


def _weights_file(folder: Path) -> Path:
    weights = folder / WEIGHTS_FILE
    if weights.is_file():
        return weights
    if (folder / "pytorch_model.bin").is_file():
        raise EncoderError(f"{folder} has only pickled weights (pytorch_model.bin), which emocli never loads; convert "
                           f"them once with transformers: AutoModel.from_pretrained(folder).save_pretrained(folder) "
                           f"writes model.safetensors")
    if (folder / f"{WEIGHTS_FILE}.index.json").is_file():
        raise EncoderError(f"{folder} has sharded weights; join them into one model.safetensors with transformers: "
                           f"AutoModel.from_pretrained(folder).save_pretrained(folder, max_shard_size='100GB')")
    raise EncoderError(f"{folder} has no {WEIGHTS_FILE}; copy the model's weights into it")


def _describe(config: dict, preprocessor: dict, folder: Path) -> tuple[int, int, int, float, bool]:
    """(n_layers, hidden_size, sample_rate, frame_rate_hz, normalize) of a speech encoder's config."""
    where = folder / "config.json"
    sample_rate = _positive_int(preprocessor, "sampling_rate", folder / "preprocessor_config.json",
                                default=SAMPLE_RATE_HZ)
    if config.get("model_type") == "whisper":
        if sample_rate != SAMPLE_RATE_HZ or preprocessor.get("hop_length", WHISPER_HOP) != WHISPER_HOP or \
                preprocessor.get("n_fft", WHISPER_N_FFT) != WHISPER_N_FFT or \
                preprocessor.get("feature_size", config.get("num_mel_bins")) != config.get("num_mel_bins"):
            raise EncoderError(f"{folder / 'preprocessor_config.json'} is not Whisper's front end (16 kHz, n_fft 400, "
                               f"hop 160, feature_size = num_mel_bins); restore the model's original file")
        _positive_int(config, "num_mel_bins", where)
        _positive_int(config, "max_source_positions", where)
        frame_rate = sample_rate / WHISPER_HOP / WHISPER_CONV_STRIDE
        # The encoder's layers plus its input (conv + positions), as for the wav2vec2 family.
        return _positive_int(config, "encoder_layers", where) + 1, _positive_int(config, "d_model", where), \
            sample_rate, frame_rate, False
    if config.get("add_adapter"):
        raise EncoderError(f"{where} adds an adapter after the encoder, which changes the frame rate; pass the "
                           f"encoder without it")
    strides = config.get("conv_stride")
    if not isinstance(strides, list) or not strides or \
            not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in strides):
        raise EncoderError(f"{where} has no valid conv_stride ({strides!r}); restore the model's original file")
    # CNN output + one per transformer layer: all hidden states, as SUPERB's weighted sum uses them.
    n_layers = _positive_int(config, "num_hidden_layers", where) + 1
    # Hugging Face's Wav2Vec2FeatureExtractor normalises by default; wav2vec2-base's file turns it off.
    normalize = bool(preprocessor.get("do_normalize", True))
    return n_layers, _positive_int(config, "hidden_size", where), sample_rate, \
        sample_rate / math.prod(strides), normalize


def _positive_int(config: dict, key: str, where: Path, default: int | None = None) -> int:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EncoderError(f"{where} has no valid {key} ({value!r}); restore the model's original file")
    return value


# ---------------------------------------------------------------------------------------------------------- module

class HFSpeechEncoder(nn.Module):
    """(B, S) waveforms and their lengths -> (B, n_layers, T, hidden) hidden states and their frame counts.

    Trainable: call `.train()` for fine-tuning (wav2vec2's SpecAugment then applies as its config says) and
    `freeze_feature_encoder()` to keep the CNN front end fixed, as wav2vec2 fine-tuning usually does.
    """

    def __init__(self, model: nn.Module, settings: dict):
        super().__init__()
        self.model = model  # a transformers Wav2Vec2Model, HubertModel, ... or a WhisperEncoder
        config = model.config
        self.model_type = str(config.model_type)
        if self.model_type not in SPEECH_MODEL_TYPES:
            raise EncoderError(f"a {self.model_type} model is not a speech encoder; use one of "
                               f"{', '.join(sorted(SPEECH_MODEL_TYPES))}")
        self.normalize = bool(settings.get("normalize", False))
        self.is_whisper = self.model_type == "whisper"
        # LayerDrop skips layers at random in training, which would change how many hidden states come back; the
        # layer-weighted sum downstream needs every one of them.
        if self.is_whisper:
            model.layerdrop = 0.0
            config.encoder_layerdrop = 0.0
            self.n_layers = int(config.encoder_layers) + 1
            self.hidden_size = int(config.d_model)
            self.uses_mask, self.padding_exact = False, True
            self._window_mel_frames = int(config.max_source_positions) * WHISPER_CONV_STRIDE  # 3000: 30 s
            from transformers import WhisperFeatureExtractor

            mel_filters = WhisperFeatureExtractor(feature_size=int(config.num_mel_bins)).mel_filters  # (201, n_mels)
            # Not persistent: derived from the config, so a saved state dict stays the model's own weights.
            self.register_buffer("mel_filters", torch.from_numpy(np.asarray(mel_filters, np.float32)), False)
            self.register_buffer("window", torch.hann_window(WHISPER_N_FFT), False)
        else:
            if getattr(config, "add_adapter", False):
                raise EncoderError("the speech encoder adds an adapter after its layers, which changes the frame "
                                   "rate; use the encoder without it")
            config.layerdrop = 0.0
            self.n_layers = int(config.num_hidden_layers) + 1
            self.hidden_size = int(config.hidden_size)
            layer_norm_cnn = self.model_type == "data2vec-audio" or config.feat_extract_norm == "layer"
            self.uses_mask = layer_norm_cnn
            self.padding_exact = layer_norm_cnn and self.model_type in _PADDING_EXACT
            # Pre-LN ("stable layer norm") encoders end with a LayerNorm that transformers 5 leaves out of
            # hidden_states[-1]; transformers 4 put it in, and it is the encoder's real output.
            self._final_norm_in_last = bool(getattr(config, "do_stable_layer_norm", False))

    @classmethod
    def from_folder(cls, info: EmbedderInfo) -> "HFSpeechEncoder":
        """The pretrained encoder `info` describes, refused if its folder changed since it was resolved."""
        if info.kind != KIND:
            raise EncoderError(f"{info.name!r} is a {info.kind!r} encoder, not a Hugging Face ({KIND!r}) one")
        recorded, info = info, located(info)
        current = resolve_hf_speech(info.path)
        changed = sorted(k for k, v in current.identity().items() if info.identity().get(k) != v)
        if changed:
            what = f"its {', '.join(changed)} changed"
            if "weights_sha256" in changed:
                what = (f"{WEIGHTS_FILE} has sha256 {current.weights_sha256[:12]}…, but it was resolved with "
                        f"{info.weights_sha256[:12]}…")
            if info.path != recorded.path:
                raise EncoderError(f"the cached {info.name} ({info.path}) is not the copy this was made with "
                                   f"({recorded.path}, now gone): {what}; fetch that revision with `hf download "
                                   f"{info.name} --revision {Path(recorded.path).name}`")
            raise EncoderError(f"{info.path} changed since it was resolved: {what}; resolve the folder again (the "
                               f"embeddings made with the old one no longer match it)")
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        try:
            model, loading = AutoModel.from_pretrained(info.path, local_files_only=True, use_safetensors=True,
                                                       dtype=torch.float32, output_loading_info=True)
        except Exception as exc:  # transformers raises many types for a broken folder
            raise EncoderError(f"cannot load the speech encoder from {info.path}: {exc}".splitlines()[0]) from None
        missing = {k for k in loading["missing_keys"] if k != "masked_spec_embed"}  # only SpecAugment uses it
        if info.settings["model_type"] == "whisper":
            missing = {k for k in missing if k.startswith("encoder.")}  # a decoder we never run may be absent
            model = model.encoder  # WhisperModel's decoder is dropped here
        # transformers only logs weights it could not find and leaves them random: refuse them instead.
        if missing or loading["mismatched_keys"]:
            bad = sorted(missing) + sorted(str(k) for k in loading["mismatched_keys"])
            raise EncoderError(f"{info.path}/{WEIGHTS_FILE} lacks or misshapes {len(bad)} weights of the encoder "
                               f"(first: {bad[0]}); it was saved from another architecture than config.json says")
        return cls(model, info.settings)

    @classmethod
    def from_config(cls, hf_config: dict, settings: dict) -> "HFSpeechEncoder":
        """The same architecture with untrained weights, from `hf_config()` of a saved model: a run directory
        rebuilds its fine-tuned encoder from this and its own state dict, without the original folder."""
        model_type = hf_config.get("model_type")
        if model_type not in SPEECH_MODEL_TYPES:
            raise EncoderError(f"the saved speech encoder is a {model_type or 'unknown'} model, not one of "
                               f"{', '.join(sorted(SPEECH_MODEL_TYPES))}")
        from transformers import AutoConfig, AutoModel

        config = AutoConfig.for_model(**hf_config)
        if model_type == "whisper":
            from transformers.models.whisper.modeling_whisper import WhisperEncoder

            return cls(WhisperEncoder(config), settings)  # the encoder alone: its keys match from_folder's
        return cls(AutoModel.from_config(config, dtype=torch.float32), settings)

    def hf_config(self) -> dict:
        return self.model.config.to_dict()

    def freeze_feature_encoder(self) -> None:
        """Stop gradients to the CNN front end (the waveform CNN; Whisper's two mel convolutions)."""
        if self.is_whisper:
            for param in (*self.model.conv1.parameters(), *self.model.conv2.parameters()):
                param.requires_grad = False
        else:
            self.model.freeze_feature_encoder()

    def min_samples(self) -> int:
        """The shortest input that yields one frame (400 samples, 25 ms, for wav2vec2's CNN)."""
        if self.is_whisper:
            return WHISPER_HOP
        needed = 1
        for kernel, stride in reversed(list(zip(self.model.config.conv_kernel, self.model.config.conv_stride))):
            needed = (needed - 1) * stride + kernel
        return needed

    def batch_key(self, n_samples: int) -> int:
        """Items with equal keys may share a padded batch and still get exactly what each gets alone."""
        if self.is_whisper:
            return self._n_windows(n_samples)
        return 0 if self.padding_exact else n_samples

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """(B,) samples -> (B,) frames computed from the real audio."""
        if self.is_whisper:
            mel_frames = torch.div(lengths, WHISPER_HOP, rounding_mode="floor")  # as openai/whisper, unpadded
            return torch.div(mel_frames + 1, WHISPER_CONV_STRIDE, rounding_mode="floor")  # ceil: conv2 pads by 1
        return self.model._get_feat_extract_output_lengths(lengths).to(torch.long)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) float waveforms, right-padded, with (B,) lengths in samples -> (B, n_layers, T, hidden) hidden
        states and (B,) frame counts; frames past an item's count are padding. Batching different lengths is exact
        only where `padding_exact`; otherwise batch equal lengths (`batch_key`)."""
        lengths = lengths.to(device=waveforms.device, dtype=torch.long)
        frame_lengths = self.frame_lengths(lengths)
        if bool((frame_lengths < 1).any()):
            shortest = int(lengths.min())
            raise EncoderError(f"audio of {shortest} samples is too short for the speech encoder, which needs at "
                               f"least {self.min_samples()}; drop such clips or pad them with silence")
        valid = torch.arange(waveforms.shape[1], device=waveforms.device)[None] < lengths[:, None]  # (B, S)
        waveforms = waveforms.float() * valid  # padding is silence, whatever the caller left there
        if self.is_whisper:
            return self._whisper_forward(waveforms, frame_lengths), frame_lengths
        if self.normalize:
            waveforms = _zero_mean_unit_var(waveforms, valid)
        dtype = next(self.model.parameters()).dtype
        out = self.model(waveforms.to(dtype), attention_mask=valid.long() if self.uses_mask else None,
                         output_hidden_states=True)
        layers = list(out.hidden_states)  # n_layers x (B, T, hidden)
        if self._final_norm_in_last:
            layers[-1] = out.last_hidden_state
        assert len(layers) == self.n_layers, (len(layers), self.n_layers)
        return torch.stack(layers, dim=1), frame_lengths  # (B, n_layers, T, hidden)

    def _n_windows(self, n_samples: int) -> int:
        return max(1, math.ceil(n_samples / (self._window_mel_frames * WHISPER_HOP)))

    def _whisper_forward(self, waveforms: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        # Whisper's encoder takes exactly 3000 mel frames (its positional table is 30 s long) and has no attention
        # mask: pad to whole 30 s windows, as Whisper itself does, encode each, join them, and keep the states of the
        # real audio, ceil(mel_frames / 2). Longer audio is cut into independent 30 s windows.
        batch = waveforms.shape[0]
        window = self._window_mel_frames * WHISPER_HOP  # samples: 480000
        n_windows = self._n_windows(waveforms.shape[1])
        padded = nn.functional.pad(waveforms, (0, n_windows * window - waveforms.shape[1]))
        mel = self.log_mel(padded.reshape(batch * n_windows, window))  # (B*W, n_mels, 3000)
        dtype = next(self.model.parameters()).dtype
        out = self.model(mel.to(dtype), output_hidden_states=True)
        hidden = torch.stack(out.hidden_states, dim=1)  # (B*W, n_layers, 1500, hidden)
        assert hidden.shape[1] == self.n_layers, (hidden.shape, self.n_layers)
        per_window = hidden.shape[2]
        hidden = hidden.reshape(batch, n_windows, self.n_layers, per_window, self.hidden_size)
        hidden = hidden.permute(0, 2, 1, 3, 4).reshape(batch, self.n_layers, n_windows * per_window, self.hidden_size)
        return hidden[:, :, : int(frame_lengths.max())]  # (B, n_layers, T, hidden)

    def log_mel(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, 480000) 30 s windows -> (N, n_mels, 3000) Whisper log-mel, as WhisperFeatureExtractor computes it
        (each window has its own 80 dB floor below its loudest bin)."""
        spectrum = torch.stft(windows.float(), WHISPER_N_FFT, WHISPER_HOP, window=self.window.float(),
                              return_complex=True)  # (N, 201, 3001)
        power = (spectrum[..., :-1].abs() ** 2).contiguous()  # Whisper drops the last frame: (N, 201, 3000)
        log_spec = torch.clamp(self.mel_filters.float().T @ power, min=1e-10).log10()  # (N, n_mels, 3000)
        log_spec = torch.maximum(log_spec, log_spec.amax(dim=(1, 2), keepdim=True) - 8.0)
        return (log_spec + 4.0) / 4.0


def _zero_mean_unit_var(waveforms: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Each waveform normalised over its own samples, as Wav2Vec2FeatureExtractor does; padding stays 0."""
    count = valid.sum(dim=1, keepdim=True).clamp(min=1)  # (B, 1)
    mean = waveforms.sum(dim=1, keepdim=True) / count  # padding is 0, so the sum covers the real samples
    var = (((waveforms - mean) * valid) ** 2).sum(dim=1, keepdim=True) / count
    return (waveforms - mean) / torch.sqrt(var + NORM_EPS) * valid


# -------------------------------------------------------------------------------------------------------- embedder

class HFSpeechEmbedder:
    """A frozen `HFSpeechEncoder`: `embed` one utterance, `embed_many` a list in exact batches."""

    def __init__(self, info: EmbedderInfo, encoder: HFSpeechEncoder, device: str = "cpu"):
        self.info = info
        self.device = torch.device(device)
        self.encoder = encoder.to(self.device).eval()

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """(S,) float audio at info.sample_rate -> (n_layers, T, hidden) float32."""
        return self.embed_many([audio])[0]

    def embed_many(self, audios: list[np.ndarray], batch_size: int = 8) -> list[np.ndarray]:
        """`embed` of each, in order, each within float rounding of what `embed` gives it: only items whose padding
        cannot change their states share a batch (`HFSpeechEncoder.batch_key`)."""
        if batch_size < 1:
            raise EncoderError(f"batch_size must be at least 1, got {batch_size}")
        prepared = [self._checked(audio) for audio in audios]
        order = sorted(range(len(prepared)), key=lambda i: (self.encoder.batch_key(prepared[i].size),
                                                            prepared[i].size))
        results: list[np.ndarray | None] = [None] * len(prepared)
        start = 0
        while start < len(order):
            key = self.encoder.batch_key(prepared[order[start]].size)
            stop = start + 1
            while stop < len(order) and stop - start < batch_size and \
                    self.encoder.batch_key(prepared[order[stop]].size) == key:
                stop += 1
            for index, states in zip(order[start:stop], self._run([prepared[i] for i in order[start:stop]])):
                results[index] = states
            start = stop
        return results  # type: ignore[return-value]

    def _checked(self, audio: np.ndarray) -> np.ndarray:
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1 or audio.size == 0:
            raise EncoderError(f"the speech encoder embeds mono audio of shape (samples,), got shape {audio.shape}; "
                               f"decode the file with emocli.features.load_audio")
        if not np.isfinite(audio).all():
            raise EncoderError("the audio holds NaN or infinite samples; re-export it as PCM")
        shortest = self.encoder.min_samples()
        if audio.size < shortest:  # as the CTranslate2 Whisper path: a clip shorter than one frame gets one
            audio = np.pad(audio, (0, shortest - audio.size))
        return audio

    def _run(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        lengths = torch.tensor([a.size for a in audios])
        batch = torch.zeros(len(audios), int(lengths.max()))  # (B, S)
        for row, audio in enumerate(audios):
            batch[row, : audio.size] = torch.from_numpy(audio)
        with torch.inference_mode():
            hidden, frames = self.encoder(batch.to(self.device), lengths.to(self.device))  # (B, L, T, H), (B,)
            hidden = hidden.float().cpu()
        return [np.ascontiguousarray(hidden[row, :, : int(frames[row])].numpy()) for row in range(len(audios))]


def load_hf_speech(info: EmbedderInfo, device: str = "cpu") -> HFSpeechEmbedder:
    """The encoder `info` describes, frozen in eval mode, after its folder is checked again against `info`."""
    encoder = HFSpeechEncoder.from_folder(info)
    encoder.requires_grad_(False)
    return HFSpeechEmbedder(info, encoder, device)
