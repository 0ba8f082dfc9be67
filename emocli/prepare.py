"""`emocli prepare`: a corpus source -> Utterance records -> features -> one fingerprinted HDF5 cache.

The fingerprint covers the source's identity, the reader and feature settings, the tokenizer and the label
set; an unchanged input is a cache hit that imports nothing heavy and returns in well under a second.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from emocli import cache
from emocli.atomic import check_folder
from emocli.corpus.records import MANIFEST_LABELS, LabelSet, ReadReport, get_label_set
from emocli.errors import AudioError, CacheError, ConfigError, CorpusError
from emocli.features import FeatureConfig, audio_features, parallel_map, to_float16, tokenize
from emocli.text_model import DEFAULT_TEXT_MODEL, resolve_text_model, tokenizer_identity

ProgressCallback = Callable[[str, int, int], None]  # (stage, done, total)
_MANIFEST_SUFFIXES = (".csv", ".tsv")


@dataclass(frozen=True)
class PrepareConfig:
    text_model: str = DEFAULT_TEXT_MODEL
    # auto (IEMOCAP: 4class; a manifest: its own labels, or 4class when they are IEMOCAP's) | 4class |
    # 4class-noexc | 6class | all | manifest (a manifest's labels as its classes)
    label_set: str = "auto"
    tags: str = "keep"  # non-speech tags in transcripts: "keep" (normalised) or "strip"
    features: FeatureConfig = field(default_factory=FeatureConfig)
    workers: int = 0  # 0 = one per core; not fingerprinted, since results do not depend on it
    # A pretrained speech encoder whose embedding stage is computed beside the cache ("" or alexnet: none). The
    # cache itself does not depend on it: a stage is a file of its own, keyed by the cache and the encoder.
    audio_encoder: str = ""
    compute_type: str = "int8"
    device: str = "auto"
    # An archive's unpacked copy is removed once the cache (and stage) are written, unless asked to keep it.
    keep_audio: bool = False
    # "gold": the corpus's transcripts; "asr": recognised from the audio (the gold ones are kept beside them)
    transcripts: str = "gold"
    asr_model: str = "whisper"


@dataclass
class PrepareResult:
    cache_path: Path
    fingerprint: str
    cache_hit: bool
    summary: dict
    problems: list[str]
    seconds: float
    stage: Path | None = None  # the embedding stage, when an audio encoder was asked for

    def to_json(self) -> dict:
        return {"cache": str(self.cache_path), "fingerprint": self.fingerprint, "cache_hit": self.cache_hit,
                "seconds": round(self.seconds, 3), **self.summary, "problems": self.problems,
                "stage": str(self.stage) if self.stage else None}


def prepare(source: Path, cache_path: Path, config: PrepareConfig = PrepareConfig(), workdir: Path | None = None,
            progress: ProgressCallback | None = None) -> PrepareResult:
    """The cache of `source` (built, or found up to date), then the embedding stage of `config.audio_encoder`."""
    source, cache_path = Path(source), Path(cache_path)  # a notebook passes strings
    workdir = Path(workdir) if workdir is not None else None
    upstream = None
    if config.audio_encoder:  # resolved first: a misspelt encoder fails before minutes of features
        from emocli.encoders import audio_branch

        from emocli.encoders import upstream_device

        upstream = audio_branch(config.audio_encoder, config.compute_type)[1] or None
        if upstream is not None:
            upstream_device(upstream["kind"], config.device)  # a wrong --device fails now, not after the features
    started = time.perf_counter()
    source, cache_path = Path(source), Path(cache_path)
    if not source.exists():
        raise CorpusError(f"{source} does not exist; pass an IEMOCAP_full_release archive or folder, or a manifest CSV")
    if not math.isfinite(config.features.max_seconds):
        raise CacheError(f"--max-seconds {config.features.max_seconds} must be a finite number of seconds")
    workdir = Path(workdir) if workdir else cache_path.parent / ".emocli-work"
    archive = _source_kind(source) == "iemocap" and source.is_file()
    check_folder(cache_path.parent, "--cache", cache_path, writable=False)
    check_folder(workdir, "--workdir", workdir, writable=False)
    inputs, text_ref = _cache_inputs(source, config)
    digest = cache.fingerprint(inputs)
    hit = _cache_hit(cache_path, digest)
    if upstream is not None:
        from emocli.embed import ensure_stage, stage_is_current
    if hit is not None and (upstream is None or stage_is_current(cache_path, upstream, config.device)):
        # Nothing to write: a cache (and stage) in a read-only folder serves as well as any.
        result = PrepareResult(cache_path, digest, True, hit.summary, [], 0.0)
        if upstream is not None:
            result.stage = ensure_stage(cache_path, upstream, device=config.device).path
        result.seconds = time.perf_counter() - started
        return result
    check_folder(cache_path.parent, "--cache", cache_path, writable=True)
    if archive:
        check_folder(workdir, "--workdir", workdir, writable=True)
    with _archive_in_use(source if archive else None, workdir, remove_after=not config.keep_audio):
        result = _prepare_cache(source, cache_path, config, workdir, inputs, text_ref, progress)
        if upstream is not None:
            if archive and result.cache_hit:
                from emocli.corpus.archive import open_source

                open_source(source, workdir)  # unpacked again: the cache's audio paths point into that copy
            result.stage = ensure_stage(cache_path, upstream, device=config.device, progress=progress).path
    result.seconds = time.perf_counter() - started
    return result


def _archive_in_use(archive: Path | None, workdir: Path, remove_after: bool):
    if archive is None:
        return contextlib.nullcontext()
    from emocli.corpus.archive import extraction_in_use

    return extraction_in_use(archive, workdir, remove_after)


def _cache_inputs(source: Path, config: PrepareConfig):
    """Everything the cache depends on (its fingerprint's inputs), and the resolved text model."""
    label_set = resolve_label_set(source, config.label_set)
    text_ref = resolve_text_model(config.text_model)
    inputs = {
        "feature_config": config.features.to_json(),
        "tokenizer": {"name": text_ref.name, "identity": tokenizer_identity(text_ref), "model_type": text_ref.model_type},
        "label_set": label_set.to_json(),
        "reader": {"kind": _source_kind(source), "tags": config.tags,
                   # only where the source has them: caches from before they were kept rebuild once to gain them,
                   # and the rest keep their fingerprints (and embedding stages)
                   **({"dimensions": True} if _has_dimensions(source) else {})},
        "source": source_identity(source, label_set),
    }
    if config.transcripts == "asr":  # only then: a gold cache keeps the fingerprint it always had
        from emocli.asr import AsrConfig, recogniser_identity

        inputs["transcripts"] = {"source": "asr", **recogniser_identity(AsrConfig(model=config.asr_model))}
    elif config.transcripts != "gold":
        raise CacheError(f"--transcripts {config.transcripts!r} is not one of gold, asr")
    return inputs, text_ref


def _prepare_cache(source: Path, cache_path: Path, config: PrepareConfig, workdir: Path, inputs: dict, text_ref,
                   progress: ProgressCallback | None) -> PrepareResult:
    started = time.perf_counter()
    digest = cache.fingerprint(inputs)
    _refuse_foreign_target(source, cache_path)
    with cache.build_lock(cache_path):
        hit = _cache_hit(cache_path, digest)  # another process may have built it while we waited
        if hit is not None:
            return PrepareResult(cache_path, digest, True, hit.summary, [], time.perf_counter() - started)
        cache.remove_stale_temporaries(cache_path)
        # The pool forks before the corpus is read (and before the HDF5 file is opened: no HDF5 handle may cross
        # a fork), so that its workers start and import their libraries meanwhile.
        with parallel_map(workers=config.workers) as feature_map:
            report = read_source(source, LabelSet.from_json(inputs["label_set"]), config, workdir, progress)
            summary = _build(cache_path, report, config, text_ref, inputs, feature_map, progress)
    return PrepareResult(cache_path, digest, False, summary, report.problems, time.perf_counter() - started)


def resolve_label_set(source: Path, name: str) -> LabelSet:
    """The label set `name` means for this source (a manifest's own labels for `manifest` and, unless they are
    IEMOCAP's four, for `auto`)."""
    if _source_kind(source) == "manifest":
        from emocli.corpus.manifest import resolve_label_set as manifest_set

        return manifest_set(source, name)
    if name == MANIFEST_LABELS:
        raise ConfigError("--labels manifest takes the classes from a manifest's label column; an IEMOCAP source "
                          "has IEMOCAP's sets: 4class, 4class-noexc, 6class or all")
    return get_label_set(name)


def read_source(source: Path, label_set: LabelSet, config: PrepareConfig, workdir: Path,
                progress: ProgressCallback | None = None) -> ReadReport:
    """The source's utterances, read with `label_set` (`resolve_label_set` of it, resolved once per prepare)."""
    if _source_kind(source) == "manifest":
        from emocli.corpus.manifest import read_manifest

        return read_manifest(source, label_set)
    from emocli.corpus.iemocap import ReaderConfig, read_iemocap

    extract_progress = (lambda done, total: progress("unpack", done, total)) if progress else None
    return read_iemocap(source, ReaderConfig(label_set=label_set.name, tags=config.tags), workdir,
                        progress=extract_progress)


def _has_dimensions(source: Path) -> bool:
    """IEMOCAP always gives [V, A, D]; a manifest when it has any of the columns."""
    if _source_kind(source) != "manifest":
        return True
    from emocli.corpus.manifest import has_dimension_columns

    return has_dimension_columns(source)


def _source_kind(source: Path) -> str:
    return "manifest" if source.is_file() and source.suffix.lower() in _MANIFEST_SUFFIXES else "iemocap"


def source_identity(source: Path, label_set: LabelSet | None = None) -> dict:
    """What the fingerprint knows of the source: an archive's size and mtime; a folder's relevant files; a
    manifest's size and mtime and those of every audio file it names (a replaced wav must rebuild too)."""
    import hashlib
    import json

    source = source.resolve()
    if source.is_file():
        stat = source.stat()
        identity = {"path": str(source), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if _source_kind(source) == "manifest":
            from emocli.corpus.manifest import read_manifest

            report = read_manifest(source, label_set or resolve_label_set(source, "auto"))
            listing = [(str(u.audio_path), s.st_size, s.st_mtime_ns) for u in report.utterances
                       for s in [u.audio_path.stat()]]
            # The rows skipped for a missing file count too: the file appearing later must rebuild.
            identity["audio_sha256"] = hashlib.sha256(json.dumps([listing, report.problems]).encode()).hexdigest()
        return identity
    from emocli.corpus.iemocap import source_files

    prefix = len(os.path.join(source, ""))  # every file lies below `source`: slicing is 10x cheaper than relative_to
    listing = [(str(p)[prefix:], s.st_size, s.st_mtime_ns) for p in source_files(source) for s in [os.stat(p)]]
    return {"path": str(source), "files": len(listing),
            "listing_sha256": hashlib.sha256(json.dumps(sorted(listing)).encode()).hexdigest()}


def _refuse_foreign_target(source: Path, cache_path: Path) -> None:
    """`--cache` may only replace a cache emocli wrote: never the corpus itself (a typo away), a manifest, or any
    other file that happens to be there."""
    if not (cache_path.exists() or cache_path.is_symlink()):
        return
    if source.exists() and cache_path.exists() and os.path.samefile(source, cache_path):
        raise CacheError(f"--cache {cache_path} is the corpus source itself; give the cache another file name")
    if cache_path.is_symlink() or not cache_path.is_file() or not cache.is_emocli_cache(cache_path):
        raise CacheError(f"--cache {cache_path} exists and is not an emocli cache; emocli never replaces other "
                         f"files — choose another --cache path, or move that file away yourself")


def _cache_hit(cache_path: Path, digest: str) -> cache.CacheMeta | None:
    if not cache_path.is_file():
        return None
    try:
        meta = cache.read_meta(cache_path)
    except CacheError:
        return None  # unreadable or another format: rebuild rather than serve it
    return meta if meta.fingerprint == digest else None


def _build(cache_path: Path, report: ReadReport, config: PrepareConfig, text_ref, inputs: dict, feature_map: Callable,
           progress: ProgressCallback | None) -> dict:
    from emocli.text_model import load_fast_tokenizer

    utterances = report.utterances
    if not utterances:
        raise CorpusError(f"no usable utterances in {report.source}; {_skipped_line(report)}")
    label_set = LabelSet.from_json(inputs["label_set"])
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    jobs = [(str(u.audio_path), config.features) for u in utterances]
    failed: set[str] = set()
    # The map submits its first chunks at once: loading the tokenizer and tokenising overlap the features. Only
    # the tokenizer is read here; the encoder's weights are checked where they are loaded (train, predict).
    results = feature_map(_extract_one, jobs)
    gold = None
    if config.transcripts == "asr":  # meanwhile the pool computes the features
        gold = [u.text for u in utterances]
        utterances = _recognised(utterances, config, progress)
    ids, masks = tokenize(load_fast_tokenizer(text_ref), [u.text for u in utterances], config.features.max_tokens)
    writer = None
    try:
        try:
            writer = cache.CacheWriter(cache_path, config.features.n_mels, config.features.max_tokens)
        except OSError as exc:
            raise CacheError(f"cannot create the cache beside {cache_path}: {exc.strerror or exc}") from None
        for i, (spec, duration, error) in enumerate(results):
            utt = utterances[i]
            if error is not None:
                failed.add(utt.utt_id)
                report.skip("unreadable audio", f"{utt.utt_id}: {error}")
            else:
                writer.append(utt, label_set.class_index(utt.label), spec, ids[i], masks[i], duration,
                              gold[i] if gold is not None else None)
            if progress:
                progress("features", i + 1, len(jobs))
        if len(writer) == 0:
            raise CorpusError(f"no usable audio in {report.source}: every wav failed to decode "
                              f"(first: {report.problems[-1] if report.problems else 'unknown'})")
        report.utterances = [u for u in utterances if u.utt_id not in failed]
        summary = {**report.summary(), "classes": list(label_set.classes), "display": dict(label_set.display)}
        writer.commit(inputs, summary)
    except OSError as exc:  # a full disk, most often: the previous cache is untouched until the rename
        writer.abort()
        raise CacheError(f"cannot write the cache {cache_path}: {exc.strerror or exc}; the previous cache, "
                         f"if any, is intact") from None
    except BaseException:
        if writer is not None:
            writer.abort()  # KeyboardInterrupt included: never leave a half-written file behind
        raise
    return summary


def _recognised(utterances: list, config: PrepareConfig, progress: ProgressCallback | None) -> list:
    """The utterances with their text recognised from the audio prepare keeps (same truncation); one that cannot
    be decoded gets no text (its features fail too, and it is skipped with its reason)."""
    import dataclasses

    from emocli.asr import SAMPLE_RATE_HZ, AsrConfig, Recogniser
    from emocli.embed import load_utterance_audio

    recogniser = Recogniser.load(AsrConfig(model=config.asr_model))
    heard = []
    for i, utt in enumerate(utterances):
        try:
            text = recogniser.transcribe(load_utterance_audio(utt.audio_path, config.features, SAMPLE_RATE_HZ)).text
        except AudioError:
            text = ""
        heard.append(dataclasses.replace(utt, text=text))
        if progress:
            progress("transcribe", i + 1, len(utterances))
    return heard


def _skipped_line(report: ReadReport) -> str:
    if not report.skipped:
        return "nothing was skipped either: the source holds no labelled utterances"
    return "skipped: " + ", ".join(f"{reason} {n}" for reason, n in report.skipped.most_common())


def _extract_one(job: tuple[str, FeatureConfig]) -> tuple[np.ndarray | None, float, str | None]:
    path, features = job
    try:
        spec, duration = audio_features(Path(path), features)
    except AudioError as exc:
        return None, 0.0, str(exc)
    # float16 halves what crosses the process boundary; time-major is the cache's layout, so the transposing copy
    # is done here, in parallel, and the main process stores the block as it comes.
    return to_float16(spec.T).T, duration, None
