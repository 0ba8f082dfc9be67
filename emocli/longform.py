"""Long recordings as a timeline: a file is streamed in blocks, voice-activity detection cuts it into utterances,
and each utterance is then transcribed and classified like a short file.

Memory stays bounded whatever the length: the file is read block by block and resampled as a stream (soxr), the
VAD (Silero, the copy faster-whisper ships, sha256-pinned) carries its recurrent state from block to block, and only
the audio of the utterance being cut is held (at most `max_segment_s` plus a pause).
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from emocli.errors import AudioError, EncoderError

SAMPLE_RATE_HZ = 16_000  # what the VAD, Whisper and the log-mel front end all read
VAD_WINDOW = 512  # samples per VAD decision at 16 kHz: 32 ms
VAD_CONTEXT = 64  # samples of the previous window the model sees with each window
VAD_STATE = (1, 1, 128)
VAD_FILE = "silero_vad_v6.onnx"
VAD_SHA256 = "4cbf549b8326f60f80f2536d9eefeb450a9abe83365a098031c89719f1be17d2"
READ_BLOCK_S = 30.0  # seconds decoded at a time


@dataclass(frozen=True)
class SegmentConfig:
    """How speech is cut into utterances (Silero's own defaults where they fit emotion: utterances, not words)."""

    threshold: float = 0.5  # speech starts when the probability reaches this
    neg_threshold: float = 0.35  # and a window below this counts as pause
    min_speech_s: float = 0.25  # shorter bursts (clicks, breaths) are dropped
    min_silence_s: float = 0.5  # a pause this long ends an utterance
    pad_s: float = 0.2  # audio kept before and after each utterance
    max_segment_s: float = 15.0  # longer speech is cut at its quietest point near this length (the model's window)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Segment:
    start: float  # seconds from the start of the recording
    end: float
    audio: np.ndarray  # (samples,) float32 at 16 kHz, padding included


def audio_duration(path: Path) -> float | None:
    """Seconds of audio in `path` from its header alone; None when the header does not say."""
    import soundfile

    try:
        info = soundfile.info(str(path))
    except Exception:
        return None
    return info.frames / info.samplerate if info.samplerate > 0 and info.frames > 0 else None


Damage = Callable[[float, float, str], None]  # (from s, to s, why): a stretch that could not be decoded


def stream_audio(path: Path, block_s: float = READ_BLOCK_S, on_damage: Damage | None = None) -> Iterator[np.ndarray]:
    """Mono float32 blocks at 16 kHz; the file is never held whole. A stretch that cannot be decoded is, with
    `on_damage`, replaced by silence of its length (so later times stay right), reported, and the rest read on;
    without it, AudioError naming where it happened."""
    import soxr

    handle = _open(path)
    rate, total = handle.samplerate, handle.frames
    resampler = soxr.ResampleStream(rate, SAMPLE_RATE_HZ, 1, dtype="float32") if rate != SAMPLE_RATE_HZ else None
    want, done = max(1, int(block_s * rate)), 0
    try:
        while True:
            try:
                block = handle.read(want, dtype="float32", always_2d=True)
            except Exception as exc:  # libsndfile's error on a damaged frame
                if on_damage is None:
                    raise AudioError(f"{path}: cannot decode after {done / rate:.1f} s ({type(exc).__name__}); the "
                                     f"audio before it was used") from None
                handle.close()
                block = _read_around_damage(path, done, min(want, max(total - done, 0)) or want, rate, on_damage,
                                            type(exc).__name__)
                handle = _open(path)
                handle.seek(min(done + len(block), total))
            last = len(block) < want or done + len(block) >= total
            done += len(block)
            mono = block.mean(axis=1, dtype=np.float32) if block.shape[1] > 1 else block[:, 0]
            if not np.isfinite(mono).all():
                mono = np.nan_to_num(mono, nan=0.0, posinf=0.0, neginf=0.0)
            if resampler is not None:
                mono = resampler.resample_chunk(mono, last=last)
            if mono.size:
                yield np.ascontiguousarray(mono, dtype=np.float32)
            if last:
                return
    finally:
        handle.close()


def _open(path: Path):
    import soundfile

    try:
        return soundfile.SoundFile(str(path))
    except Exception as exc:
        raise AudioError(f"{path}: cannot decode ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") \
            from None


def _read_around_damage(path: Path, start: int, frames: int, rate: int, on_damage: Damage, why: str) -> np.ndarray:
    """`frames` frames from `start`, a second at a time, each from a freshly opened file (libsndfile does not read on
    after an error); seconds that still fail become silence and are reported, merged into spans."""
    pieces, bad_from = [], None
    channels = None
    for at in range(start, start + frames, rate):
        n = min(rate, start + frames - at)
        try:
            with _open(path) as handle:
                handle.seek(at)
                piece = handle.read(n, dtype="float32", always_2d=True)
                channels = piece.shape[1]
            if len(piece) < n:
                piece = np.concatenate([piece, np.zeros((n - len(piece), piece.shape[1]), np.float32)])
            if bad_from is not None:
                on_damage(bad_from / rate, at / rate, why)
                bad_from = None
        except AudioError:
            raise
        except Exception:
            piece = None
            bad_from = at if bad_from is None else bad_from
        pieces.append(piece if piece is not None else n)
    if bad_from is not None:
        on_damage(bad_from / rate, (start + frames) / rate, why)
    channels = channels or 1
    return np.concatenate([p if isinstance(p, np.ndarray) else np.zeros((p, channels), np.float32) for p in pieces])


class SileroVad:
    """Speech probability per 32 ms window, stateful across calls so a stream gives what the whole file would."""

    def __init__(self, session):
        self._session = session
        self.reset()

    @classmethod
    def load(cls) -> "SileroVad":
        return cls(_vad_session())

    def reset(self) -> None:
        self._h = np.zeros(VAD_STATE, dtype=np.float32)
        self._c = np.zeros(VAD_STATE, dtype=np.float32)
        self._context = np.zeros(VAD_CONTEXT, dtype=np.float32)

    def probabilities(self, windows: np.ndarray) -> np.ndarray:
        """(N, 512) consecutive windows -> (N,) speech probabilities."""
        if not len(windows):
            return np.zeros(0, dtype=np.float32)
        previous = np.concatenate([self._context[None], windows[:-1, -VAD_CONTEXT:]])
        batch = np.ascontiguousarray(np.concatenate([previous, windows], axis=1), dtype=np.float32)
        probs, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
        self._context = windows[-1, -VAD_CONTEXT:].copy()
        return np.asarray(probs, dtype=np.float32).reshape(-1)


@functools.lru_cache(maxsize=1)
def _vad_session():
    import onnxruntime

    from emocli.encoders.whisper import file_sha256

    try:
        import faster_whisper
    except ImportError:
        raise EncoderError("segmenting long recordings needs the package faster-whisper (it carries the Silero "
                           "VAD); install it with `pip install faster-whisper`") from None
    path = Path(faster_whisper.__file__).parent / "assets" / VAD_FILE
    if not path.is_file():
        raise EncoderError(f"{path} is missing: reinstall faster-whisper (`pip install --force-reinstall "
                           f"faster-whisper`)")
    if file_sha256(path) != VAD_SHA256:
        raise EncoderError(f"{path} is not the Silero VAD emocli was checked with (sha256 differs); reinstall "
                           f"faster-whisper 1.2")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1  # a small LSTM: threads only synchronise
    options.log_severity_level = 4
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class _Cutter:
    """The utterance state machine over window probabilities, with the audio it still needs."""

    def __init__(self, config: SegmentConfig):
        self.c = config
        self.min_silence = max(1, round(config.min_silence_s * SAMPLE_RATE_HZ / VAD_WINDOW))
        self.min_speech = max(1, round(config.min_speech_s * SAMPLE_RATE_HZ / VAD_WINDOW))
        self.max_windows = max(self.min_speech + 1, int(config.max_segment_s * SAMPLE_RATE_HZ / VAD_WINDOW)
                               - 2 * round(config.pad_s * SAMPLE_RATE_HZ / VAD_WINDOW))
        self.pad = int(config.pad_s * SAMPLE_RATE_HZ)
        self.audio = np.zeros(0, dtype=np.float32)  # samples from `audio_start` on
        self.audio_start = 0
        self.probs: list[float] = []  # of the windows since `start`
        self.start: int | None = None  # window index where the current utterance began
        self.silence = 0  # consecutive pause windows at the end of the current utterance
        self.last_end = 0  # sample where the previous segment's padding ended: never overlapped

    def add_audio(self, samples: np.ndarray) -> None:
        self.audio = np.concatenate([self.audio, samples]) if self.audio.size else samples

    def step(self, index: int, prob: float) -> Segment | None:
        if self.start is None:
            if prob >= self.c.threshold:
                self.start, self.silence, self.probs = index, 0, [prob]
            else:
                self._forget_before((index + 1) * VAD_WINDOW - self.pad)
            return None
        self.probs.append(prob)
        self.silence = self.silence + 1 if prob < self.c.neg_threshold else 0
        if self.silence >= self.min_silence:
            return self._close(index + 1 - self.silence, restart=None)
        if index + 1 - self.start >= self.max_windows:
            # Too long for the model's window: cut at the quietest window of its last third, carry on from there.
            tail = len(self.probs) - len(self.probs) // 3
            cut = self.start + tail + int(np.argmin(self.probs[tail:]))
            cut = max(cut, self.start + self.min_speech)
            return self._close(cut, restart=cut)
        return None

    def finish(self, total_windows: int, total_samples: int) -> Segment | None:
        if self.start is None:
            return None
        end = total_windows - self.silence
        return self._close(end, restart=None, total_samples=total_samples)

    def _close(self, end_window: int, restart: int | None, total_samples: int | None = None) -> Segment | None:
        start_window = self.start
        kept = self.probs[end_window - start_window:] if restart is not None else []
        self.start, self.silence, self.probs = restart, 0, kept
        if end_window - start_window < self.min_speech:
            return None
        first = max(start_window * VAD_WINDOW - self.pad, self.last_end, self.audio_start)
        last = end_window * VAD_WINDOW + (self.pad if restart is None else 0)
        last = min(last, self.audio_start + self.audio.size, total_samples or last)
        segment = Segment(first / SAMPLE_RATE_HZ, last / SAMPLE_RATE_HZ,
                          self.audio[first - self.audio_start:last - self.audio_start].copy())
        self.last_end = last
        if restart is None:
            self._forget_before(last)
        else:
            self._forget_before(end_window * VAD_WINDOW)
        return segment

    def _forget_before(self, sample: int) -> None:
        drop = min(max(0, sample - self.audio_start), self.audio.size)
        if drop:
            self.audio = self.audio[drop:]
            self.audio_start += drop


def speech_segments(path: Path, config: SegmentConfig = SegmentConfig(), vad: SileroVad | None = None,
                    on_damage: Damage | None = None) -> Iterator[Segment]:
    """The utterances of `path`, in order, as they are found. A stretch that cannot be decoded is silence to the VAD
    and goes to `on_damage`; without it, AudioError (after the utterances before the damage were yielded)."""
    vad = vad or SileroVad.load()
    vad.reset()
    cutter = _Cutter(config)
    pending = np.zeros(0, dtype=np.float32)  # samples not yet in a full VAD window
    index = total = 0
    for block in stream_audio(path, on_damage=on_damage):
        cutter.add_audio(block)
        total += block.size
        pending = np.concatenate([pending, block]) if pending.size else block
        n = pending.size // VAD_WINDOW
        probs = vad.probabilities(pending[:n * VAD_WINDOW].reshape(n, VAD_WINDOW))
        pending = pending[n * VAD_WINDOW:]
        for prob in probs:
            segment = cutter.step(index, float(prob))
            index += 1
            if segment is not None:
                yield segment
    if pending.size:  # the last partial window, zero-padded as the model expects
        window = np.zeros((1, VAD_WINDOW), dtype=np.float32)
        window[0, :pending.size] = pending
        segment = cutter.step(index, float(vad.probabilities(window)[0]))
        index += 1
        if segment is not None:
            yield segment
    segment = cutter.finish(index, total)
    if segment is not None:
        yield segment


# --------------------------------------------------------------------------------------------- timeline


def time_shares(rows: list[tuple[float, float, str]], classes: tuple[str, ...]) -> dict[str, float]:
    """Share of the speech time (segments' start..end) labelled with each class; sums to 1 when there is speech."""
    total = sum(end - start for start, end, _ in rows)
    return {c: (sum(end - start for start, end, label in rows if label == c) / total if total else 0.0)
            for c in classes}
