"""The embedding stage: a frozen pretrained speech encoder's hidden states of every utterance of a cache.

Computed once, by `prepare --audio-encoder` or by the first `train` that needs them, and kept beside the cache
(`emocli.cache.stage_path`), keyed by a fingerprint of the cache (its audio and feature settings), the encoder's
weights and its settings: another head, fusion or protocol on the same corpus reads them back in a second; another
encoder adds a stage. `predict` calls `utterance_frames` on a new file: the very computation the stage made.
Under torchrun every rank embeds its share of the utterances and rank 0 merges the parts in the cache's order.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from emocli import cache
from emocli.encoders.base import Embedder, EmbedderInfo
from emocli.errors import AudioError, CacheError, EncoderError
from emocli.features import FeatureConfig, load_audio, to_float16

ProgressCallback = Callable[[str, int, int], None]  # (stage, done, total)
_GROUP = 16  # files handed to the encoder at once (its embed_many spreads them over its workers)
_PREFETCH = 2  # groups decoded ahead of the encoder, in a thread: decoding and encoding overlap


def stage_fingerprint(cache_fingerprint: str, info: EmbedderInfo, device: str = "cpu") -> str:
    """The cache, the encoder's identity and the device kind (int8 kernels differ between CPU and CUDA)."""
    payload = json.dumps({"stage_version": cache.STAGE_VERSION, "cache": cache_fingerprint,
                          "encoder": info.identity(), "device": device}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def load_utterance_audio(path: Path, features: FeatureConfig, sample_rate: int) -> np.ndarray:
    """The audio exactly as prepare kept it (same truncation, same refusals), at the encoder's rate."""
    return load_audio(path, sample_rate, max_seconds=None if features.max_seconds <= 0 else features.max_seconds,
                      min_seconds=features.min_seconds, silence_peak=features.silence_peak)


def utterance_frames(upstream: Embedder, audio: np.ndarray) -> np.ndarray:
    """(T, L, D) float16 hidden states of one utterance, time-major as the stage stores and batches read them."""
    return _time_major(upstream.embed(audio))


def many_utterance_frames(upstream: Embedder, audios: list[np.ndarray]) -> list[np.ndarray]:
    """`utterance_frames` of each, through the encoder's own `embed_many` where it has one (every core busy, and
    each item exactly as alone: the encoders never let padding change an item)."""
    many = getattr(upstream, "embed_many", None)
    hidden = many(audios) if many is not None else [upstream.embed(a) for a in audios]
    return [_time_major(h) for h in hidden]


def _time_major(hidden: np.ndarray) -> np.ndarray:
    return to_float16(np.ascontiguousarray(np.transpose(hidden, (1, 0, 2))))  # (L, T, D) -> (T, L, D)


def stage_is_current(cache_path: Path, upstream: dict | EmbedderInfo, device: str = "cpu") -> bool:
    """Whether the stage of `upstream` for this cache exists and is up to date (then no audio is needed)."""
    from emocli.encoders import upstream_device

    info = upstream if isinstance(upstream, EmbedderInfo) else EmbedderInfo.from_json(upstream)
    path, digest = _stage_location(Path(cache_path), cache.read_meta(Path(cache_path)), info,
                                   upstream_device(info.kind, device))
    return cache.read_stage_fingerprint(path) == digest


def _stage_location(cache_path: Path, meta: "cache.CacheMeta", info: EmbedderInfo, device: str) -> tuple[Path, str]:
    digest = stage_fingerprint(meta.fingerprint, info, device)
    # Named by what the encoder is, not how the user spelt it: "whisper" and "tiny.en" share one stage.
    return cache.stage_path(cache_path, f"{info.kind}-{info.n_layers}x{info.hidden_size}", digest), digest


def ensure_stage(cache_path: Path, upstream: dict | EmbedderInfo, data: "cache.CacheData | None" = None,
                 device: str = "cpu", rank: int = 0, world: int = 1, barrier: Callable[[], None] | None = None,
                 progress: ProgressCallback | None = None) -> cache.StageData:
    """The stage of `upstream` for the cache at `cache_path`, computed first when missing or stale."""
    from emocli.encoders import upstream_device

    info = upstream if isinstance(upstream, EmbedderInfo) else EmbedderInfo.from_json(upstream)
    device = upstream_device(info.kind, device)
    cache_path = Path(cache_path)
    data = data if data is not None else cache.read_cache(cache_path)
    path, digest = _stage_location(cache_path, data.meta, info, device)
    if cache.read_stage_fingerprint(path) != digest:
        try:
            if world > 1:
                _compute_sharded(data, info, path, digest, device, rank, world, barrier or (lambda: None), progress)
            else:
                with cache.build_lock(path):
                    if cache.read_stage_fingerprint(path) != digest:  # another process may have made it meanwhile
                        cache.remove_stale_temporaries(path)
                        _compute(data, range(len(data)), info, path, digest, device, progress)
        except OSError as exc:  # a read-only cache folder, a file where the stage folder goes, a full disk
            raise CacheError(f"cannot write the embedding stage beside the cache, at {path}: "
                             f"{exc.strerror or exc}; make that folder writable (or copy the cache elsewhere)") from None
    stage = cache.read_stage(path, data.utt_ids)
    if stage.values.shape[1:] != (info.n_layers, info.hidden_size):
        raise EncoderError(f"the embedding stage {path} holds {stage.values.shape[1]} layers of {stage.values.shape[2]}, "
                           f"but {info.name} gives {info.n_layers} of {info.hidden_size}; delete the stage and rerun")
    return stage


def _compute(data: "cache.CacheData", indices, info: EmbedderInfo, path: Path, digest: str, device: str,
             progress: ProgressCallback | None) -> None:
    from emocli.encoders import load_upstream

    indices = list(indices)
    gone = next((data.audio_paths[i] for i in indices if not os.path.isfile(data.audio_paths[i])), None)
    if gone is not None:  # checked before minutes of model loading; most often the unpacked archive, removed
        raise EncoderError(_audio_gone_line(data, gone, info, path))
    upstream = load_upstream(info, device=device)
    features = data.meta.typed_inputs(path).features
    try:
        writer = cache.StageWriter(path, (info.n_layers, info.hidden_size))
    except OSError as exc:
        raise CacheError(f"cannot create the embedding stage {path}: {exc.strerror or exc}") from None
    inputs = {"cache_fingerprint": data.meta.fingerprint, "encoder": info.to_json(), "utterances": len(indices)}
    try:
        audio_paths = [Path(data.audio_paths[i]) for i in indices]
        for done, (i, frames) in enumerate(zip(indices, _embed_files(upstream, audio_paths, features)), start=1):
            writer.append(data.utt_ids[i], frames)
            if progress:
                progress(f"embed ({Path(info.name).name})", done, len(indices))
        writer.commit(inputs, digest)
    except OSError as exc:  # a full disk, most often: the previous stage, if any, is untouched until the rename
        writer.abort()
        raise CacheError(f"cannot write the embedding stage {path}: {exc.strerror or exc}") from None
    except BaseException:
        writer.abort()  # Ctrl-C included: never leave a half-written stage behind
        raise


def _audio_gone_line(data: "cache.CacheData", gone: str, info: EmbedderInfo, stage: Path) -> str:
    source = data.meta.inputs.get("source", {}).get("path", "CORPUS")
    cache_file = stage.parent.with_name(stage.parent.name.removesuffix(cache.STAGES_SUFFIX))
    return (f"{gone} is gone, and the {Path(info.name).name} stage needs the cache's audio (prepare removes an "
            f"archive's unpacked copy once the cache is written); run `emocli prepare {source} --cache "
            f"{cache_file} --audio-encoder {info.name}`, which unpacks it again for the stage")


def _embed_files(upstream: Embedder, paths: list[Path], features: FeatureConfig) -> Iterator[np.ndarray]:
    """Each file's frames, in order; the next files are decoded in a thread while the encoder runs."""
    rate = upstream.info.sample_rate

    def decode(path: Path) -> np.ndarray:
        if not path.is_file():
            raise EncoderError(f"{path} is gone, and the embedding stage needs the cache's audio; run `emocli "
                               f"prepare CORPUS --cache CACHE --audio-encoder NAME` (it unpacks an archive again)")
        try:
            return load_utterance_audio(path, features, rate)
        except AudioError as exc:
            raise EncoderError(f"{exc}; it was readable when the cache was made — rerun `emocli prepare`") from None

    groups = [paths[k:k + _GROUP] for k in range(0, len(paths), _GROUP)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(lambda g=g: [decode(p) for p in g]) for g in groups[:_PREFETCH]]
        for k in range(len(groups)):
            audios = pending[k].result()
            if k + _PREFETCH < len(groups):
                pending.append(pool.submit(lambda g=groups[k + _PREFETCH]: [decode(p) for p in g]))
            pending[k] = None  # free the decoded audio once it is embedded
            yield from many_utterance_frames(upstream, audios)


def _compute_sharded(data, info: EmbedderInfo, path: Path, digest: str, device: str, rank: int, world: int,
                     barrier: Callable[[], None], progress: ProgressCallback | None) -> None:
    """Rank r embeds utterances r, r + world, ...; rank 0 merges the parts in the cache's order."""
    part = path.with_name(f"{path.stem}.part{rank}of{world}.h5")
    mine = range(rank, len(data), world)
    if cache.read_stage_fingerprint(part) != digest:
        _compute(data, mine, info, part, digest, device, progress if rank == 0 else None)
    barrier()
    if rank == 0:
        parts = [cache.read_stage(path.with_name(f"{path.stem}.part{r}of{world}.h5"),
                                  [data.utt_ids[i] for i in range(r, len(data), world)]) for r in range(world)]
        writer = cache.StageWriter(path, (info.n_layers, info.hidden_size))
        try:
            for i in range(len(data)):
                r, k = i % world, i // world
                writer.append(data.utt_ids[i], parts[r].values[parts[r].offsets[k]:parts[r].offsets[k + 1]])
            writer.commit({"cache_fingerprint": data.meta.fingerprint, "encoder": info.to_json(),
                           "utterances": len(data), "ranks": world}, digest)
        except BaseException:
            writer.abort()
            raise
        for r in range(world):
            path.with_name(f"{path.stem}.part{r}of{world}.h5").unlink(missing_ok=True)
    barrier()
