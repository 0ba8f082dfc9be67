"""Text to speech with eSpeak NG, loaded with ctypes from the PyPI package `espeakng-loader` (libespeak-ng and its
voice data, nothing downloaded): the generated corpus speaks its transcripts, so the recogniser and the pretrained
speech encoders meet words, not tones.

eSpeak NG is a formant synthesiser, ~800x faster than real time. Its library keeps state from one utterance to the
next that its API cannot reset (the same text renders a few samples differently after different predecessors;
srand, espeak_ng_SetRandSeed and re-initialising do not help), and it is not thread-safe. So a corpus is rendered by
`speak_in_order`: one fresh process, the utterances in one fixed order, which makes the result a function of the
list alone: deterministic for a seed, whoever calls it and whatever ran before.
"""

from __future__ import annotations

import ctypes
import functools
import json
import re
import threading
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

import numpy as np

from emocli.errors import ConfigError

OUTPUT_RATE_HZ = 16_000
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM = {"rate": 1, "volume": 2, "pitch": 3, "range": 4, "wordgap": 7}
# eSpeak's own bounds: words per minute, and 0-200 volume, 0-99 pitch and range
RATE_WPM = (80, 450)
VOLUME = (0, 200)
PITCH = (0, 99)
RANGE = (0, 99)
_TAG = re.compile(r"\[[^\]]*\]")  # [LAUGHTER], [BREATHING]: sounds, not words to read out
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class SpeechSettings:
    voice: str  # an eSpeak voice and variant, e.g. "en-us+f2"
    rate_wpm: float = 175.0
    pitch: float = 50.0
    pitch_range: float = 50.0
    volume: float = 100.0


class Espeak:
    """The loaded library; `speak` renders one text."""

    def __init__(self, lib, native_rate: int):
        self._lib, self._native_rate = lib, native_rate
        self._chunks: list[np.ndarray] = []
        self._callback = _SYNTH_CALLBACK(self._collect)  # kept referenced: the library calls it later
        lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()

    def _collect(self, wav, n: int, events) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0: go on

    def speak(self, text: str, settings: SpeechSettings) -> np.ndarray:
        """float32 mono at 16 kHz; empty for a text with nothing to say (a tag alone)."""
        import soxr

        spoken = " ".join(_TAG.sub(" ", text).split())
        if not spoken:
            return np.zeros(0, dtype=np.float32)
        data = spoken.encode("utf-8") + b"\0"
        with self._lock:
            if self._lib.espeak_SetVoiceByName(settings.voice.encode()) != 0:
                raise ConfigError(f"eSpeak NG has no voice {settings.voice!r}")
            for name, value, (low, high) in (("rate", settings.rate_wpm, RATE_WPM), ("pitch", settings.pitch, PITCH),
                                             ("range", settings.pitch_range, RANGE),
                                             ("volume", settings.volume, VOLUME)):
                self._lib.espeak_SetParameter(_PARAM[name], int(round(min(max(value, low), high))), 0)
            self._chunks = []
            # Breath noise draws from a generator espeak_Initialize seeds from the clock: seeded here, with libc's.
            _libc_srand(_NOISE_SEED)
            self._lib.espeak_ng_SetRandSeed(_NOISE_SEED)
            status = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self._lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        if status != 0:
            raise ConfigError(f"eSpeak NG could not render {spoken[:40]!r} (status {status})")
        if not chunks:
            return np.zeros(0, dtype=np.float32)
        pcm = np.concatenate(chunks).astype(np.float32) / 32768.0
        return soxr.resample(pcm, self._native_rate, OUTPUT_RATE_HZ).astype(np.float32)


_STARTING = threading.Lock()
_NOISE_SEED = 1


@functools.lru_cache(maxsize=1)
def _libc():
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c"))


def _libc_srand(seed: int) -> None:
    _libc().srand(ctypes.c_uint(seed))


def espeak() -> Espeak:
    """The process's eSpeak NG, initialised once (the synthesiser renders from two threads)."""
    with _STARTING:
        return _started()


@functools.lru_cache(maxsize=1)
def _started() -> Espeak:
    try:
        import espeakng_loader
    except ImportError:
        raise ConfigError("speaking the generated corpus needs the package espeakng-loader (libespeak-ng and its "
                          "voices); install it with `pip install espeakng-loader`, or use --speech tones") from None
    from pathlib import Path

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    # The folder that holds espeak-ng-data, as the library expects; never the system's own data.
    home = str(Path(espeakng_loader.get_data_path()).parent).encode()
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, home, 0)
    if rate <= 0:
        raise ConfigError(f"eSpeak NG did not start (espeak_Initialize returned {rate}); reinstall espeakng-loader")
    return Espeak(lib, rate)


def speak_in_order(jobs: Iterable[tuple[str, SpeechSettings]]) -> Iterator[np.ndarray]:
    """Each (text, settings) spoken, as int16 at 16 kHz, in order, by a freshly started Python process (see the
    module's docstring for why); results stream back as they are made.

    A plain subprocess speaking a length-prefixed protocol on its pipes, not multiprocessing: no resource tracker,
    no semaphores, no re-import of the caller's __main__, and a worker that dies is an error, never a hang."""
    import subprocess
    import sys

    payload = json.dumps([[text, asdict(settings)] for text, settings in jobs]).encode()
    count = len(json.loads(payload))
    worker = subprocess.Popen([sys.executable, "-c", "from emocli.tts import _serve; _serve()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        worker.stdin.write(payload)  # the worker reads all of it before it writes anything: no deadlock
        worker.stdin.close()
        for _ in range(count):
            header = worker.stdout.read(4)
            if len(header) < 4:
                break
            n = int.from_bytes(header, "little")
            yield np.frombuffer(worker.stdout.read(2 * n), dtype="<i2")
        else:
            if worker.wait() == 0:
                return
        worker.wait()
        reason = (worker.stderr.read().decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise ConfigError(f"the eSpeak NG worker process failed ({reason}); use --speech tones to generate "
                          f"without it")
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        for stream in (worker.stdout, worker.stderr):
            stream.close()


def _serve() -> None:
    """The worker of `speak_in_order`: jobs as JSON on stdin, (uint32 samples, int16 PCM) per job on stdout."""
    import sys

    jobs = json.loads(sys.stdin.buffer.read())
    out = sys.stdout.buffer
    engine = espeak()
    for text, settings in jobs:
        audio = engine.speak(text, SpeechSettings(**settings))
        pcm = np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2")
        out.write(pcm.size.to_bytes(4, "little"))
        out.write(pcm.tobytes())
    out.flush()
