"""The Python API: a trained run as an object a notebook or a service calls, and the library calls behind each
command, so a script can do what the CLI does.

    import emocli
    model = emocli.load("runs/final")                     # a run made by `emocli train`
    p = model.predict("clip.wav", text="I can't believe you did that!")
    p.label, p.probs                                      # "angry", {"angry": 0.91, "happy": 0.02, ...}
    batch = model.predict([waveform, "b.wav"], text=[None, "fine."], sample_rate=16000)

The commands' library functions (each CLI command body is one call into them):
    emocli.prepare.prepare(source, cache_path, PrepareConfig(...))    -> PrepareResult    (`emocli prepare`)
    emocli.train.train(cache_path, run_dir, model_config, TrainConfig(...)) -> TrainSummary (`emocli train`)
    emocli.api.model_config_for(cache_path, **settings)               -> ModelConfig sized for the cache
    emocli.evaluate.evaluate_run(run_dir) / evaluate_on_cache(run_dir, cache_path) -> EvalReport (`emocli eval`)
    emocli.api.load(run_dir).predict(...)                             -> Prediction(s)   (`emocli predict`)
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Sequence, Union

import numpy as np

from emocli.errors import AudioError, ConfigError

AudioInput = Union[str, Path, np.ndarray]
_ARRAY_NAME = "array"


class EmotionRecognizer:
    """A trained run's model, ready to predict. Made by `load`; every input goes through the run's own feature
    settings (sample rate, window, log-mel or frozen encoder), as the command line does."""

    def __init__(self, predictor) -> None:
        self._predictor = predictor

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names in the model's output order (empty for a dimensions-only model)."""
        return self._predictor.classes

    @property
    def dimensions(self) -> tuple[str, ...]:
        """("valence", "arousal", "dominance") for a dimensional model, else ()."""
        return self._predictor.dimensions

    @property
    def fold(self) -> str:
        """The fold whose model this is."""
        return self._predictor.fold

    @property
    def sample_rate(self) -> int:
        return self._predictor.config.features.sample_rate

    def predict(self, audio: AudioInput | Sequence[AudioInput], text: str | None | Sequence[str | None] = None,
                sample_rate: int | None = None, batch_size: int = 32):
        """One `Prediction` for one input, a list for a list.

        `audio`: a file path, a waveform (numpy, mono or (samples, channels), floats in [-1, 1]) or a list of them;
        a waveform needs `sample_rate`. `text`: the transcript (one per input for a list; None: no transcript,
        recognised by the run's recogniser when `load(..., asr=...)` gave one, else predicted from audio alone).
        Audio longer than the run's window is truncated to it, as in `prepare`. Batching never changes a result:
        a list gives exactly what one-by-one calls give. Raises AudioError naming the input that cannot be used.
        """
        single = isinstance(audio, (str, Path)) or (isinstance(audio, np.ndarray) and audio.ndim <= 2
                                                     and not _is_batch_of_waveforms(audio))
        inputs = [audio] if single else list(audio)
        texts = [text] if single else (list(text) if text is not None else [None] * len(inputs))
        if len(texts) != len(inputs):
            raise ConfigError(f"{len(inputs)} audio inputs but {len(texts)} transcripts; give one per input "
                              f"(None where there is none)")
        items = [self._item(k, a, t, sample_rate) for k, (a, t) in enumerate(zip(inputs, texts))]
        from emocli.predict import Failure

        results = list(self._predictor.predict(items, batch_size))
        for item, result in zip(items, results):
            if isinstance(result, Failure):
                raise AudioError(f"{item.id}: {result.reason}")
        return results[0] if single else results

    def _item(self, index: int, audio: AudioInput, text: str | None, sample_rate: int | None):
        from emocli.predict import PredictItem

        text = text.strip() or None if isinstance(text, str) else None
        if isinstance(audio, (str, Path)):
            path = Path(audio)
            if not path.is_file():
                raise AudioError(f"{path}: no such file")
            return PredictItem(str(path), path, text, text_source="given" if text else None)
        if not isinstance(audio, np.ndarray):
            raise ConfigError(f"input {index} is a {type(audio).__name__}; give a file path or a numpy waveform")
        if sample_rate is None:
            raise ConfigError("a waveform needs its sample_rate (e.g. predict(wave, sample_rate=16000))")
        name = f"{_ARRAY_NAME}[{index}]"
        return PredictItem(name, Path(name), text, text_source="given" if text else None,
                           audio=waveform_at_16k(audio, sample_rate, name))


def _is_batch_of_waveforms(audio: np.ndarray) -> bool:
    return audio.dtype == object


def waveform_at_16k(audio: np.ndarray, sample_rate: int, name: str = _ARRAY_NAME) -> np.ndarray:
    """A numpy waveform as float32 mono at 16 kHz, decoded as a file is (`features.mono_at_rate`)."""
    from emocli.features import mono_at_rate
    from emocli.longform import SAMPLE_RATE_HZ

    audio = np.asarray(audio)
    if audio.ndim == 2 and audio.shape[0] < audio.shape[1] and audio.shape[0] <= 8:
        audio = audio.T  # (channels, samples) -> (samples, channels), as soundfile returns them
    if audio.ndim not in (1, 2) or not audio.size:
        raise AudioError(f"{name}: a waveform must be a non-empty 1-D (or samples x channels) array")
    if not np.issubdtype(audio.dtype, np.floating):
        if np.issubdtype(audio.dtype, np.integer):  # PCM integers to [-1, 1)
            audio = audio / float(np.iinfo(audio.dtype).max + 1)
        else:
            raise AudioError(f"{name}: samples of type {audio.dtype} are not audio")
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate < 1000:
        raise ConfigError(f"sample_rate {sample_rate!r} must be a whole number of Hz (e.g. 16000)")
    return mono_at_rate(audio.astype(np.float32), int(sample_rate), SAMPLE_RATE_HZ, name)


def load(run_dir: str | Path, fold: str | None = None, device: str = "auto", asr: str | None = None
         ) -> EmotionRecognizer:
    """A trained run's model. `fold`: which fold's model (default: the final model of `train --protocol all`,
    else the run's first fold; `.fold` says which); `device`: auto | cpu | cuda; `asr`: a recogniser for inputs
    without a transcript ("whisper", "whisper-base" or a local CTranslate2 Whisper folder; None: predict those
    from audio alone, the default, as a library should not transcribe unless asked)."""
    from emocli.predict import Predictor

    config = None
    if asr is not None:
        from emocli.asr import AsrConfig

        config = AsrConfig(model=asr)
    return EmotionRecognizer(Predictor.from_run(Path(run_dir), fold, device, asr=config))


def model_config_for(cache_path: str | Path, **settings):
    """A ModelConfig whose sizes come from the cache (classes, mel bands, text model): what `emocli train` builds
    from its options. `settings` are ModelConfig fields (modality, fusion, task, freeze_text, ...); an audio encoder
    other than alexnet is given as `audio_encoder="whisper"` (with optional `compute_type`)."""
    from emocli.cache import read_meta
    from emocli.encoders import audio_branch
    from emocli.model import ModelConfig

    cache_path = Path(cache_path)
    inputs = read_meta(cache_path).typed_inputs(cache_path)
    compute_type = settings.pop("compute_type", "int8")
    encoder, finetune = settings.pop("audio_encoder", "alexnet"), settings.pop("finetune_audio", False)
    if settings.get("modality", "both") != "text":
        encoder, upstream = audio_branch(encoder, compute_type, finetune)
        settings.update(audio_encoder=encoder, audio_upstream=upstream)
    defaults = ModelConfig(n_classes=len(inputs.label_set.classes), n_mels=inputs.features.n_mels,
                           text_model=inputs.tokenizer["name"])
    return replace(defaults, **settings)
