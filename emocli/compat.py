"""Does this cache fit this model: the one check, for train (a model about to be made) and for eval and predict
(a run already trained). Each refusal names the mismatch and the command that makes a cache that fits."""

from __future__ import annotations

from pathlib import Path

from emocli.cache import CacheInputs
from emocli.errors import CacheError, ConfigError

# Feature settings that only decide which files get into a cache, not what the model sees of one.
SELECTION_ONLY = ("min_seconds", "silence_peak")
# `emocli prepare` options for the feature settings it exposes, to say how to rebuild a mismatching cache.
PREPARE_FLAGS = {"n_mels": "--n-mels", "max_seconds": "--max-seconds"}


def check_cache_fits(inputs: CacheInputs, model, cache_path: Path, run=None):
    """ConfigError unless the cache at `cache_path` can feed `model` (an emocli.model.ModelConfig).

    Without `run`, for training: the class count, the mel count and the tokenizer of `model.text_model`; returns the
    resolved text model (None for an audio-only model). With `run` (an emocli.bundle.RunConfig), for a trained
    model: the run's classes in its order, its features, and the tokenizer its text model was fed.
    """
    if run is not None:
        _check_against_run(inputs, run, cache_path)
        return None
    classes = inputs.label_set.classes
    if model.n_classes != len(classes):
        raise ConfigError(f"the model has {model.n_classes} classes, the cache {cache_path} has {len(classes)} "
                          f"({', '.join(classes)}); set n_classes={len(classes)}")
    if model.n_mels != inputs.features.n_mels:
        raise ConfigError(f"the model expects {model.n_mels} mel bands, the cache {cache_path} has "
                          f"{inputs.features.n_mels}; set n_mels={inputs.features.n_mels} or re-run `emocli prepare "
                          f"--n-mels {model.n_mels}`")
    if not model.uses_text:
        return None
    from emocli.text_model import resolve_text_model, tokenizer_identity

    ref = resolve_text_model(model.text_model)
    if inputs.tokenizer.get("identity") != tokenizer_identity(ref):
        raise ConfigError(f"the cache {cache_path} was tokenised with {inputs.tokenizer.get('name')!r}, "
                          f"which differs from the text model {model.text_model!r}; re-run `emocli prepare "
                          f"--text-model {model.text_model}` or train with the cache's text model")
    return ref


def _check_against_run(inputs: CacheInputs, run, cache_path: Path) -> None:
    cached_classes = inputs.label_set.classes
    if cached_classes != run.classes:
        raise ConfigError(f"label-set mismatch: run has {', '.join(run.classes)}, cache {cache_path} has "
                          f"{', '.join(cached_classes) or 'none'}; prepare the cache with the run's label set "
                          f"(--labels {run.label_set.name})")
    ours, theirs = run.features.to_json(), inputs.features.to_json()
    differing = [k for k in sorted(set(ours) | set(theirs)) if k not in SELECTION_ONLY
                 and ours.get(k, "<absent>") != theirs.get(k, "<absent>")]
    if differing:
        pairs = ", ".join(f"{k} {ours.get(k, '<absent>')} vs {theirs.get(k, '<absent>')}" for k in differing)
        flags = " ".join(f"{PREPARE_FLAGS[k]} {ours[k]}" for k in differing if k in PREPARE_FLAGS and k in ours)
        raise ConfigError(f"feature mismatch: the run's model saw other features than cache {cache_path} holds "
                          f"(run vs cache: {pairs}); re-run `emocli prepare` with the run's settings"
                          + (f" ({flags})" if flags else ""))
    if run.model.uses_text and run.tokenizer.get("identity") != inputs.tokenizer.get("identity"):
        raise ConfigError(f"tokenizer mismatch: the run's text model was fed tokens of {run.tokenizer.get('name')!r}, "
                          f"cache {cache_path} was tokenised with {inputs.tokenizer.get('name')!r}; re-run "
                          f"`emocli prepare --text-model {run.model.text_model}`")


def check_token_ids(input_ids, vocab_size: int | None, cache_path: Path) -> None:
    """CacheError when the cache holds token ids past the text model's vocabulary (a hand-edited cache, or one
    tokenised for another model): the embedding lookup would otherwise fail deep inside a forward pass."""
    if not isinstance(vocab_size, int) or not getattr(input_ids, "size", 0):
        return
    largest = int(input_ids.max())
    if largest >= vocab_size:
        raise CacheError(f"{cache_path} holds token id {largest}, beyond the text model's vocabulary of {vocab_size}; "
                         f"the cache was edited or tokenised for another model — rebuild it with `emocli prepare`")
