"""The HDF5 feature cache, and nothing else: its layout, its fingerprint, its atomic build, and reading it back.

Layout (FORMAT_VERSION 1), N utterances, F total frames:
    spec            float16 (F, n_mels)   every log-mel, time-major, concatenated in utterance order
    spec_offsets    int64   (N + 1,)      utterance i is spec[spec_offsets[i]:spec_offsets[i+1]]
    input_ids       int32   (N, L)        token ids padded to the fixed length L = max_tokens
    attention_mask  int8    (N, L)
    labels          int64   (N,)          index into attrs["label_set"]["classes"]
    durations       float32 (N,)          seconds of audio used, at most max_seconds (longer files are read no further)
    utt_ids, speakers, sessions, texts, raw_labels, audio_paths   utf-8 strings (N,)
    dimensions      float32 (N, 3)        valence, arousal, dominance on the corpus's scale, NaN where unknown;
                                          only when the corpus gives any (IEMOCAP's [V, A, D], manifest columns)
    attrs: format_version, fingerprint, and the JSON of every input that produced it.
One contiguous `spec` lets training read the whole corpus in a single read; no per-utterance file is opened.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emocli.atomic import create_temporary, temporary_name, file_lock, fsync_dir
from emocli.corpus.records import Utterance
from emocli.errors import CacheError

FORMAT_VERSION = 1
_STRING_FIELDS = ("utt_ids", "speakers", "sessions", "texts", "raw_labels", "audio_paths")
_GOLD_FIELD = "gold_texts"  # only in a cache whose texts were recognised
_DIMENSIONS_FIELD = "dimensions"  # only when the corpus gives dimensional values
_SPEC_CHUNK_FRAMES = 4096


def fingerprint(inputs: dict) -> str:
    """A digest of everything that determines the cache's content, the format version included."""
    payload = json.dumps({"format_version": FORMAT_VERSION, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class CacheInputs:
    """What a cache was made from, typed: the feature settings, the label set, the tokenizer, the reader and the
    source's identity. Its JSON (`CacheMeta.inputs`) is what the fingerprint digests."""

    features: "FeatureConfig"  # noqa: F821
    label_set: "LabelSet"  # noqa: F821
    tokenizer: dict  # {name, identity, model_type}
    reader: dict
    source: dict

    @classmethod
    def from_json(cls, data: dict, where: Path) -> "CacheInputs":
        from emocli.corpus.records import LabelSet
        from emocli.features import FeatureConfig

        try:
            return cls(features=FeatureConfig.from_json(data["feature_config"]),
                       label_set=LabelSet.from_json(data["label_set"]), tokenizer=dict(data.get("tokenizer", {})),
                       reader=dict(data.get("reader", {})), source=dict(data.get("source", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise CacheError(f"{where} has damaged settings ({type(exc).__name__}: {exc}); rebuild it with "
                             f"`emocli prepare`") from None


@dataclass(frozen=True)
class CacheMeta:
    fingerprint: str
    format_version: int
    inputs: dict  # feature_config, tokenizer, label_set, reader, source: whatever the builder fingerprinted
    summary: dict  # the read report's summary plus feature-stage skips

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.inputs["label_set"]["classes"])

    def typed_inputs(self, where: Path) -> CacheInputs:
        return CacheInputs.from_json(self.inputs, where)


@dataclass
class CacheData:
    """A whole cache in memory, as training and evaluation use it."""

    meta: CacheMeta
    spec: np.ndarray  # (F, n_mels) float16
    spec_offsets: np.ndarray  # (N + 1,) int64
    input_ids: np.ndarray  # (N, L) int32
    attention_mask: np.ndarray  # (N, L) int8
    labels: np.ndarray  # (N,) int64
    durations: np.ndarray  # (N,) float32
    utt_ids: list[str]
    speakers: list[str]
    sessions: list[str]
    texts: list[str]
    raw_labels: list[str]
    audio_paths: list[str]
    # The corpus's own transcripts when `texts` came from speech recognition (prepare --transcripts asr), else None.
    gold_texts: list[str] | None = None
    # (N, 3) valence, arousal, dominance, NaN where the corpus gives none; None when it gives none at all.
    dimensions: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.utt_ids)

    @property
    def spec_lengths(self) -> np.ndarray:
        return np.diff(self.spec_offsets).astype(np.int64)

    def spectrogram(self, i: int) -> np.ndarray:
        """(n_mels, T) float32 of utterance i."""
        return self.spec[self.spec_offsets[i]: self.spec_offsets[i + 1]].T.astype(np.float32)


# --------------------------------------------------------------------------------------------- reading


def read_meta(path: Path) -> CacheMeta:
    """The attributes only: cheap, used to decide whether a rebuild is needed."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise CacheError(f"no cache at {path}; create it with `emocli prepare SOURCE --cache {path}`")
    try:
        with h5py.File(path, "r") as h5:
            return _meta_from_attrs(h5.attrs, path)
    except CacheError:
        raise
    except Exception as exc:
        raise CacheError(f"{path} is not a readable emocli cache ({type(exc).__name__}); rebuild it with "
                         f"`emocli prepare`") from None


def is_emocli_cache(path: Path) -> bool:
    """True for an HDF5 file emocli wrote as a cache (of any format version): the only kind `prepare` replaces."""
    import h5py

    try:
        with open(path, "rb") as handle:
            if handle.read(8) != b"\x89HDF\r\n\x1a\n":
                return False
        with h5py.File(path, "r") as h5:
            return "emocli_cache" in h5.attrs
    except Exception:
        return False


def _meta_from_attrs(attrs, path: Path) -> CacheMeta:
    version = int(attrs.get("format_version", -1))
    if "emocli_cache" not in attrs:
        raise CacheError(f"{path} is an HDF5 file but not an emocli cache; create one with `emocli prepare`")
    if version != FORMAT_VERSION:
        raise CacheError(f"{path} has cache format {version}, this emocli reads {FORMAT_VERSION}; rebuild it with "
                         f"`emocli prepare`")
    return CacheMeta(fingerprint=str(attrs["fingerprint"]), format_version=version,
                     inputs=json.loads(attrs["inputs"]), summary=json.loads(attrs["summary"]))


def read_cache(path: Path) -> CacheData:
    """The whole cache in memory, in one read per dataset."""
    import h5py

    meta = read_meta(path)
    try:
        with h5py.File(path, "r") as h5:
            strings = {name: [_text(s) for s in h5[name][()]] for name in _STRING_FIELDS}
            gold = [_text(s) for s in h5[_GOLD_FIELD][()]] if _GOLD_FIELD in h5 else None
            dims = h5[_DIMENSIONS_FIELD][()].astype(np.float32) if _DIMENSIONS_FIELD in h5 else None
            data = CacheData(meta=meta, spec=h5["spec"][()], spec_offsets=h5["spec_offsets"][()],
                             input_ids=h5["input_ids"][()], attention_mask=h5["attention_mask"][()],
                             labels=h5["labels"][()], durations=h5["durations"][()], gold_texts=gold,
                             dimensions=dims, **strings)
    except Exception as exc:
        raise CacheError(f"{path} is damaged ({type(exc).__name__}: {exc}); rebuild it with `emocli prepare`") from None
    problem = _inconsistency(data)
    if problem:
        raise CacheError(f"{path} is inconsistent ({problem}); rebuild it with `emocli prepare`")
    return data


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _inconsistency(data: CacheData) -> str | None:
    """What makes a cache unusable, checked once when it is opened (a hand-edited or damaged file); None if fine."""
    n = len(data)
    offsets = data.spec_offsets
    if not (len(offsets) == n + 1 and offsets[0] == 0 and offsets[-1] == len(data.spec)):
        return "offsets do not match spectrograms"
    if n and bool(np.any(np.diff(offsets) < 0)):
        return "offsets go backwards"
    n_mels = data.meta.inputs.get("feature_config", {}).get("n_mels")
    if data.spec.ndim != 2 or (n_mels is not None and data.spec.shape[1] != n_mels):
        return f"spectrograms are {data.spec.shape[1:]} wide, the settings say {n_mels} mel bands"
    classes = data.meta.inputs.get("label_set", {}).get("classes", ())
    if len(data.labels) != n or (n and not (data.labels.min() >= 0 and data.labels.max() < len(classes))):
        return f"labels outside the {len(classes)} classes"
    lengths = {len(x) for x in (data.input_ids, data.attention_mask, data.durations, data.speakers, data.sessions,
                                data.texts, data.raw_labels, data.audio_paths, *([data.gold_texts] if
                                                                                 data.gold_texts is not None else []))}
    if lengths != {n} or data.input_ids.shape != data.attention_mask.shape:
        return "columns of different lengths"
    if data.input_ids.size and (data.input_ids.min() < 0 or not np.isin(data.attention_mask, (0, 1)).all()):
        return "negative token ids or a mask other than 0/1"
    if data.durations.size and not np.all(np.isfinite(data.durations)):
        return "non-finite durations"
    if data.dimensions is not None and (data.dimensions.shape != (n, 3) or np.isinf(data.dimensions).any()):
        return f"dimensional values of shape {data.dimensions.shape}, not ({n}, 3) finite or NaN"
    return None


# --------------------------------------------------------------------------------------------- writing


def build_lock(path: Path):
    """One builder per cache path at a time; a second `prepare` on the same path waits for the first."""
    return file_lock(path.with_name(path.name + ".lock"))


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Temporary files of interrupted builds; safe to call only while holding `build_lock`."""
    stale = sorted(path.parent.glob(f".{path.name}.tmp-*"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


class CacheWriter:
    """Streams utterances into a temporary HDF5 file; `commit` renames it over the target in one step.

    Until `commit`, the previous cache at `path` (if any) is untouched, so a crash, kill -9 or full disk at any
    point leaves the old cache intact or no cache at all.
    """

    def __init__(self, path: Path, n_mels: int, max_tokens: int):
        import h5py

        self.path = Path(path)
        self.tmp_path = temporary_name(self.path)  # named first: a signal at any point below leaves nothing
        self._h5 = None
        try:
            create_temporary(self.path)  # ours, never a planted link; the target's mode
            self._h5 = h5py.File(self.tmp_path, "w")
            self._spec = self._h5.create_dataset("spec", shape=(0, n_mels), maxshape=(None, n_mels),
                                                 dtype=np.float16, chunks=(_SPEC_CHUNK_FRAMES, n_mels))
        except BaseException:
            self.abort()
            raise
        self._n_frames = 0
        self._offsets = [0]
        self._columns: dict[str, list] = {name: [] for name in _STRING_FIELDS}
        self._gold: list[str] = []
        self._dimensions: list[tuple[float, float, float]] = []
        self._labels: list[int] = []
        self._durations: list[float] = []
        self._ids: list[np.ndarray] = []
        self._masks: list[np.ndarray] = []
        self._pending: list[np.ndarray] = []  # spectrograms not yet on disk, flushed in large blocks
        self._pending_frames = 0
        self._max_tokens = max_tokens

    def append(self, utt: Utterance, label: int, spec: np.ndarray, input_ids: np.ndarray,
               attention_mask: np.ndarray, duration: float, gold_text: str | None = None) -> None:
        """Add one utterance; `spec` is (n_mels, T). At most a few MB wait in memory (memory stays flat).
        `gold_text`: the corpus's transcript when `utt.text` was recognised (then given for every utterance)."""
        if gold_text is not None:
            self._gold.append(gold_text)
        frames = spec.shape[1]
        self._pending.append(spec.T.astype(np.float16, copy=False))  # concatenated before writing: no copy needed
        self._pending_frames += frames
        self._offsets.append(self._offsets[-1] + frames)
        if self._pending_frames >= _SPEC_CHUNK_FRAMES * 4:
            self._flush()
        self._ids.append(input_ids.astype(np.int32))
        self._masks.append(attention_mask.astype(np.int8))
        self._labels.append(label)
        self._durations.append(duration)
        self._dimensions.append(utt.dimensions if utt.dimensions is not None else (np.nan,) * 3)
        for name, value in (("utt_ids", utt.utt_id), ("speakers", utt.speaker), ("sessions", utt.session),
                            ("texts", utt.text), ("raw_labels", utt.raw_label), ("audio_paths", str(utt.audio_path))):
            self._columns[name].append(value)

    def _flush(self, final: bool = False) -> None:
        """One resize and one write per block: per-utterance resizes cost more than the features. Only whole
        chunks are written until the last block: a write that ends mid-chunk makes HDF5 read that chunk back
        and rewrite it with the next block (4.6x slower over a whole cache)."""
        if not self._pending:
            return
        block = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0]
        whole = len(block) if final else len(block) // _SPEC_CHUNK_FRAMES * _SPEC_CHUNK_FRAMES
        self._spec.resize(self._n_frames + whole, axis=0)
        self._spec[self._n_frames:] = block[:whole]
        self._n_frames += whole
        rest = block[whole:]
        self._pending, self._pending_frames = ([rest] if len(rest) else []), len(rest)

    def __len__(self) -> int:
        return len(self._labels)

    def commit(self, inputs: dict, summary: dict) -> str:
        import h5py

        self._flush(final=True)
        h5 = self._h5
        n = len(self._labels)
        h5.create_dataset("spec_offsets", data=np.asarray(self._offsets, dtype=np.int64))
        ids = np.stack(self._ids) if n else np.zeros((0, self._max_tokens), np.int32)
        masks = np.stack(self._masks) if n else np.zeros((0, self._max_tokens), np.int8)
        h5.create_dataset("input_ids", data=ids)
        h5.create_dataset("attention_mask", data=masks)
        h5.create_dataset("labels", data=np.asarray(self._labels, dtype=np.int64))
        h5.create_dataset("durations", data=np.asarray(self._durations, dtype=np.float32))
        text = h5py.string_dtype("utf-8")
        for name, values in self._columns.items():
            h5.create_dataset(name, data=np.asarray(values, dtype=object), dtype=text)
        if self._gold:
            if len(self._gold) != n:
                raise ValueError(f"gold transcripts for {len(self._gold)} of {n} utterances")
            h5.create_dataset(_GOLD_FIELD, data=np.asarray(self._gold, dtype=object), dtype=text)
        dims = np.asarray(self._dimensions, dtype=np.float32).reshape(n, 3)
        if n and not np.isnan(dims).all():
            h5.create_dataset(_DIMENSIONS_FIELD, data=dims)
        digest = fingerprint(inputs)
        h5.attrs["emocli_cache"] = True
        h5.attrs["format_version"] = FORMAT_VERSION
        h5.attrs["fingerprint"] = digest
        h5.attrs["inputs"] = json.dumps(inputs, sort_keys=True, default=str)
        h5.attrs["summary"] = json.dumps(summary, sort_keys=True, default=str)
        h5.flush()
        os.fsync(h5.id.get_vfd_handle())
        h5.close()
        os.replace(self.tmp_path, self.path)  # atomic on one filesystem: readers see old or new, never half
        fsync_dir(self.path.parent)
        return digest

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._h5.close()
        self.tmp_path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- embedding stages
#
# A stage is a frozen pretrained encoder's hidden states of every utterance of one cache, in its own file beside
# the cache: switching encoders adds a stage and never touches spectrograms or tokens. Layout (STAGE_VERSION 1):
#     frames    float16 (F, L, D)   every utterance's frames, time-major, concatenated in the cache's order
#     offsets   int64   (N + 1,)    utterance i is frames[offsets[i]:offsets[i+1]]
#     utt_ids   utf-8   (N,)        the cache's ids, in its order (checked when read)
#     attrs: emocli_stage, stage_version, fingerprint, and the JSON of what made it (cache fingerprint, encoder)

STAGE_VERSION = 1
STAGES_SUFFIX = ".stages"


def stage_path(cache_path: Path, name: str, digest: str) -> Path:
    """`<cache>.stages/<name>-<digest>.h5`: one file per encoder and settings, named so a person can tell them apart."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._") or "encoder"
    return Path(cache_path).with_name(Path(cache_path).name + STAGES_SUFFIX) / f"{safe[-40:]}-{digest}.h5"


@dataclass
class StageData:
    path: Path
    fingerprint: str
    inputs: dict
    values: np.ndarray  # (F, L, D) float16
    offsets: np.ndarray  # (N + 1,) int64
    utt_ids: list[str]

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets).astype(np.int64)


def read_stage_fingerprint(path: Path) -> str | None:
    """The fingerprint of a complete stage file, or None when there is none (or it is unreadable: rebuild it)."""
    import h5py

    if not Path(path).is_file():
        return None
    try:
        with h5py.File(path, "r") as h5:
            if not h5.attrs.get("emocli_stage") or int(h5.attrs.get("stage_version", -1)) != STAGE_VERSION:
                return None
            return str(h5.attrs["fingerprint"])
    except Exception:
        return None


def read_stage(path: Path, utt_ids: list[str]) -> StageData:
    """A whole stage in memory; CacheError unless it holds exactly `utt_ids` (the cache's), in order."""
    import h5py

    try:
        with h5py.File(path, "r") as h5:
            data = StageData(path=Path(path), fingerprint=str(h5.attrs["fingerprint"]), inputs=json.loads(h5.attrs["inputs"]),
                             values=h5["frames"][()], offsets=h5["offsets"][()],
                             utt_ids=[s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in h5["utt_ids"][()]])
    except Exception as exc:
        raise CacheError(f"{path} is not a readable embedding stage ({type(exc).__name__}); delete it and rerun to "
                         f"recompute it") from None
    consistent = (len(data.offsets) == len(data.utt_ids) + 1 and data.offsets[0] == 0
                  and data.offsets[-1] == len(data.values) and bool(np.all(np.diff(data.offsets) >= 0)))
    if not consistent or data.utt_ids != list(utt_ids):
        raise CacheError(f"{path} does not match its cache (other utterances or damaged offsets); delete it and rerun "
                         f"to recompute it")
    return data


class StageWriter:
    """Streams each utterance's frames into a temporary HDF5 file; `commit` renames it over the target in one step,
    so an interruption leaves the previous stage or none, never half of one."""

    def __init__(self, path: Path, frame_shape: tuple[int, ...]):
        import h5py

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_path = temporary_name(self.path)  # named first: a signal at any point below leaves nothing
        self._h5 = None
        chunk_frames = max(1, (1 << 20) // (2 * int(np.prod(frame_shape))))  # ~1 MB chunks
        try:
            create_temporary(self.path)  # ours, never a planted link; the target's mode
            self._h5 = h5py.File(self.tmp_path, "w")
            self._frames = self._h5.create_dataset("frames", shape=(0, *frame_shape),
                                                   maxshape=(None, *frame_shape), dtype=np.float16,
                                                   chunks=(chunk_frames, *frame_shape))
        except BaseException:
            self.abort()
            raise
        self._offsets = [0]
        self._ids: list[str] = []
        self._pending: list[np.ndarray] = []
        self._pending_frames = 0
        self._chunk_frames = chunk_frames

    def append(self, utt_id: str, frames: np.ndarray) -> None:
        """`frames` (T, L, D) float16 of one utterance, in the cache's order."""
        self._pending.append(frames)
        self._pending_frames += len(frames)
        self._offsets.append(self._offsets[-1] + len(frames))
        self._ids.append(utt_id)
        if self._pending_frames >= 8 * self._chunk_frames:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        block = np.concatenate(self._pending)
        start = len(self._frames)
        self._frames.resize(start + len(block), axis=0)
        self._frames[start:] = block
        self._pending, self._pending_frames = [], 0

    def commit(self, inputs: dict, digest: str) -> None:
        import h5py

        self._flush()
        h5 = self._h5
        h5.create_dataset("offsets", data=np.asarray(self._offsets, dtype=np.int64))
        h5.create_dataset("utt_ids", data=np.asarray(self._ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        h5.attrs["emocli_stage"] = True
        h5.attrs["stage_version"] = STAGE_VERSION
        h5.attrs["fingerprint"] = digest
        h5.attrs["inputs"] = json.dumps(inputs, sort_keys=True, default=str)
        h5.flush()
        os.fsync(h5.id.get_vfd_handle())
        h5.close()
        os.replace(self.tmp_path, self.path)
        fsync_dir(self.path.parent)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._h5.close()
        self.tmp_path.unlink(missing_ok=True)
