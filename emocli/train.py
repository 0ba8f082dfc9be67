"""`emocli train`: splits, the explicit training loop, per-epoch checkpoints, resume, and optional DDP.

One call trains every fold of a protocol into one run directory (layout: `emocli.bundle`):
    random  the paper's protocol: `repeats` seeded stratified splits of 90 % train / 10 % test; speakers are
            shared between train and test, so the scores overestimate accuracy on new speakers.
    loso    leave one session out: one fold per session, its speakers unseen in training.
    loso-speaker   leave one speaker out: one fold per speaker (any corpus with a speaker column).
    speaker-folds  `folds` folds of speakers (StratifiedGroupKFold: no speaker in two folds, classes balanced).
    all     one final model on all the data (no test part), for `predict` and export; `--like RUN` takes a
            cross-validated run's settings and the median of its folds' selected epochs.
A validation part is carved, stratified, from each training part and used only to pick the best epoch.

Reproducibility: batch order is a pure function of (seed, fold, epoch), and every global random generator is
reseeded from (seed, fold, epoch, rank) at the start of each epoch, so an epoch's outcome depends only on the
weights and optimizer state it starts from. Those are checkpointed after every epoch (with the scheduler and
RNG states), which makes a rerun after kill -9 end with exactly the numbers of an uninterrupted run on CPU.

DDP: under `torchrun --nproc-per-node N`, every rank builds the same global batches and trains on its slice
of each; only rank 0 evaluates and writes.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np

from emocli import bundle, metrics
from emocli.errors import ConfigError

# (fold name, epoch, epochs, train loss, train accuracy, utterances per second), after every epoch
ProgressCallback = Callable[[str, int, int, float, float, float], None]

PROTOCOLS = ("random", "loso", "loso-speaker", "speaker-folds", "all")
SPEAKER_INDEPENDENT = ("loso", "loso-speaker", "speaker-folds")
FINAL_FOLD = "all"  # the fold name of `--protocol all`
RANDOM_PROTOCOL_WARNING = ("protocol 'random' (the paper's) shares speakers between train and test, so its "
                           "scores overestimate accuracy on unseen speakers; use --protocol loso for "
                           "speaker-independent scores")
_EVAL_BATCH_FACTOR = 2  # evaluation keeps no activations for backward: twice the batch fits
_TEXT_EMBED_BATCH = 64  # utterances per encoder call when precomputing frozen text embeddings


@dataclass(frozen=True)
class TrainConfig:
    protocol: str = "random"  # one of PROTOCOLS
    repeats: int = 3  # random protocol only: splits with seeds seed, seed+1, ...
    folds: int = 5  # speaker-folds only: the number of speaker groups
    test_fraction: float = 0.1
    val_fraction: float = 0.1  # of the training part, stratified; picks the best epoch only
    epochs: int = 50
    batch_size: int = 32
    lr: float = 1e-4  # Adam, as the paper
    step_size: int = 30  # StepLR epochs, as the paper
    gamma: float = 0.1
    class_weighted: bool = False  # inverse-frequency class weights in the loss; off, as the paper
    audio_lr: float = 0.0  # --finetune-audio: the pretrained speech encoder's own rate (0: the same as lr)
    weight_decay: float = 0.0  # Adam's L2 penalty; 0, as the paper (a small head on few utterances may want it)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    select_best: bool = True  # test the epoch with the best validation UA; False: the last epoch
    audio_init: str = ""  # a local torchvision AlexNet state dict: the paper's ImageNet-pretrained start

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown train setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)

    def validate(self) -> None:
        checks = [
            (self.protocol in PROTOCOLS, f"protocol {self.protocol!r} is not one of {', '.join(PROTOCOLS)}"),
            (self.repeats >= 1, f"repeats must be at least 1, not {self.repeats}"),
            (self.folds >= 2, f"folds must be at least 2, not {self.folds}"),
            (0.0 < self.test_fraction < 1.0, f"test_fraction must be between 0 and 1, not {self.test_fraction}"),
            (0.0 <= self.val_fraction < 1.0, f"val_fraction must be in [0, 1), not {self.val_fraction}"),
            (self.epochs >= 1, f"epochs must be at least 1, not {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be at least 1, not {self.batch_size}"),
            (0 < self.lr < float("inf"), f"lr must be a positive finite number, not {self.lr}"),
            (self.step_size >= 1, f"step_size must be at least 1, not {self.step_size}"),
            (0 < self.gamma < float("inf"), f"gamma must be a positive finite number, not {self.gamma}"),
            (0 <= self.weight_decay < float("inf"), f"weight_decay must be a non-negative finite number, not "
                                                     f"{self.weight_decay}"),
            (0 <= self.audio_lr < float("inf"), f"audio_lr must be a non-negative finite number, not {self.audio_lr}"),
            (self.seed >= 0, f"seed must be non-negative, not {self.seed}"),
            (self.device in ("auto", "cpu", "cuda"), f"device {self.device!r} is not one of auto, cpu, cuda"),
            (self.precision in ("auto", "fp32", "bf16"),
             f"precision {self.precision!r} is not one of auto, fp32, bf16"),
            (self.val_fraction > 0 or not self.select_best,
             "select_best needs a validation part: set val_fraction > 0, or select_best off to test the last epoch"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)


def protocol_warnings(config: TrainConfig) -> list[str]:
    """One line per caveat the user should see before the numbers (the CLI prints them)."""
    return [RANDOM_PROTOCOL_WARNING] if config.protocol == "random" else []


# --------------------------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Split:
    name: str
    index: int  # position among the protocol's folds; part of every seed derived for this fold
    train: np.ndarray  # utterance indices the model is fitted on (sorted)
    val: np.ndarray  # carved from the training part, for best-epoch selection
    test: np.ndarray  # the held-out evaluation part


def make_splits(labels: np.ndarray, sessions: list[str], classes: tuple[str, ...], config: TrainConfig,
                speakers: list[str] | None = None) -> list[Split]:
    """The protocol's folds; ConfigError when the data cannot support it."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedShuffleSplit

    labels = np.asarray(labels)
    everything = np.arange(len(labels))

    def shuffle_split(indices: np.ndarray, fraction: float, seed: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        splitter = StratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        try:
            keep, held = next(splitter.split(indices, labels[indices]))
        except ValueError as exc:
            counts = {classes[c]: int(n) for c, n in zip(*np.unique(labels[indices], return_counts=True))}
            raise ConfigError(f"cannot split {what} stratified with fraction {fraction} ({exc}); class counts "
                              f"{counts} — use more data or change the fraction") from None
        return np.sort(indices[keep]), np.sort(indices[held])

    def known(values: list[str] | None, what: str, column: str) -> np.ndarray:
        values = list(values) if values is not None else ["unknown"] * len(labels)
        names = sorted(set(values) - {"unknown"})
        if len(names) < 2 or "unknown" in values:
            hint = ("use --protocol loso-speaker or speaker-folds (the speakers are known)"
                    if what == "sessions" and speakers is not None and "unknown" not in speakers
                    and len(set(speakers)) >= 2 else "use --protocol random (speaker-dependent)")
            missing = sum(v == "unknown" for v in values)
            raise ConfigError(f"--protocol {config.protocol} needs at least 2 {what} and every utterance's "
                              f"{what[:-1]}; the cache has {len(names)} ({', '.join(names[:8]) or 'none'})"
                              f"{f' and {missing} utterances without one' if missing else ''}; give the manifest a "
                              f"{column} column, or {hint}")
        return np.asarray(values)

    parts: list[tuple[str, np.ndarray, np.ndarray, int]] = []  # name, train (with val), test, seed
    if config.protocol == "random":
        for r in range(config.repeats):
            train, test = shuffle_split(everything, config.test_fraction, config.seed + r, "the corpus")
            parts.append((f"random-{r}", train, test, config.seed + r))
    elif config.protocol in ("loso", "loso-speaker"):
        by_session = config.protocol == "loso"
        groups = known(sessions if by_session else speakers, "sessions" if by_session else "speakers",
                       "session" if by_session else "speaker")
        prefix = "loso" if by_session else "speaker"
        for name in sorted(set(groups)):
            parts.append((f"{prefix}-{name}", everything[groups != name], everything[groups == name], config.seed))
    elif config.protocol == "speaker-folds":
        groups = known(speakers, "speakers", "speaker")
        if len(set(groups)) < config.folds:
            raise ConfigError(f"--folds {config.folds} needs at least {config.folds} speakers; the cache has "
                              f"{len(set(groups))}: use --folds {len(set(groups))} or fewer")
        splitter = StratifiedGroupKFold(n_splits=config.folds, shuffle=True, random_state=config.seed)
        for k, (train, test) in enumerate(splitter.split(everything, labels, groups)):
            parts.append((f"speakers-{k}", train, test, config.seed))
    else:  # all: the final model; its validation part (if any) still picks the epoch
        parts.append((FINAL_FOLD, everything, np.zeros(0, dtype=np.int64), config.seed))

    folders = [bundle.fold_dirname(name) for name, *_ in parts]
    if len(set(folders)) < len(folders):
        same = sorted({n for n, f in zip((p[0] for p in parts), folders) if folders.count(f) > 1})
        raise ConfigError(f"folds {', '.join(same)} would share one folder (their names differ only in characters a "
                          f"folder name cannot hold); give those sessions or speakers distinct names")
    splits = []
    for i, (name, train, test, seed) in enumerate(parts):
        missing = [classes[c] for c in range(len(classes)) if not np.any(labels[train] == c)]
        if missing:
            raise ConfigError(f"fold {name}: class(es) {', '.join(missing)} have no utterance in the training part; "
                              f"every class needs training data — check the cache's per-session counts")
        val = np.zeros(0, dtype=np.int64)
        if config.val_fraction > 0:
            train, val = shuffle_split(train, config.val_fraction, seed, f"the training part of fold {name}")
        splits.append(Split(bundle.fold_dirname(name), i, train.astype(np.int64), val.astype(np.int64),
                            np.sort(test).astype(np.int64)))
    return splits


def final_settings(cv_run: Path, device: str | None = None, precision: str | None = None):
    """(ModelConfig, TrainConfig) of a final model: a cross-validated run's settings, trained on all the data for
    the median of the epochs its folds selected on their validation parts (so no data is held back for choosing
    the epoch, and the choice was made without the test folds)."""
    run = bundle.open_run(Path(cv_run))
    settings = TrainConfig.from_json(run.config.train)
    if settings.protocol == "all":
        raise ConfigError(f"{cv_run} is itself a final model (--protocol all); give --like a cross-validated run")
    epochs = [int(result["epoch"]) for name in run.config.folds for result in [run.fold(name).result()]
              if result is not None]
    if not epochs:
        raise ConfigError(f"no fold of {cv_run} has finished; finish it (rerun its `emocli train`) before --like")
    chosen = max(1, int(round(float(np.median(epochs)))))
    final = replace(settings, protocol="all", epochs=chosen, val_fraction=0.0, select_best=False,
                    device=device or settings.device, precision=precision or settings.precision)
    return run.config.model, final


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class FoldResult:
    name: str
    wa: float | None  # None: a final model (--protocol all) has no test part to score
    ua: float | None
    macro_f1: float | None
    epoch: int  # the epoch whose weights were tested
    n_train: int
    n_val: int
    n_test: int
    ccc: float | None = None  # mean concordance over valence, arousal, dominance (dimensional models)

    @classmethod
    def from_json(cls, data: dict) -> "FoldResult":
        return cls(**{f.name: data.get(f.name) for f in fields(cls)})


@dataclass
class TrainSummary:
    run_dir: Path
    protocol: str
    folds: list[FoldResult]
    aggregate: dict  # {wa|ua|macro_f1: {mean, std, values}}
    warnings: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)  # "fold X from epoch k" / "fold X already finished"

    def to_json(self) -> dict:
        return {"run_dir": str(self.run_dir), "protocol": self.protocol, "folds": [asdict(f) for f in self.folds],
                "aggregate": self.aggregate, "warnings": self.warnings, "resumed": self.resumed,
                "units": {"wa, ua, macro_f1": "fraction 0-1", "ccc": "-1..1", "std": "population (ddof 0) over folds"}}


# --------------------------------------------------------------------------------------------- runtime


@dataclass(frozen=True)
class _Dist:
    """Where this process stands: rank, world size, device and precision."""

    rank: int
    world: int
    device: "torch.device"  # noqa: F821
    bf16: bool
    owns_group: bool  # we initialised the process group, so we tear it down

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup(config: TrainConfig) -> _Dist:
    import torch
    import torch.distributed as dist

    from emocli.batch import resolve_device, use_bf16

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = resolve_device(config.device)
    cuda = device.type == "cuda"
    if cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS; read at its first use
        torch.cuda.set_device(device)
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
        owns = True
    return _Dist(rank, world, device, use_bf16(device, config.precision), owns)


def _seed_everything(*key: int) -> None:
    import torch

    seed = int(np.random.SeedSequence(list(key)).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # CPU and every CUDA device


def _rng_state(dist_: _Dist) -> tuple[dict, dict]:
    import torch

    py = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"rng.torch": torch.get_rng_state(), "rng.numpy": torch.from_numpy(keys.astype(np.int64))}
    if dist_.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(dist_.device)
    state = {"python": [py[0], list(py[1]), py[2]], "numpy": [kind, int(pos), int(has_gauss), float(cached)]}
    return tensors, state


def _set_rng_state(tensors: dict, state: dict, dist_: _Dist) -> None:
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    if dist_.device.type == "cuda" and "rng.cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng.cuda"], dist_.device)


def _batch_order(n: int, batch_size: int, seed: int, fold: int, epoch: int) -> list[np.ndarray]:
    """The epoch's batches of positions 0..n-1: a pure function of (seed, fold, epoch)."""
    order = np.random.default_rng([seed, fold, epoch]).permutation(n)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def _all_sum(values: list[float], dist_: _Dist) -> list[float]:
    if dist_.world == 1:
        return values
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=dist_.device)
    dist.all_reduce(t)
    return t.tolist()


def _agree(ok: bool, dist_: _Dist) -> bool:
    """True on every rank iff `ok` on every rank."""
    return _all_sum([0.0 if ok else 1.0], dist_)[0] == 0.0


def _barrier(dist_: _Dist) -> None:
    if dist_.world > 1:
        import torch.distributed as dist

        dist.barrier()


# --------------------------------------------------------------------------------------------- training


def train(cache_path: Path, run_dir: Path, model_config, train_config: TrainConfig = TrainConfig(),
          progress: ProgressCallback | None = None) -> TrainSummary:
    """Train every fold of `train_config.protocol` on the cache into `run_dir`; resume whatever is unfinished."""
    import torch

    cache_path, run_dir = Path(cache_path), Path(run_dir)  # a notebook passes strings

    from emocli.cache import read_cache

    train_config.validate()
    data = read_cache(cache_path)
    from emocli.compat import check_cache_fits

    inputs = data.meta.typed_inputs(cache_path)
    text_ref = check_cache_fits(inputs, model_config, cache_path)
    if text_ref is not None:  # the encoder's width is a fact of the text model, not a choice: taken from it
        from emocli.compat import check_token_ids
        from emocli.text_model import encoder_hidden_size, read_encoder_config

        check_token_ids(data.input_ids, read_encoder_config(text_ref.path).get("vocab_size"), cache_path)
        model_config = replace(model_config, text_hidden=encoder_hidden_size(text_ref))
    classes = data.meta.classes
    if model_config.predicts_dimensions:  # refused before the run folder exists
        _dimension_stats(data, np.arange(len(data)))
    splits = make_splits(data.labels, data.sessions, classes, train_config, data.speakers)
    run_config = bundle.RunConfig(model=model_config, train=train_config.to_json(),
                                  features=inputs.features, label_set=inputs.label_set,
                                  tokenizer=inputs.tokenizer,
                                  cache_fingerprint=data.meta.fingerprint, folds=tuple(s.name for s in splits))
    dist_ = _setup(train_config)
    from emocli.encoders import feature_source

    stage, source = None, feature_source(model_config)
    if source is not None:  # a frozen upstream's states, or the waveform: computed once, then read back
        from emocli.embed import ensure_stage

        bundle.check_run(run_dir, run_config)  # a run dir that will be refused is refused before minutes of embedding

        stage = ensure_stage(cache_path, source, data, device=dist_.device.type, rank=dist_.rank,
                             world=dist_.world, barrier=lambda: _barrier(dist_))
    deterministic = torch.are_deterministic_algorithms_enabled()
    held = contextlib.ExitStack()
    try:
        run = _open_run(run_dir, run_config, text_ref, dist_, held)
        if dist_.main:
            for s in splits:
                fold = run.fold(s.name)
                if not fold.has_split():
                    fold.save_split({part: [data.utt_ids[i] for i in getattr(s, part)]
                                     for part in ("train", "val", "test")})
        torch.use_deterministic_algorithms(True, warn_only=True)
        from emocli.batch import inputs_from_cache

        corpus = inputs_from_cache(data, model_config, stage, device=dist_.device)
        results, resumed = [], []
        for split in splits:
            results.append(_train_fold(run, split, data, stage, corpus, model_config, train_config, dist_,
                                       progress, resumed))
        scored = [asdict(r) for r in results if r.n_test]
        keys = [k for k in ("wa", "ua", "macro_f1", "ccc") if scored and scored[0][k] is not None]
        aggregate = metrics.aggregate(scored, keys) if scored else {}
        summary = TrainSummary(Path(run_dir), train_config.protocol, results, aggregate,
                               protocol_warnings(train_config), resumed)
        if dist_.main:
            run.save_summary(summary.to_json())
        # Every rank tears the group down together (success only: after an error a peer may be gone): a rank that
        # destroyed its group while rank 0 still wrote the summary aborted at exit once on a loaded machine
        # ("terminate called without an active exception").
        _barrier(dist_)
        return summary
    finally:
        held.close()
        torch.use_deterministic_algorithms(deterministic)
        if dist_.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


def _open_run(run_dir: Path, run_config, text_ref, dist_: _Dist, held: contextlib.ExitStack):
    """Rank 0 checks, locks (for as long as `held`) and creates the run; the others wait, then open it read-only."""
    error = None
    if dist_.main:
        try:
            bundle.check_run(run_dir, run_config)  # a refusal touches nothing, not even a lock file
            held.enter_context(bundle.lock_run(run_dir))
            bundle.create_or_open_run(run_dir, run_config, text_ref.path if text_ref is not None else None)
        except Exception as exc:  # every rank must leave together, or the others wait for ever
            error = exc
    if not _agree(error is None, dist_):
        if error is not None:
            raise error
        from emocli.errors import CheckpointError

        raise CheckpointError(f"rank 0 refused the run dir {run_dir}; see its message")
    run = bundle.check_run(run_dir, run_config)
    assert run is not None
    return run


def _build_model(model_config, split: Split, train_config: TrainConfig, dist_: _Dist):
    from emocli.model import EmotionModel

    _seed_everything(train_config.seed, split.index, 1 << 20)  # same initial weights on every rank and rerun
    model = EmotionModel(model_config)  # the text encoder loads from config.text_model
    if train_config.audio_init and model_config.uses_audio:
        model.load_torchvision_alexnet(Path(train_config.audio_init))
    return model.to(dist_.device)


def _train_fold(run, split: Split, data, stage, corpus, model_config, train_config: TrainConfig, dist_: _Dist,
                progress: ProgressCallback | None, resumed: list[str]) -> FoldResult:
    import torch

    fold = run.fold(split.name)
    done = fold.result()
    if done is not None:
        if dist_.main:
            fold.discard_checkpoint()
        resumed.append(f"fold {split.name} already finished")
        return FoldResult.from_json(done)

    # the model, its input statistics, and the frozen text embeddings
    model = _build_model(model_config, split, train_config, dist_)
    if model_config.uses_audio:
        from emocli.batch import audio_arrays

        model.audio.fit_inputs(*audio_arrays(data, model_config, stage), split.train)
    if model_config.predicts_dimensions:  # buffers of the model: the scale its dimensional head maps back to
        model.set_dimension_stats(*_dimension_stats(data, split.train))
    if train_config.class_weighted:  # a buffer of the model: saved with its weights, used by its loss
        model.set_class_weights(torch.from_numpy(_class_weights(data.labels[split.train], len(data.meta.classes))))
    freeze = bool(model_config.freeze_text) and model_config.uses_text
    if freeze:
        if dist_.main and not run.has_text_encoder_weights():
            run.save_text_encoder({k: v for k, v in model.state_dict().items() if k in bundle.text_encoder_keys(model)})
        if corpus.text_embeds is None:  # the same pretrained encoder in every fold: once per run
            corpus.text_embeds = _text_embeddings(model, corpus, dist_)

    optimizer = torch.optim.Adam(_parameter_groups(model, train_config), lr=train_config.lr,
                                 weight_decay=train_config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=train_config.step_size, gamma=train_config.gamma)
    state = _FoldState()
    checkpoint = fold.load_checkpoint()
    if checkpoint is not None:
        state = _restore(checkpoint, model, optimizer, scheduler, freeze, fold, dist_)
        resumed.append(f"fold {split.name} from epoch {state.epoch + 1}")

    net = model
    if dist_.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # A trainable HF encoder has parameters the forward never uses (BERT's pooler): DDP must look for them.
        net = DistributedDataParallel(model, device_ids=[dist_.device.index] if dist_.device.type == "cuda" else None,
                                      find_unused_parameters=(model_config.uses_text and not freeze)
                                      or model_config.audio_feature == "waveform")
    writer = None
    if dist_.main:
        # A kill may land between the checkpoint and the logs: rewrite both logs from the checkpoint's history.
        writer = _tensorboard(fold, resuming=checkpoint is not None)
        fold.write_metrics(state.history)
        for record in state.history:
            _log_scalars(writer, record)
    autocast = torch.autocast(device_type=dist_.device.type, dtype=torch.bfloat16, enabled=dist_.bf16)

    for epoch in range(state.epoch + 1, train_config.epochs + 1):
        record = _train_epoch(net, optimizer, corpus, split, train_config, epoch, dist_, autocast)
        scheduler.step()
        if dist_.main:
            if len(split.val):
                probs, dims, val_loss = _predict(model, corpus, split.val, train_config.batch_size, autocast)
                record.update(val_loss=val_loss, **_validation_scores(data, split.val, probs, dims))
                if train_config.select_best and record["val_score"] > state.best["val_score"]:
                    state.best = {"epoch": epoch, "val_score": record["val_score"]}
                    state.best_weights = {k: v.detach().to("cpu", copy=True)
                                          for k, v in bundle.model_state(model, freeze).items()}
            state.epoch = epoch
            state.history.append(record)
            _save_checkpoint(fold, model, optimizer, scheduler, freeze, state, dist_)
            fold.write_metrics(state.history)  # after the checkpoint: the log never runs ahead of a resume
            _log_scalars(writer, record)
            if progress is not None:
                progress(split.name, epoch, train_config.epochs, record["train_loss"], record["train_acc"],
                         record["utt_per_s"])
    if writer is not None:
        writer.close()

    result = None
    if dist_.main:
        result = _finish_fold(fold, split, data, corpus, model, freeze, state, train_config, autocast)
    _barrier(dist_)
    return result if result is not None else FoldResult.from_json(fold.result())  # other ranks read rank 0's


@dataclass
class _FoldState:
    """What a checkpoint carries besides weights and optimizer: where the fold stands."""

    epoch: int = 0  # the last finished epoch
    history: list = field(default_factory=list)  # one record per finished epoch
    best: dict = field(default_factory=lambda: {"epoch": 0, "val_score": -float("inf")})
    best_weights: dict | None = None  # the model state of the best epoch (select_best)


def _train_epoch(net, optimizer, corpus, split: Split, train_config: TrainConfig, epoch: int,
                 dist_: _Dist, autocast) -> dict:
    """One pass over the training part; every rank takes its slice of each global batch."""
    import torch

    _seed_everything(train_config.seed, split.index, epoch, dist_.rank)  # dropout: a function of the epoch
    net.train()
    lr = optimizer.param_groups[0]["lr"]  # the rate this epoch trains with, before the scheduler steps
    started = time.perf_counter()
    # Sums stay on the device until the epoch ends: a float() per step would stall the GPU every step.
    loss_sum = torch.zeros((), dtype=torch.float64, device=dist_.device)
    correct = torch.zeros((), dtype=torch.int64, device=dist_.device)
    seen = 0.0
    for positions in _batch_order(len(split.train), train_config.batch_size, train_config.seed, split.index, epoch):
        if len(positions) < dist_.world:
            continue  # a last batch smaller than the world cannot give every rank an item: all ranks skip it
        mine = np.array_split(split.train[positions], dist_.world)[dist_.rank]
        kwargs, labels = corpus.batch(mine, dist_.device)
        with autocast:
            out = net(**kwargs, labels=labels)  # logits (B, C); loss: cross-entropy with the model's class weights
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        loss_sum += out.loss.detach().double() * len(mine)
        if out.logits is not None:
            correct += (out.logits.detach().argmax(dim=1) == labels).sum()
        seen += len(mine)
    # float() waits for the last step: the epoch's timing is honest.
    loss_sum, correct, seen = _all_sum([float(loss_sum), float(correct), seen], dist_)
    if not np.isfinite(loss_sum):  # checked before this epoch's checkpoint: the last good one stays
        raise ConfigError(f"training diverged in epoch {epoch} of fold {split.name}: the loss is {loss_sum}; lower "
                          f"--lr (now {lr}), or check the cache for NaN or infinite features (rebuild it with "
                          f"`emocli prepare`)")
    seconds = time.perf_counter() - started
    accuracy = correct / max(seen, 1) if net_predicts_classes(net) else None  # None: a dimensions-only model
    return {"epoch": epoch, "lr": lr, "train_loss": loss_sum / max(seen, 1), "train_acc": accuracy,
            "utt_per_s": seen / max(seconds, 1e-9), "seconds": seconds}


def net_predicts_classes(net) -> bool:
    return getattr(net, "module", net).config.predicts_classes  # DDP wraps the model in .module


def _dimension_stats(data, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std (ddof 0) of the training part's known values; ConfigError without any."""
    if data.dimensions is None or np.isnan(data.dimensions[indices]).all():
        raise ConfigError("the cache has no valence/arousal/dominance values: IEMOCAP gives them in its EmoEvaluation "
                          "lines, a manifest in columns valence,arousal,dominance; add them and rerun `emocli "
                          "prepare`, or train --task classes")
    values = data.dimensions[indices]
    mean = np.nan_to_num(np.nanmean(values, axis=0), nan=0.0)
    std = np.nan_to_num(np.nanstd(values, axis=0), nan=1.0)
    return mean.astype(np.float32), std.astype(np.float32)


def _validation_scores(data, indices: np.ndarray, probs: np.ndarray | None, dims: np.ndarray | None) -> dict:
    """The validation part's scores and `val_score`, the one number the best epoch is chosen by: UA for a
    classifier, mean CCC for a dimensional model, their mean for both."""
    record, parts = {}, []
    if probs is not None:
        y_val, p_val = data.labels[indices], probs.argmax(axis=1)
        record.update(val_acc=metrics.accuracy(y_val, p_val), val_ua=metrics.unweighted_accuracy(y_val, p_val))
        parts.append(record["val_ua"])
    if dims is not None:
        record["val_ccc"] = float(np.mean(list(metrics.ccc_per_dimension(data.dimensions[indices], dims).values())))
        parts.append(record["val_ccc"])
    record["val_score"] = float(np.mean(parts))
    return record


def _finish_fold(fold, split: Split, data, corpus, model, freeze: bool, state: _FoldState,
                 train_config: TrainConfig, autocast) -> FoldResult:
    """Test the chosen epoch's weights on the held-out part; save weights, predictions and scores."""
    tested_epoch = state.epoch
    if train_config.select_best and state.best_weights is not None:
        bundle.load_model_state(model, state.best_weights, freeze, fold.checkpoint_path)
        tested_epoch = state.best["epoch"]
    if not len(split.test):  # the final model: nothing held out, nothing to score
        result = FoldResult(split.name, None, None, None, tested_epoch, len(split.train), len(split.val), 0)
        fold.save_final(bundle.model_state(model, freeze), [], asdict(result))
        return result
    probs, dims, _ = _predict(model, corpus, split.test, train_config.batch_size, autocast)  # (n, C), (n, 3)
    classes = data.meta.classes
    y_true = data.labels[split.test]
    predictions = [{"utt_id": data.utt_ids[i], "true": classes[int(t)]} for i, t in zip(split.test, y_true)]
    scores: dict = {}
    if probs is not None:
        y_pred = probs.argmax(axis=1)
        scores = metrics.scores(y_true, y_pred, classes)
        for row, p, pr in zip(predictions, y_pred, probs):
            row.update(pred=classes[int(p)], probs=[float(x) for x in pr])
    if dims is not None:
        truth = data.dimensions[split.test]
        scores["ccc"] = metrics.ccc_per_dimension(truth, dims)
        for row, t, d in zip(predictions, truth, dims):
            row.update(true_dimensions=[None if np.isnan(x) else float(x) for x in t],
                       dimensions=[float(x) for x in d])
    result = FoldResult(split.name, scores.get("wa"), scores.get("ua"), scores.get("macro_f1"), tested_epoch,
                        len(split.train), len(split.val), len(split.test),
                        float(np.mean(list(scores["ccc"].values()))) if "ccc" in scores else None)
    fold.save_final(bundle.model_state(model, freeze), predictions, {**asdict(result), "scores": scores})
    return result


def _parameter_groups(model, train_config: TrainConfig):
    """All trainable parameters at `lr`; a fine-tuned speech encoder's at `audio_lr` when one is set (one group
    otherwise: the paper's optimizer, unchanged)."""
    encoder = getattr(model.audio, "encoder_parameters", None)
    if encoder is None or not train_config.audio_lr:
        return model.trainable_parameters()
    mine = {id(p) for p in encoder()}
    return [{"params": [p for p in model.trainable_parameters() if id(p) not in mine]},
            {"params": [p for p in model.trainable_parameters() if id(p) in mine], "lr": train_config.audio_lr}]


def _class_weights(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse frequency, normalised so a balanced corpus gets weight 1 everywhere."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    return (counts.sum() / (n_classes * np.maximum(counts, 1))).astype(np.float32)


def _text_embeddings(model, corpus, dist_: _Dist):
    """Every transcript through the frozen encoder, once, reused every epoch and fold: (N, H) pooled, or (N, L, H)
    token states for a sequence fusion (L the longest transcript of the corpus)."""
    import torch

    model.eval()
    out = []
    longest = max(int(corpus.host_text_widths.max()), 1)
    with torch.no_grad():
        for start in range(0, len(corpus), _TEXT_EMBED_BATCH):
            mask = corpus.attention_mask[start:start + _TEXT_EMBED_BATCH]
            width = max(int(mask.sum(dim=1).max()), 1)
            ids = corpus.input_ids[start:start + _TEXT_EMBED_BATCH, :width]
            embeds = model.encode_text(ids.to(dist_.device), mask[:, :width].to(dist_.device)).float()
            if embeds.dim() == 3:  # token states: padded to the corpus's longest transcript
                embeds = torch.nn.functional.pad(embeds, (0, 0, 0, longest - width))
            out.append(embeds)
    model.train()
    return torch.cat(out)  # (N, H) or (N, L, H) on the training device


def _predict(model, corpus, indices: np.ndarray, batch_size: int, autocast
             ) -> tuple[np.ndarray | None, np.ndarray | None, float]:
    """(probabilities (n, C) or None, dimensions (n, 3) or None, mean loss) of `indices` in order, in eval mode."""
    import torch

    from emocli.batch import inference_batch_size

    model.eval()
    probs, dims, loss_sum = [], [], 0.0
    step = inference_batch_size(model, batch_size * _EVAL_BATCH_FACTOR)
    with torch.no_grad():
        for start in range(0, len(indices), step):
            kwargs, labels = corpus.batch(indices[start:start + step], next(model.parameters()).device)
            with autocast:
                out = model(**kwargs, labels=labels)
            loss_sum += float(out.loss) * len(labels)  # the batch mean back to a sum
            if out.logits is not None:
                probs.append(torch.softmax(out.logits.float(), dim=1).cpu())  # (B, C)
            if out.dimensions is not None:
                dims.append(out.dimensions.float().cpu())  # (B, 3)
    model.train()
    joined = [torch.cat(parts).numpy().astype(np.float32) if parts else None for parts in (probs, dims)]
    return joined[0], joined[1], loss_sum / max(len(indices), 1)


def _save_checkpoint(fold, model, optimizer, scheduler, freeze: bool, state: _FoldState, dist_: _Dist) -> None:
    optim_tensors, optim_index = bundle.flatten_optimizer(optimizer.state_dict())
    rng_tensors, rng_state = _rng_state(dist_)
    tensors = {**{f"model.{k}": v for k, v in bundle.model_state(model, freeze).items()}, **optim_tensors,
               **rng_tensors, **{f"best.{k}": v for k, v in (state.best_weights or {}).items()}}
    fold.save_checkpoint(tensors, {"fold": fold.name, "epoch": state.epoch, "optimizer": optim_index,
                                   "scheduler": scheduler.state_dict(), "rng": rng_state, "best": state.best,
                                   "history": state.history})


def _restore(checkpoint: tuple[dict, dict], model, optimizer, scheduler, freeze: bool, fold, dist_: _Dist
             ) -> _FoldState:
    tensors, saved = checkpoint
    strip = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
    bundle.load_model_state(model, strip("model."), freeze, fold.checkpoint_path)
    optimizer.load_state_dict(bundle.unflatten_optimizer(tensors, saved["optimizer"]))
    scheduler.load_state_dict(saved["scheduler"])
    _set_rng_state(tensors, saved["rng"], dist_)
    best = saved["best"]
    if "val_score" not in best:  # a checkpoint from before dimensional models: selected on UA alone
        best = {"epoch": best["epoch"], "val_score": best["val_ua"]}
    return _FoldState(epoch=saved["epoch"], history=saved["history"], best=best,
                      best_weights=strip("best.") or None)


def _tensorboard(fold, resuming: bool):
    from torch.utils.tensorboard import SummaryWriter

    # On resume, purge_step=1 hides every event logged before, and the checkpoint's history is logged again:
    # the curves show exactly the epochs the checkpoint holds, never a doubled-back or missing one.
    return SummaryWriter(log_dir=str(fold.tensorboard_dir), purge_step=1 if resuming else None)


def _log_scalars(writer, record: dict) -> None:
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "val_ua", "val_ccc", "lr", "utt_per_s"):
        if record.get(key) is not None:
            group, _, name = key.partition("_") if key.startswith(("train", "val")) else ("misc", "", key)
            writer.add_scalar(f"{group}/{name}", record[key], record["epoch"])
    writer.flush()


# --------------------------------------------------------------------------------------------- script entry


def _main(argv: list[str] | None = None) -> int:
    """`python -m emocli.train`: a plain entry for torchrun and tests; the user-facing command is `emocli train`."""
    import argparse
    import sys

    from emocli.errors import EmocliError
    from emocli.model import ModelConfig

    parser = argparse.ArgumentParser(prog="python -m emocli.train")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--run-dir", type=Path, required=True)  # not --run: torchrun takes it for --run-path
    parser.add_argument("--model", default="{}", help="ModelConfig as JSON")
    parser.add_argument("--train", default="{}", help="TrainConfig fields as JSON")
    args = parser.parse_args(argv)
    rank0 = int(os.environ.get("RANK", "0")) == 0

    def report(fold: str, epoch: int, epochs: int, loss: float, acc: float, speed: float) -> None:
        print(f"epoch {fold} {epoch}/{epochs} loss {loss:.4f} acc {acc:.4f} {speed:.0f} utt/s", flush=True)

    try:
        model_config = ModelConfig.from_json(json.loads(args.model))
        train_config = TrainConfig.from_json(json.loads(args.train))
        for line in protocol_warnings(train_config):
            if rank0:
                print(f"warning: {line}", file=sys.stderr, flush=True)
        summary = train(args.cache, args.run_dir, model_config, train_config, progress=report)
    except EmocliError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    if rank0:
        print(json.dumps(summary.to_json()), flush=True)
    return 0


if __name__ == "__main__":
    code = _main()
    if code == 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # as emocli.cli.main: skip a teardown that can abort
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    raise SystemExit(code)
