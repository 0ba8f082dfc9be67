"""The one preprocessing path shared by prepare, train and predict: audio -> log-mel dB, text -> token ids.

Settings live in `FeatureConfig`, which is saved in the cache and in every run, so `predict` reproduces exactly
what the model was trained on.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import itertools
import json
import multiprocessing
import os
import signal
import struct
import threading
import time
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


def mono_at_rate(audio: np.ndarray, native_rate: int, sample_rate: int, name: str, exact: bool = False,
                 advice: str = "") -> np.ndarray:
    """Decoded samples, (N,) or (N, channels), as float32 mono at `sample_rate`: the one way every input is made,
    a file (`load_audio`) or a waveform given in Python (`emocli.api`). `exact`: 16-bit PCM, which needs neither the
    finiteness check nor clipping unless it is resampled."""
    if not exact:
        if not np.all(np.isfinite(audio)):
            raise AudioError(f"{name}: contains NaN or infinite samples" + (f"; {advice}" if advice else ""))
        # Float input may exceed full scale; clipped per channel first, since mixing or resampling such values
        # can overflow float32 into inf and NaN.
        audio = np.clip(audio, -1.0, 1.0)
    if audio.ndim == 2:  # stereo and multichannel are averaged to mono; a mono column is taken as it is
        audio = audio[:, 0] if audio.shape[1] == 1 else audio.mean(axis=1)
    if native_rate != sample_rate:
        import librosa

        audio = librosa.resample(audio, orig_sr=native_rate, target_sr=sample_rate, res_type="soxr_hq")
        exact = False
    if not exact:  # resampling can overshoot full scale a little
        audio = np.clip(audio, -1.0, 1.0)
    return audio.astype(np.float32, copy=False)


def load_audio(path: Path, sample_rate: int = SAMPLE_RATE_HZ, max_seconds: float | None = None,
               min_seconds: float = 0.0, silence_peak: float = 0.0) -> np.ndarray:
    """Decode any file soundfile (or librosa's fallback) reads into float32 mono at `sample_rate`.

    Raises AudioError with the file name for anything that is not usable audio.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise AudioError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        canonical = _read_canonical_wav(path, size, max_seconds)
    except OSError as exc:
        raise AudioError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if canonical is not None:
        pcm, native_rate = canonical
        audio, exact = _pcm16_to_float(pcm), True
    else:
        audio, native_rate, exact = _read_with_soundfile(path, max_seconds)
    if audio.size == 0:
        raise AudioError(f"{path}: no samples (header only)")
    audio = mono_at_rate(audio, native_rate, sample_rate, str(path), exact, advice="re-export it as PCM")
    if audio.size < min_seconds * sample_rate:
        raise AudioError(f"{path}: too short ({audio.size / sample_rate:.3f} s < {min_seconds} s)")
    if silence_peak > 0 and max(float(audio.max()), -float(audio.min())) < silence_peak:
        raise AudioError(f"{path}: silent (peak amplitude below {silence_peak})")
    return audio


_CANONICAL_HEADER_BYTES = 44


def _read_canonical_wav(path: Path, size: int, max_seconds: float | None) -> tuple[np.ndarray, int] | None:
    """The int16 samples and rate of a wav in IEMOCAP's own layout, read by numpy; None for any other file.

    That layout is the plainest there is: a 44-byte RIFF header (a 16-byte PCM `fmt ` chunk, then `data`), mono,
    16-bit, the data running exactly to the end of the file. libsndfile's general reader costs twice as long per
    file; anything else (extra chunks, another format, channel count or sample width, a data size that does not
    match the file's, as in a truncated copy) is left to it, so odd files behave as they always did. The RIFF size
    field is not checked: libsndfile ignores it too.
    """
    with open(path, "rb") as handle:
        header = handle.read(_CANONICAL_HEADER_BYTES)
        if (len(header) < _CANONICAL_HEADER_BYTES or header[:4] != b"RIFF" or header[8:16] != b"WAVEfmt "
                or header[36:40] != b"data"):
            return None
        fmt_bytes, tag, channels, rate, byte_rate, align, bits = struct.unpack_from("<IHHIIHH", header, 16)
        (data_bytes,) = struct.unpack_from("<I", header, 40)
        if (fmt_bytes, tag, channels, bits, align) != (16, 1, 1, 16, 2) or byte_rate != 2 * rate or rate == 0:
            return None
        if data_bytes != size - _CANONICAL_HEADER_BYTES or data_bytes % 2:
            return None
        frames = data_bytes // 2
        if max_seconds is not None:
            frames = min(frames, _frames_kept(max_seconds, rate))
        return np.fromfile(handle, dtype="<i2", count=frames), rate


def _frames_kept(max_seconds: float, rate: int) -> int:
    """Read no more than we keep: a 10-minute file costs no more than max_seconds of decoding."""
    return int(np.ceil(max_seconds * rate))


def _pcm16_to_float(pcm: np.ndarray) -> np.ndarray:
    """int16 samples as float32 in [-1, 1): numpy's conversion is 2x faster than libsndfile's, and gives the
    very floats libsndfile's float read does (tested)."""
    audio = pcm.astype(np.float32)
    audio *= np.float32(1 / 32768)
    return audio


def _read_with_soundfile(path: Path, max_seconds: float | None) -> tuple[np.ndarray, int, bool]:
    """Samples (frames, channels), rate, and whether they are integer PCM (finite, within full scale)."""
    import soundfile as sf

    try:
        with sf.SoundFile(str(path)) as handle:
            native_rate = handle.samplerate
            # Integer PCM decodes to finite values within full scale: the checks below are for float data.
            exact = handle.subtype.startswith("PCM_")
            frames = -1 if max_seconds is None else _frames_kept(max_seconds, native_rate)
            if handle.subtype == "PCM_16":
                audio = _pcm16_to_float(handle.read(frames=frames, dtype="int16", always_2d=True))
            else:
                audio = handle.read(frames=frames, dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError, TypeError for odd headers
        audio, native_rate = _load_with_librosa(path, max_seconds, exc)
        exact = False
    return audio, native_rate, exact


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
def mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
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
    return _read_only(weights.astype(np.float32))


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
def stft_window(n_fft: int, win_length: int) -> np.ndarray:
    """A periodic Hann window of `win_length`, centred in `n_fft` (librosa's STFT convention)."""
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(win_length) / win_length)
    pad = (n_fft - win_length) // 2
    return _read_only(np.pad(window, (pad, n_fft - win_length - pad)).astype(np.float32))


def _read_only(array: np.ndarray) -> np.ndarray:
    """Cached arrays are shared by every later call: an in-place edit by any caller would change all spectrograms."""
    array.flags.writeable = False
    return array


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
    spectrum = scipy.fft.rfft(frames * stft_window(config.n_fft, config.win_length), axis=1)  # (T, n_fft/2+1) complex64
    power = np.abs(spectrum)
    power *= power  # (T, n_fft/2+1) float32, |X|^2 as librosa computes it
    # The mel filters are 98 % zeros (each band spans a few FFT bins): a sparse product is ~4x faster than BLAS.
    mel = _sparse_mel_basis_t(config.sample_rate, config.n_fft, config.n_mels, config.fmin_hz, config.fmax_hz)
    mel = np.asarray(power @ mel)  # (T, n_mels)
    np.maximum(mel, LOG_FLOOR_POWER, out=mel)
    np.log10(mel, out=mel)
    mel *= 10.0
    return mel.T  # (n_mels, T) float32 dB


@lru_cache(maxsize=8)
def _sparse_mel_basis_t(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float):
    """The transposed mel basis, (n_fft/2+1, n_mels), as a scipy CSR matrix."""
    import scipy.sparse

    return scipy.sparse.csr_matrix(mel_basis(sample_rate, n_fft, n_mels, fmin, fmax).T)


def audio_features(path: Path, config: FeatureConfig) -> tuple[np.ndarray, float]:
    """The log-mel of one file and the seconds of audio it was computed from (at most `max_seconds`)."""
    audio = load_audio(path, config.sample_rate, max_seconds=None if config.max_seconds <= 0 else config.max_seconds,
                       min_seconds=config.min_seconds, silence_peak=config.silence_peak)
    return log_mel(audio, config), audio.size / config.sample_rate


_F16_SMALLEST_NORMAL = 0x38800000  # float32 bits of 2**-14: below it, float16 goes subnormal
_F16_ROUNDS_TO_INF = 0x477FF000  # float32 bits from which float16 rounds to infinity
_F16_ROUND_AND_REBIAS = (0x0FFF - (112 << 23)) & 0xFFFFFFFF  # half an ulp less one; exponent bias 127 -> 15


def to_float16(values: np.ndarray) -> np.ndarray:
    """float32 -> float16 with round-to-nearest-even, bit for bit what `astype(np.float16)` gives a float32 array
    (other dtypes are made float32 first).

    numpy's cast is scalar on this project's CPUs (0.15 ms per 4.5 s spectrogram, a seventh of a worker's time
    per file); on the bits it is a few vector passes (0.05 ms). Only normal float16 values take the fast path, which
    log-mel dB almost always are; anything else (zero, subnormal, overflow, NaN) falls back to numpy's cast.
    """
    shape = np.shape(values)
    values = np.ascontiguousarray(values, dtype=np.float32)  # 0-d becomes (1,): the shape is put back below
    bits = values.view(np.uint32)
    magnitude = bits & np.uint32(0x7FFFFFFF)
    if magnitude.size == 0 or magnitude.min() < _F16_SMALLEST_NORMAL or magnitude.max() >= _F16_ROUNDS_TO_INF:
        return values.astype(np.float16).reshape(shape)
    half = magnitude >> 13
    half &= np.uint32(1)  # the kept mantissa's lowest bit: ties round to even
    half += magnitude
    half += np.uint32(_F16_ROUND_AND_REBIAS)
    half >>= 13
    sign = bits >> 16
    sign &= np.uint32(0x8000)
    half |= sign
    return half.astype(np.uint16).view(np.float16).reshape(shape)


def tokenize(tokenizer, texts: list[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids (N, max_tokens) int32 and attention mask (N, max_tokens) int8, padded to a fixed length.

    A fixed length keeps the cache rectangular, so training reads it in one slice. Tokenised in blocks: the
    tokenizer's per-text objects (tokens, offsets, Python int lists) cost ~6 KB a text, 33 MB of prepare's peak
    for IEMOCAP's 5.5k transcripts when made all at once.
    """
    texts = list(texts)
    ids = np.zeros((len(texts), max_tokens), dtype=np.int32)
    mask = np.zeros((len(texts), max_tokens), dtype=np.int8)
    for start in range(0, len(texts), _TOKENIZE_BLOCK):
        block = texts[start:start + _TOKENIZE_BLOCK]
        encoded = tokenizer(block, padding="max_length", truncation=True, max_length=max_tokens,
                            return_attention_mask=True, return_token_type_ids=False)
        ids[start:start + len(block)] = np.asarray(encoded["input_ids"], dtype=np.int32).reshape(len(block), -1)
        mask[start:start + len(block)] = np.asarray(encoded["attention_mask"], dtype=np.int8).reshape(len(block), -1)
    return ids, mask


_TOKENIZE_BLOCK = 512


_M_TOP_PAD = -2  # glibc's mallopt parameter number


def keep_freed_memory(pad_bytes: int = 64 << 20) -> None:
    """Let glibc keep up to `pad_bytes` of freed heap instead of returning it to the OS at once.

    Each spectrogram allocates a few ~1 MB arrays; by default glibc hands them back on free and the next file
    page-faults them in again, which was half of `log_mel`'s time (1.39 -> 0.66 ms per 4.5 s file). A no-op
    where the C library is not glibc.

    Set where spectrograms are computed or collected (each pool worker, the caller of a map) when the map starts,
    not before: set when prepare's pool opened, the thread then inflating the archive kept 64 MB in its own arena
    too (peak RSS +50 MB).
    """
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_TOP_PAD, pad_bytes)
    except (OSError, AttributeError):
        pass


_SERIAL_BELOW = 8  # files: a process pool costs more than it saves on a handful


@contextlib.contextmanager
def parallel_map(n_items: int | None = None, workers: int = 0, chunksize: int = 8) -> Iterator:
    """An ordered map over every core for feature extraction (plain `map` for a handful of items; `None`:
    not known yet, a pool).

    Shared by prepare and predict. Open it before loading torch or opening HDF5 files: workers are forked,
    and neither an HDF5 handle nor a running thread pool may cross a fork. The workers start and import what
    they need at once, while the caller goes on (reading the corpus, loading the model).
    """
    n_workers = workers or os.cpu_count() or 1
    if n_workers == 1 or (n_items is not None and n_items < _SERIAL_BELOW):
        keep_freed_memory()  # this process computes the spectrograms
        yield map
        return
    window = 4 * n_workers
    slots = _SharedSlots(window)  # mapped before the fork, so that every worker shares it
    # fork: workers inherit the already-imported numpy/soundfile instead of importing them again.
    # An executor, not multiprocessing.Pool: Pool.terminate() on an error path waits on locks a worker may hold,
    # and on SIGTERM a worker may ignore; the executor's shutdown only cancels what has not started.
    executor = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("fork"),
                                   initializer=_init_worker)
    try:
        executor.submit(int)  # the executor forks on its first submit: every worker starts (and warms up) now
        yield lambda fn, jobs: _windowed_map(executor, fn, list(jobs), chunksize, window, slots)
    except BaseException:
        # Interrupted (Ctrl-C, a signal to the whole process group that also killed workers) or failed: never wait
        # on the executor. CPython 3.11's manager thread can die on a cancelled future of a broken pool
        # (InvalidStateError) and leave shutdown(wait=True) blocked forever; the workers are stopped here instead.
        _stop_workers(executor)
        raise
    else:
        executor.shutdown(wait=True, cancel_futures=True)
    finally:
        slots.close()


_SETTLE_S = 5.0  # how long an interrupted map waits for chunks already running


def _quiet_broken_pool(args) -> None:
    """CPython 3.11's executor manager thread dies with InvalidStateError when a pool whose workers were killed
    still holds a cancelled future; the interruption is reported by the command itself, so that thread's
    traceback is not printed over it."""
    if args.exc_type is concurrent.futures.InvalidStateError and "cancelled" in str(args.exc_value).lower():
        return
    _PREVIOUS_THREAD_HOOK(args)


_PREVIOUS_THREAD_HOOK = threading.excepthook
threading.excepthook = _quiet_broken_pool


def _stop_workers(executor: ProcessPoolExecutor, grace_s: float = 2.0) -> None:
    processes = list((getattr(executor, "_processes", None) or {}).values())
    executor.shutdown(wait=False, cancel_futures=True)
    # concurrent.futures wakes every executor's manager thread at interpreter exit through a pipe this shutdown may
    # already have closed ("Exception ignored … Bad file descriptor" printed after our one line): this executor is
    # done, so it is taken off that list.
    import concurrent.futures.process as executor_internals

    manager = getattr(executor, "_executor_manager_thread", None)
    if manager is not None:
        getattr(executor_internals, "_threads_wakeups", {}).pop(manager, None)
    for process in processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()  # also ends a stopped (SIGSTOP) worker, which SIGTERM cannot
            process.join(5.0)


class _SharedSlots:
    """Anonymous shared memory through which workers hand back the arrays they compute, one slot per chunk in
    flight. Pickled through the executor's pipe, a spectrogram was copied four times and the main process spent
    its time unpickling; here a worker writes it once and the main process copies it out once.

    Mapped before the workers fork, it is the same memory in every process. Only one map uses it at a time:
    another (an abandoned generator still in flight) falls back to the pipe.
    """

    SLOT_BYTES = 4 << 20  # a chunk of 8 float16 spectrograms of the longest kept audio (15 s) needs 3 MB

    def __init__(self, count: int):
        import mmap

        self.memory = mmap.mmap(-1, count * self.SLOT_BYTES)  # MAP_SHARED | MAP_ANONYMOUS
        self.busy = False
        _SLOTS[id(self)] = self

    def view(self, slot: int) -> memoryview:
        return memoryview(self.memory)[slot * self.SLOT_BYTES:(slot + 1) * self.SLOT_BYTES]

    def close(self) -> None:
        _SLOTS.pop(id(self), None)
        with contextlib.suppress(BufferError):  # a view still referenced elsewhere: the GC unmaps it later
            self.memory.close()


_SLOTS: dict[int, _SharedSlots] = {}  # what forked workers find by key (an mmap cannot be pickled)


@dataclass(frozen=True)
class _InSlot:
    """Stands for an array a worker left in its chunk's slot."""

    offset: int
    shape: tuple
    dtype: str
    order: str


def _windowed_map(executor, fn, jobs: list, chunksize: int, window: int, slots: _SharedSlots) -> Iterator:
    """Ordered results of fn over jobs, at most `window` chunks in flight: memory stays flat however many jobs.

    The first chunks are submitted on the call, not on the first `next`: the workers start computing while the
    caller does other work (prepare loads the tokenizer and tokenises every transcript meanwhile).
    """
    # This process copies every result out and on: 6k fewer page faults in a 10k prepare. 16 MB keeps as many
    # away as 64 MB does here (4 MB does not), and holds less.
    keep_freed_memory(16 << 20)
    shared = None if slots.busy else slots
    if shared is not None:
        shared.busy = True
    chunks = iter([jobs[i:i + chunksize] for i in range(0, len(jobs), chunksize)])
    submitted = itertools.count()

    def submit(chunk: list):
        slot = next(submitted) % window
        if shared is None:
            return executor.submit(_apply, fn, chunk), None
        return executor.submit(_apply_shared, fn, chunk, id(shared), slot), slot

    pending = collections.deque(submit(c) for c in itertools.islice(chunks, window))
    return _drain(pending, chunks, submit, shared)


def _drain(pending: collections.deque, chunks: Iterator, submit, shared: _SharedSlots | None) -> Iterator:
    try:
        while pending:
            future, slot = pending.popleft()
            try:
                results = future.result()
            except concurrent.futures.process.BrokenProcessPool:
                from emocli import signals
                from emocli.errors import EmocliError

                # Killed with us by a signal to the whole group? Its handler here runs at the next bytecodes.
                for _ in range(20):
                    signals.raise_if_received()
                    time.sleep(0.05)
                raise EmocliError("a feature worker process died (killed from outside, or out of memory?); nothing "
                                  "was written — run the command again") from None
            if slot is not None:  # copied out before the slot is handed to the next chunk
                view = shared.view(slot)
                results = [_from_slot(r, view) for r in results]
            following = next(chunks, None)
            if following is not None:
                pending.append(submit(following))
            yield from results
    finally:
        if shared is not None:  # chunks still running may write into the slots: wait for them before reuse
            for future, _ in pending:
                future.cancel()
            # Bounded: when the workers were killed (a signal to the whole process group) these futures may never
            # settle. Slots that may still be written are then simply never handed out again.
            _, running = concurrent.futures.wait([future for future, _ in pending], timeout=_SETTLE_S)
            shared.busy = bool(running)


def _apply(fn, chunk: list) -> list:
    return [fn(job) for job in chunk]


def _apply_shared(fn, chunk: list, key: int, slot: int) -> list:
    view, used, out = _SLOTS[key].view(slot), 0, []
    for job in chunk:
        result, used = _to_slot(fn(job), view, used)
        out.append(result)
    return out


def _to_slot(result, view: memoryview, used: int):
    """`result` with its arrays (itself, or the items of a tuple) written into `view` from byte `used` on,
    while they fit; what does not fit travels through the pipe as before."""
    if isinstance(result, tuple):
        items = []
        for item in result:
            item, used = _to_slot(item, view, used)
            items.append(item)
        return tuple(items), used
    if not isinstance(result, np.ndarray) or result.dtype.hasobject or used + result.nbytes > len(view):
        return result, used
    order = "F" if result.flags.f_contiguous and not result.flags.c_contiguous else "C"
    np.ndarray(result.shape, result.dtype, buffer=view, offset=used, order=order)[...] = result
    return _InSlot(used, result.shape, result.dtype.str, order), used + (result.nbytes + 63) // 64 * 64


def _from_slot(result, view: memoryview):
    if isinstance(result, tuple):
        return tuple(_from_slot(item, view) for item in result)
    if not isinstance(result, _InSlot):
        return result
    array = np.ndarray(result.shape, np.dtype(result.dtype), buffer=view, offset=result.offset, order=result.order)
    return array.copy(order="K")


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
    if hasattr(signal, "SIGHUP"):  # a closed terminal hangs up the whole group: also the parent's to handle
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if hasattr(signal, "SIGTERM"):  # the parent's handler (cleanup, one line) is not the worker's business
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent()
    keep_freed_memory()
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass
    import importlib

    for module in ("scipy.fft", "scipy.sparse"):  # log_mel's imports (~0.3 s), paid while the parent is still busy
        importlib.import_module(module)
