"""The run directory, and nothing else: its layout, its config check, atomic checkpoints, and loading a model back.

Layout (FORMAT_VERSION 2):
    config.json                      RunConfig: model, train, feature config, label set, tokenizer identity,
                                     cache fingerprint, fold names, emocli and format version
    text_model/                      tokenizer files and the encoder's HF config.json, copied at creation, so
                                     predict needs neither the original text-model folder nor the cache;
      model.safetensors              the frozen encoder's weights, once for all folds (freeze_text only)
    folds/<name>/split.json          utterance ids of train / val / test
    folds/<name>/metrics.jsonl       one JSON line per epoch
    folds/<name>/checkpoint/checkpoint.safetensors
                                     the latest epoch: model, optimizer, best-so-far model as tensors; the
                                     rest (optimizer index, scheduler, RNG, epoch, history) as JSON metadata
    folds/<name>/model.safetensors   the final weights (best or last epoch), spec stats included; without the
                                     frozen text encoder, which lives in text_model/model.safetensors
    folds/<name>/predictions.jsonl   utt_id, true, pred, probs (class order of config.json) on the test part;
                                     dimensional models: true_dimensions, dimensions ([V, A, D])
    folds/<name>/result.json         the fold's scores; its presence marks the fold finished
    tensorboard/<name>/              TensorBoard scalars
    summary.json                     scores of every fold and their mean and std
    metrics[-<cache>].json, confusion[-<cache>].png, dimensions[-<cache>].png (dimensional models),
    training-curves.png                                                    written by `emocli eval`

Every file is written to a temporary name and renamed, so kill -9 at any moment leaves either the previous
version or the new one. Nothing is ever unpickled: weights are safetensors, everything else JSON.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from emocli import __version__
from emocli.atomic import LockBusy, file_lock, write_bytes_atomic
from emocli.corpus.records import LabelSet
from emocli.errors import CheckpointError
from emocli.features import FeatureConfig
from emocli.text_model import TOKENIZER_FILES

FORMAT_VERSION = 2  # 2: audio encoders and fusions as modules (state-dict names changed)
_MARKER = "emocli_run"
_CHECKPOINT_KEY = "emocli_checkpoint"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
_VOCABULARY_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model")
# Train settings that say where a run executes, not what it computes: a run may resume elsewhere.
_WHERE_NOT_WHAT = ("device",)
# Train settings added after runs were first written, with the value every older run trained with.
_TRAIN_SETTINGS_ADDED = {"folds": 5}


# --------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class RunConfig:
    """Everything that made a run, as saved in its config.json."""

    model: "ModelConfig"  # noqa: F821 - emocli.model.ModelConfig
    train: dict  # TrainConfig.to_json(); emocli.train owns the dataclass
    features: FeatureConfig
    label_set: LabelSet
    tokenizer: dict  # the cache's {name, identity, model_type}
    cache_fingerprint: str
    folds: tuple[str, ...]
    emocli_version: str = __version__
    format_version: int = FORMAT_VERSION

    @property
    def classes(self) -> tuple[str, ...]:
        return self.label_set.classes

    def to_json(self) -> dict:
        return {_MARKER: True, "format_version": self.format_version, "emocli_version": self.emocli_version,
                "model": self.model.to_json(), "train": dict(self.train), "features": self.features.to_json(),
                "label_set": self.label_set.to_json(), "tokenizer": dict(self.tokenizer),
                "cache_fingerprint": self.cache_fingerprint, "folds": list(self.folds)}

    @classmethod
    def from_json(cls, data: dict, where: Path) -> "RunConfig":
        from emocli.model import ModelConfig

        if not isinstance(data, dict) or not data.get(_MARKER):
            raise CheckpointError(f"{where} is not an emocli run config; point --run at a folder made by "
                                  f"`emocli train`")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(f"{where} has run format {version}, this emocli reads {FORMAT_VERSION}; retrain "
                                  f"with this version or use the emocli that made it ({data.get('emocli_version')})")
        try:
            config = cls(model=ModelConfig.from_json(data["model"]), train=dict(data["train"]),
                         features=FeatureConfig.from_json(data["features"]),
                         label_set=LabelSet.from_json(data["label_set"]), tokenizer=dict(data["tokenizer"]),
                         cache_fingerprint=str(data["cache_fingerprint"]), folds=tuple(data["folds"]),
                         emocli_version=str(data["emocli_version"]), format_version=int(version))
            if not all(isinstance(name, str) for name in config.folds + config.classes):
                raise TypeError("fold and class names must be strings")  # they become paths and table keys
            unsafe = [name for name in config.folds if fold_dirname(name) != name or name in (".", "..")]
            if unsafe:  # a hand-edited "../../x" or "/etc" must never become a path outside the run
                raise ValueError(f"fold name {unsafe[0]!r} is not one emocli makes (letters, digits, - _ .)")
            return config
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where} is incomplete or damaged ({type(exc).__name__}: {exc}); "
                                  f"retrain into a new --run") from None

    def settings(self) -> dict:
        """What must match for a rerun to continue this run: everything that changes the numbers."""
        # A run written before a setting existed ran with what is now its default: read so, it still resumes.
        train = {**_TRAIN_SETTINGS_ADDED, **{k: v for k, v in self.train.items() if k not in _WHERE_NOT_WHAT}}
        return {"model": self.model.to_json(), "train": train, "features": self.features.to_json(),
                "label_set": self.label_set.to_json(), "tokenizer": self.tokenizer.get("identity"),
                "cache_fingerprint": self.cache_fingerprint}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {_short(a)} -> {_short(b)}")
    return out


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------------------------- atomic files


def _atomic_write_json(path: Path, data) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def _atomic_save_tensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save

    blob = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, metadata=metadata)
    write_bytes_atomic(path, blob)


def _refuse_link(path: Path) -> None:
    """A run folder holds only files emocli wrote: a symbolic link in it (to anywhere) is never followed."""
    if Path(path).is_symlink():
        raise CheckpointError(f"{path} is a symbolic link; a run folder holds only files emocli wrote — the run was "
                              f"tampered with: retrain into a new --run")


def _read_json(path: Path):
    _refuse_link(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; the run is incomplete — rerun `emocli train` on it") from None
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
        raise CheckpointError(f"{path} is not readable JSON ({exc}); the run is damaged") from None


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    """The records of a JSON-lines file, each an object holding `required`; CheckpointError for anything else."""
    _refuse_link(path)
    try:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not readable JSON lines ({exc}); the run is damaged") from None
    if not all(isinstance(r, dict) and all(k in r for k in required) for r in records):
        raise CheckpointError(f"{path} holds a record without {', '.join(required)}; the run is damaged")
    return records


def _refuse_pickles(folder: Path, expected: Path) -> None:
    """Where safetensors are expected and a pickle sits instead, say so: we never unpickle."""
    if folder.is_dir():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in _PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(f"{folder} holds pickled weights ({', '.join(pickles)}) instead of {expected.name}; "
                                  f"emocli loads safetensors only and never unpickles — retrain into a new --run")


def load_tensors(path: Path) -> tuple[dict, dict[str, str]]:
    """(tensors, metadata) of a safetensors file; CheckpointError for anything else."""
    from safetensors import safe_open

    path = Path(path)
    _refuse_link(path)
    if not path.is_file():
        _refuse_pickles(path.parent, path)
        raise CheckpointError(f"{path} is missing; the run is incomplete — rerun `emocli train` on it")
    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            return tensors, dict(handle.metadata() or {})
    except Exception as exc:  # safetensors raises SafetensorError / OSError for a damaged or foreign file
        raise CheckpointError(f"{path} is not a safetensors file ({type(exc).__name__}); it is damaged or was not "
                              f"written by emocli — retrain into a new --run") from None


# --------------------------------------------------------------------------------------------- the run


class Fold:
    """One split's folder: its manifest, epoch log, checkpoint, final weights and predictions."""

    def __init__(self, run: "Run", name: str):
        self.run, self.name = run, name
        self.path = run.path / "folds" / name

    @property
    def tensorboard_dir(self) -> Path:
        return self.run.path / "tensorboard" / self.name

    @property
    def _checkpoint_file(self) -> Path:
        return self.path / "checkpoint" / "checkpoint.safetensors"

    @property
    def checkpoint_path(self) -> Path:
        """Where the fold's checkpoint lives (for messages that name it)."""
        return self._checkpoint_file.parent

    # manifest and logs
    def has_split(self) -> bool:
        return (self.path / "split.json").is_file()

    def save_split(self, split: dict[str, list[str]]) -> None:
        _atomic_write_json(self.path / "split.json", split)

    def read_split(self) -> dict[str, list[str]]:
        return _read_json(self.path / "split.json")

    def write_metrics(self, records: Iterable[dict]) -> None:
        """The whole epoch log, rewritten from the checkpoint's history, so it never runs ahead of a resume."""
        write_bytes_atomic(self.path / "metrics.jsonl",
                            "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())

    def read_metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        return _read_jsonl(path, ("epoch",)) if path.is_file() else []

    # checkpoint
    def save_checkpoint(self, tensors: dict, state: dict) -> None:
        """`tensors`: name -> tensor (model., optim., best., rng. prefixes are the caller's); `state`: JSON."""
        _atomic_save_tensors(self._checkpoint_file, tensors, {_CHECKPOINT_KEY: json.dumps(state, sort_keys=True)})

    def load_checkpoint(self) -> tuple[dict, dict] | None:
        """(tensors, state) of the latest checkpoint, or None when the fold has not finished an epoch."""
        if not self._checkpoint_file.is_file():
            _refuse_pickles(self._checkpoint_file.parent, self._checkpoint_file)
            return None
        tensors, metadata = load_tensors(self._checkpoint_file)
        if _CHECKPOINT_KEY not in metadata:
            raise CheckpointError(f"{self._checkpoint_file} is not an emocli checkpoint; delete it or use a new --run")
        return tensors, json.loads(metadata[_CHECKPOINT_KEY])

    # final artefacts
    def save_final(self, model_state: dict, predictions: list[dict], result: dict) -> None:
        """Weights, predictions, then result.json last: its presence says the fold is complete."""
        _atomic_save_tensors(self.path / "model.safetensors", model_state, {"format": "pt", "fold": self.name})
        write_bytes_atomic(self.path / "predictions.jsonl",
                            "".join(json.dumps(p) + "\n" for p in predictions).encode())
        _atomic_write_json(self.path / "result.json", result)
        self.discard_checkpoint()  # the final weights supersede it

    def discard_checkpoint(self) -> None:
        """Drop a finished fold's checkpoint (a kill between result.json and its removal can leave one)."""
        shutil.rmtree(self.path / "checkpoint", ignore_errors=True)

    def result(self) -> dict | None:
        path = self.path / "result.json"
        return _read_json(path) if path.is_file() else None

    def read_predictions(self) -> list[dict]:
        path = self.path / "predictions.jsonl"
        if not path.is_file():
            raise CheckpointError(f"{path} is missing; fold {self.name} has not finished — rerun `emocli train`")
        rows = _read_jsonl(path, ("true", "pred") if self.run.config.model.predicts_classes else ("true", "dimensions"))
        if not rows:
            raise CheckpointError(f"{path} is empty; fold {self.name} is damaged — retrain it into a new --run")
        return rows


class Run:
    def __init__(self, path: Path, config: RunConfig):
        self.path, self.config = Path(path), config

    def fold(self, name: str) -> Fold:
        if name not in self.config.folds:
            raise CheckpointError(f"{self.path} has no fold {name!r}; it has: {', '.join(self.config.folds)}")
        return Fold(self, name)

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    def has_text_encoder_weights(self) -> bool:
        return (self.path / "text_model" / "model.safetensors").is_file()

    def save_text_encoder(self, tensors: dict) -> None:
        _atomic_save_tensors(self.path / "text_model" / "model.safetensors", tensors, {"format": "pt"})

    def report_paths(self, other_cache: str | None = None) -> dict[str, Path]:
        """Where eval writes: metrics.json and confusion.png (suffixed by another cache's name when it scored one),
        and training-curves.png (the same training whatever the test data)."""
        suffix = "" if other_cache is None else "-" + fold_dirname(other_cache)
        return {"metrics": self.path / f"metrics{suffix}.json", "confusion": self.path / f"confusion{suffix}.png",
                "scatter": self.path / f"dimensions{suffix}.png", "curves": self.path / "training-curves.png"}

    def save_summary(self, summary: dict) -> None:
        _atomic_write_json(self.path / "summary.json", summary)

    def read_summary(self) -> dict:
        return _read_json(self.path / "summary.json")


def fold_dirname(name: str) -> str:
    """A fold name safe as one path component."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return safe.lstrip(".") or "fold"


def check_run(run_dir: Path, config: RunConfig) -> Run | None:
    """The existing run at `run_dir` when it was made with the same settings; None when there is none yet.

    Reads only; raises CheckpointError for a run made differently or a folder that is not a run.
    """
    run_dir = Path(run_dir)
    config_file = run_dir / "config.json"
    if not config_file.is_file():
        if run_dir.is_dir() and any(p for p in run_dir.iterdir() if not p.name.startswith(".")
                                    and not (p.name == "text_model" and _only_copied_text_files(p))):
            raise CheckpointError(f"{run_dir} exists and is not an emocli run (no config.json); use a new --run or "
                                  f"an empty folder")
        if run_dir.exists() and not run_dir.is_dir():
            raise CheckpointError(f"{run_dir} is a file, not a run folder; use a new --run")
        return None
    old = RunConfig.from_json(_read_json(config_file), config_file)
    diff = _differences(old.settings(), config.settings())
    if diff:
        raise CheckpointError(f"run dir {run_dir} was made with different settings ({'; '.join(diff)}); use a new "
                              f"--run or delete it")
    return Run(run_dir, old)


def _only_copied_text_files(folder: Path) -> bool:
    """A run's text_model/ as `create_or_open_run` copies it before writing config.json: a creation interrupted
    there (kill -9, full disk) left a folder that is an unfinished run of ours, not someone else's."""
    allowed = {*TOKENIZER_FILES, "config.json"}
    return folder.is_dir() and all(p.is_file() and (p.name in allowed or p.name.startswith(".")) for p in folder.iterdir())


@contextlib.contextmanager
def lock_run(run_dir: Path):
    """Hold the run dir for one trainer: a second `emocli train` on it is refused, not interleaved.

    The lock is an flock on `.lock`, so the OS drops it when its holder dies, kill -9 included. Temporary files
    such a death left behind are removed once the lock is ours.
    """
    run_dir = Path(run_dir)
    try:
        with file_lock(run_dir / ".lock", wait=False):
            for stale in run_dir.rglob(".*.tmp-*"):
                stale.unlink(missing_ok=True)
            yield
    except LockBusy:
        raise CheckpointError(f"run dir {run_dir} is in use by another `emocli train`; wait for it to finish "
                              f"or use a new --run") from None


def create_or_open_run(run_dir: Path, config: RunConfig, text_model_dir: Path | None = None) -> Run:
    """Open the run at `run_dir` if its settings equal `config`, else create it. Nothing is touched on refusal.

    `text_model_dir`: the text model folder whose tokenizer files and config.json are copied in (None for an
    audio-only model).
    """
    run_dir = Path(run_dir)
    existing = check_run(run_dir, config)
    if existing is not None:
        return existing
    run_dir.mkdir(parents=True, exist_ok=True)
    if text_model_dir is not None:
        target = run_dir / "text_model"
        target.mkdir(exist_ok=True)
        for name in (*TOKENIZER_FILES, "config.json"):
            source = Path(text_model_dir) / name
            if source.is_file():
                write_bytes_atomic(target / name, source.read_bytes())
    _atomic_write_json(run_dir / "config.json", config.to_json())  # last: its presence makes the folder a run
    return Run(run_dir, config)


def open_run(run_dir: Path) -> Run:
    """An existing run, for eval and predict."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is a file, not a run folder; pass the folder `emocli train --run` made")
    if not run_dir.is_dir():
        raise CheckpointError(f"no run at {run_dir}; train one with `emocli train --run {run_dir}`")
    config_file = run_dir / "config.json"
    if not config_file.exists() and not config_file.is_symlink():
        runs = sorted(child.name for child in _subfolders(run_dir) if _is_run_config(child / "config.json"))
        if runs:
            shown = ", ".join(runs[:5]) + (f" and {len(runs) - 5} more" if len(runs) > 5 else "")
            raise CheckpointError(f"{run_dir} is not a run but a folder of runs ({shown}); pass one of them")
    return Run(run_dir, RunConfig.from_json(_read_json(config_file), config_file))


def _is_run_config(path: Path) -> bool:
    try:
        return path.is_file() and not path.is_symlink() and json.loads(path.read_text(encoding="utf-8")).get(_MARKER) is True
    except (OSError, ValueError, AttributeError):
        return False


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [child for child in folder.iterdir() if child.is_dir() and not child.is_symlink()]
    except OSError:
        return []


# --------------------------------------------------------------------------------------------- model state


def text_encoder_keys(model) -> set[str]:
    """state_dict keys of the model's text encoder (empty for an audio-only model)."""
    from emocli.model import TextEncoder

    prefixes = [name + "." for name, module in model.named_modules() if isinstance(module, TextEncoder)]
    return {k for k in model.state_dict() if any(k.startswith(p) for p in prefixes)}


def model_state(model, freeze_text: bool) -> dict:
    """The weights a fold owns: all of them, less the frozen text encoder (stored once for the run)."""
    state = model.state_dict()
    skip = text_encoder_keys(model) if freeze_text else set()
    return {k: v for k, v in state.items() if k not in skip}


def load_model_state(model, tensors: dict, freeze_text: bool, where: Path, assign: bool = False) -> None:
    """Load `tensors` into `model`, checking names and shapes; a frozen encoder's keys may be absent.
    `assign` adopts the tensors themselves (for a model built on the meta device)."""
    expected = model.state_dict()
    optional = text_encoder_keys(model) if freeze_text else set()
    missing = sorted(set(expected) - set(tensors) - optional)
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(tensors) & set(expected) if tuple(tensors[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or wrong:
        parts = [f"{label} {', '.join(keys[:3])}{'…' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise CheckpointError(f"{where} does not fit this model ({'; '.join(parts)}); it was made by another "
                              f"model configuration — retrain into a new --run")
    model.load_state_dict(tensors, strict=False, assign=assign)


def load_model(run_dir: Path, fold: str | None = None, device: str = "cpu"):
    """(EmotionModel in eval mode, RunConfig, tokenizer or None) of a finished fold, built offline from the run.

    `fold` defaults to `default_fold`: the final model of `--protocol all`, else the run's first fold. Each
    cross-validation fold's model saw a different training part.
    """
    import torch

    from emocli.encoders import audio_encoder_class
    from emocli.model import EmotionModel, TextEncoder

    run = open_run(run_dir)
    config = run.config
    if not config.folds:
        raise CheckpointError(f"{run.path / 'config.json'} lists no folds; the run is damaged — retrain into a new "
                              f"--run")
    name = fold if fold is not None else default_fold(config)
    fold_obj = run.fold(name)
    if fold_obj.result() is None:
        _refuse_pickles(fold_obj.path, fold_obj.path / "model.safetensors")
        raise CheckpointError(f"fold {name} of {run.path} has not finished training; rerun `emocli train` on it")
    text_dir = run.path / "text_model"
    encoder, tokenizer = None, None
    if config.model.uses_text:
        hf_config, tokenizer = _load_text_side(text_dir)
    weights = fold_obj.path / "model.safetensors"
    tensors, _ = load_tensors(weights)
    if config.model.uses_text and config.model.freeze_text:
        shared, _ = load_tensors(text_dir / "model.safetensors")
        tensors = {**shared, **tensors}
    # Built on the meta device first: random initialisation of weights about to be replaced cost a third of a
    # second of every `predict`'s start. Every saved tensor then comes from the files (freeze_text=False: none may
    # be absent); an encoder with unsaved buffers (transformers' position ids) is rebuilt the ordinary way.
    for where_built in ("meta", "cpu"):
        with torch.device(where_built):
            if config.model.uses_text:
                encoder = TextEncoder.from_config(hf_config, config.model.text_pooling)
            audio = audio_encoder_class(config.model.audio_encoder).for_saved(config.model) \
                if config.model.uses_audio else None
            model = EmotionModel(config.model, text_encoder=encoder, audio_encoder=audio)
        load_model_state(model, tensors, freeze_text=False, where=weights, assign=True)
        if not any(t.is_meta for t in (*model.parameters(), *model.buffers())):
            break
    return model.to(device).eval(), config, tokenizer


def default_fold(config: RunConfig) -> str:
    """The fold `predict` and `load` use unless told: the final model of `train --protocol all` (its only fold),
    else the run's first fold (`random-0`, or `loso-<first session>`, which never heard that session)."""
    return config.folds[0]


def _load_text_side(text_dir: Path) -> tuple[dict, object]:
    """(the encoder's HF config as a dict, the tokenizer), from the run's own copy."""
    from emocli.text_model import tokenizer_from_folder

    hf_config = _read_json(text_dir / "config.json")
    # Without its vocabulary transformers builds a tokenizer of a few special tokens that maps every word to
    # [UNK], without a word of warning: refuse that rather than predict from nothing.
    if not any((text_dir / name).is_file() for name in _VOCABULARY_FILES):
        raise CheckpointError(f"{text_dir} has no tokenizer vocabulary ({' or '.join(_VOCABULARY_FILES[:2])}); the "
                              f"run is incomplete — retrain into a new --run")
    try:
        tokenizer = tokenizer_from_folder(text_dir)
    except Exception as exc:
        raise CheckpointError(f"cannot load the tokenizer saved in {text_dir}: {exc}".splitlines()[0]) from None
    vocab_size = hf_config.get("vocab_size") if isinstance(hf_config, dict) else None
    if isinstance(vocab_size, int) and len(tokenizer) > vocab_size:  # ids past the embedding table
        raise CheckpointError(f"the tokenizer saved in {text_dir} has {len(tokenizer)} tokens, its encoder only "
                              f"{vocab_size}; the run is damaged — retrain into a new --run")
    return hf_config, tokenizer


# --------------------------------------------------------------------------------------------- optimizer


def flatten_optimizer(state_dict: dict, prefix: str = "optim.") -> tuple[dict, dict]:
    """An optimizer's state_dict as (tensors, JSON index); no pickle."""
    tensors, index = {}, {"param_groups": state_dict["param_groups"], "state": {}}
    for pid, slots in state_dict["state"].items():
        entry = {}
        for slot, value in slots.items():
            if hasattr(value, "shape"):
                key = f"{prefix}{pid}.{slot}"
                tensors[key] = value
                entry[slot] = {"tensor": key}
            else:
                entry[slot] = {"value": value}
        index["state"][str(pid)] = entry
    return tensors, json.loads(json.dumps(index))  # tuples -> lists, and a check that it is plain JSON


def unflatten_optimizer(tensors: dict, index: dict) -> dict:
    state = {}
    for pid, entry in index["state"].items():
        state[int(pid)] = {slot: tensors[v["tensor"]] if "tensor" in v else v["value"] for slot, v in entry.items()}
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in index["param_groups"]]
    return {"state": state, "param_groups": groups}
