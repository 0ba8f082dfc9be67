"""The one preprocessing path shared by prepare, train and predict: audio -> log-mel dB, text -> token ids.

Settings live in `FeatureConfig`, which is saved in the cache and in every run, so `predict` reproduces exactly
what the model was trained on.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import multiprocessing
import os
import signal
from dataclasses import asdict, dataclass
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np

from emocli.errors import AudioError

SAMPLE_RATE_HZ = 16_000  # IEMOCAP's rate; everything else is resampled to it
LOG_FLOOR_POWER = 1e-10  # -100 dB: the floor keeps digital silence finite


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = SAMPLE_RATE_HZ
    n_fft: int = 512  # 32 ms FFT
    win_length: int = 400  # 25 ms window
    hop_length: int = 160  # 10 ms hop -> 100 frames per second
    n_mels: int = 128
    fmin_hz: float = 0.0
    fmax_hz: float = 8_000.0
    max_seconds: float = 15.0  # longer audio is truncated (IEMOCAP p99 is 15.1 s, max 34 s)
    min_seconds: float = 0.1  # shorter audio carries no usable prosody: refused
    silence_peak: float = 1e-4  # a file whose peak amplitude is below this is called silent
    max_tokens: int = 64  # transcripts average 11.6 words; longer ones are truncated

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "FeatureConfig":
        return cls(**data)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


def load_audio(path: Path, sample_rate: int = SAMPLE_RATE_HZ, max_seconds: float | None = None,
               min_seconds: float = 0.0, silence_peak: float = 0.0) -> np.ndarray:
    """Decode any file soundfile (or librosa's fallback) reads into float32 mono at `sample_rate`.

    Raises AudioError with the file name for anything that is not usable audio.
    """
    import soundfile as sf

    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise AudioError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        with sf.SoundFile(str(path)) as handle:
            native_rate = handle.samplerate
            # Read no more than we keep: a 10-minute file costs no more than max_seconds of decoding.
            frames = -1 if max_seconds is None else int(np.ceil(max_seconds * native_rate))
            audio = handle.read(frames=frames, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError for odd headers
        audio, native_rate = _load_with_librosa(path, max_seconds, exc)
    if audio.size == 0:
        raise AudioError(f"{path}: no samples (header only)")
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{path}: contains NaN or infinite samples; re-export it as PCM")
    # Float files may exceed full scale; clipped per channel first, since mixing or resampling such values can
    # overflow float32 into inf and NaN. A no-op for PCM, which never exceeds it.
    audio = np.clip(audio, -1.0, 1.0)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)  # stereo and multichannel are averaged to mono
    if native_rate != sample_rate:
        import librosa

        audio = librosa.resample(audio, orig_sr=native_rate, target_sr=sample_rate, res_type="soxr_hq")
    audio = np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)
    if audio.size < min_seconds * sample_rate:
        raise AudioError(f"{path}: too short ({audio.size / sample_rate:.3f} s < {min_seconds} s)")
    if silence_peak > 0 and float(np.max(np.abs(audio))) < silence_peak:
        raise AudioError(f"{path}: silent (peak amplitude below {silence_peak})")
    return audio


def _load_with_librosa(path: Path, max_seconds: float | None, first_error: Exception) -> tuple[np.ndarray, int]:
    """Formats libsndfile does not read (e.g. some mp3 builds) go through librosa/audioread."""
    import warnings

    import librosa

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            audio, rate = librosa.load(str(path), sr=None, mono=True, duration=max_seconds)
    except Exception:
        reason = str(first_error).splitlines()[0] if str(first_error) else type(first_error).__name__
        raise AudioError(f"{path}: not a readable audio file ({reason})") from None
    return audio.astype(np.float32), int(rate)


@lru_cache(maxsize=8)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft/2+1) Slaney-normalised triangular filters, equal to `librosa.filters.mel`'s defaults.

    Written out because librosa's first call costs ~1.2 s of lazy imports in every worker process.
    """
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    edges_hz = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]  # Slaney: equal area per filter
    return weights.astype(np.float32)


# Slaney's mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
_MEL_LINEAR_HZ = 200.0 / 3.0
_MEL_BREAK_HZ = 1000.0
_MEL_LOG_STEP = np.log(6.4) / 27.0


def _hz_to_mel(hz):
    hz = np.asanyarray(hz, dtype=np.float64)
    linear = hz / _MEL_LINEAR_HZ
    log = _MEL_BREAK_HZ / _MEL_LINEAR_HZ + np.log(np.maximum(hz, 1e-10) / _MEL_BREAK_HZ) / _MEL_LOG_STEP
    return np.where(hz >= _MEL_BREAK_HZ, log, linear)


def _mel_to_hz(mel):
    mel = np.asanyarray(mel, dtype=np.float64)
    break_mel = _MEL_BREAK_HZ / _MEL_LINEAR_HZ
    return np.where(mel >= break_mel, _MEL_BREAK_HZ * np.exp(_MEL_LOG_STEP * (mel - break_mel)), mel * _MEL_LINEAR_HZ)


@lru_cache(maxsize=8)
def _window(n_fft: int, win_length: int) -> np.ndarray:
    """A periodic Hann window of `win_length`, centred in `n_fft` (librosa's STFT convention)."""
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win_length) / win_length)
    pad = (n_fft - win_length) // 2
    return np.pad(window, (pad, n_fft - win_length - pad)).astype(np.float32)


def log_mel(audio: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """(n_mels, T) log-mel power in dB, T = 1 + len(audio) // hop_length (librosa's centred framing).

    Equal to `librosa.power_to_db(librosa.feature.melspectrogram(...), ref=1.0)`; written out so the mel basis
    and window are built once per process instead of per file. Absolute dB (ref 1.0), not per-file
    normalised: loudness is an emotion cue.
    """
    import scipy.fft  # here, not at the top: a cache hit of `prepare` never computes a spectrogram

    max_samples = int(config.max_seconds * config.sample_rate)
    audio = audio[:max_samples]
    pad = config.n_fft // 2
    padded = np.pad(audio, (pad, pad), mode="constant")
    n_frames = 1 + (padded.size - config.n_fft) // config.hop_length
    frames = np.lib.stride_tricks.sliding_window_view(padded, config.n_fft)[:: config.hop_length][:n_frames]
    # scipy's FFT stays in float32 (numpy's upcasts to float64): 4x faster per file, within 1e-4 dB of librosa.
    spectrum = scipy.fft.rfft(frames * _window(config.n_fft, config.win_length), axis=1)  # (T, n_fft/2+1) complex64
    power = spectrum.real**2 + spectrum.imag**2  # (T, n_fft/2+1) float32
    mel = _mel_basis(config.sample_rate, config.n_fft, config.n_mels, config.fmin_hz, config.fmax_hz) @ power.T
    np.maximum(mel, LOG_FLOOR_POWER, out=mel)
    np.log10(mel, out=mel)
    mel *= 10.0
    return mel  # (n_mels, T) float32 dB


def audio_features(path: Path, config: FeatureConfig) -> tuple[np.ndarray, float]:
    """The log-mel of one file and the seconds of audio it was computed from (at most `max_seconds`)."""
    audio = load_audio(path, config.sample_rate, max_seconds=None if config.max_seconds <= 0 else config.max_seconds,
                       min_seconds=config.min_seconds, silence_peak=config.silence_peak)
    return log_mel(audio, config), audio.size / config.sample_rate


def tokenize(tokenizer, texts: list[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (N, max_tokens) int32 and attention mask (N, max_tokens) int8, padded to a fixed length.

    A fixed length keeps the cache rectangular, so training reads it in one slice.
    """
    encoded = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_tokens,
                        return_attention_mask=True, return_token_type_ids=False)
    ids = np.asarray(encoded["input_ids"], dtype=np.int32).reshape(len(texts), max_tokens)
    mask = np.asarray(encoded["attention_mask"], dtype=np.int8).reshape(len(texts), max_tokens)
    return ids, mask


_SERIAL_BELOW = 8  # files: a process pool costs more than it saves on a handful


@contextlib.contextmanager
def parallel_map(n_items: int, workers: int = 0, chunksize: int = 8) -> Iterator:
    """An ordered, lazy map over every core for feature extraction (plain `map` for a handful of items).

    Shared by prepare and predict. Open it before loading torch or opening HDF5 files: workers are forked,
    and neither an HDF5 handle nor a running thread pool may cross a fork.
    """
    n_workers = workers or os.cpu_count() or 1
    if n_workers == 1 or n_items < _SERIAL_BELOW:
        yield map
        return
    # fork: workers inherit the already-imported numpy/soundfile instead of importing them again.
    # An executor, not multiprocessing.Pool: Pool.terminate() on an error path waits on locks a worker may hold,
    # and on SIGTERM a worker may ignore; the executor's shutdown only cancels what has not started.
    executor = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_init_worker)
    try:
        yield lambda fn, jobs: _windowed_map(executor, fn, list(jobs), chunksize, window=4 * n_workers)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _windowed_map(executor, fn, jobs: list, chunksize: int, window: int) -> Iterator:
    """Ordered results of fn over jobs, at most `window` chunks in flight: memory stays flat however many jobs."""
    chunks = iter([jobs[i:i + chunksize] for i in range(0, len(jobs), chunksize)])
    pending = collections.deque(executor.submit(_apply, fn, c) for c in itertools.islice(chunks, window))
    while pending:
        results = pending.popleft().result()
        following = next(chunks, None)
        if following is not None:
            pending.append(executor.submit(_apply, fn, following))
        yield from results


def _apply(fn, chunk: list) -> list:
    return [fn(job) for job in chunk]


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when its parent dies (kill -9 of prepare must leave no orphan)."""
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    except (OSError, AttributeError):
        return  # not Linux: the executor's own shutdown still ends the workers
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _init_worker() -> None:
    """One BLAS/FFT thread per worker: the pool already uses every core. Ctrl-C (SIGINT to the whole process group)
    is the parent's to handle: it stops the pool, while an interrupted worker would print its own traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
