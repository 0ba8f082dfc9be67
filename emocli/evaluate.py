"""`emocli eval`: the paper's scores of a trained run, per fold and as mean and std over folds, with plots.

Two sources of predictions:
    evaluate_run       each finished fold's saved predictions on its own held-out test part; no model is loaded,
                       so the numbers are exactly those the trainer saw.
    evaluate_on_cache  each finished fold's model on the WHOLE of another cache (e.g. trained on IEMOCAP, tested
                       on your own recordings prepared with the same settings); refused when that cache's labels,
                       features or tokenizer differ from what the model was trained on.

Dimensional models (valence, arousal, dominance) are scored by Lin's concordance correlation coefficient (CCC)
per dimension, per fold and as mean ± std over folds, with a scatter plot of predicted against true values.

Units: every score in the JSON is a fraction in [0, 1] (wa, ua, macro_f1, precision, recall, f1, ccc); the
confusion matrices say their unit in their key (`confusion_percent`, `confusion_counts`). Standard deviations are
over folds, population (ddof 0). The terminal shows percent for accuracies, and CCC as a number in [-1, 1].

Per-class scores and confusion rows are averaged over the folds that hold the class: a leave-one-session-out
fold without any "sad" utterance says nothing about how sad is recognised, and a zero row would drag the mean.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from emocli import bundle, cache, metrics
from emocli.atomic import write_bytes_atomic
from emocli.errors import CacheError, CheckpointError, ConfigError

HELD_OUT = "held-out test parts"
_PLOT_DPI = 120
_SCALARS = ("wa", "ua", "macro_f1")
_PER_CLASS = ("precision", "recall", "f1")


# --------------------------------------------------------------------------------------------- scores


@dataclass(frozen=True)
class FoldScores:
    """One fold's scores; per-class dicts and matrices in the run's class order (rows true, columns predicted)."""

    name: str
    n: int
    wa: float  # accuracy: correct / all
    ua: float  # mean per-class recall over the classes present (balanced accuracy)
    macro_f1: float
    precision: dict[str, float]
    recall: dict[str, float]
    f1: dict[str, float]
    support: dict[str, int]  # true utterances per class
    confusion: list[list[float]]  # (C, C) percent of each true class
    counts: list[list[int]]  # (C, C) utterances

    @classmethod
    def from_labels(cls, name: str, y_true, y_pred, classes: Sequence[str]) -> "FoldScores":
        from sklearn.metrics import confusion_matrix

        per_class = metrics.per_class(y_true, y_pred, classes)
        counts = confusion_matrix(y_true, y_pred, labels=list(range(len(classes))))  # (C, C)
        return cls(name=name, n=int(len(y_true)), wa=metrics.accuracy(y_true, y_pred),
                   ua=metrics.unweighted_accuracy(y_true, y_pred), macro_f1=metrics.macro_f1(y_true, y_pred),
                   precision={c: s["precision"] for c, s in per_class.items()},
                   recall={c: s["recall"] for c, s in per_class.items()},
                   f1={c: s["f1"] for c, s in per_class.items()},
                   support={c: s["support"] for c, s in per_class.items()},
                   confusion=metrics.confusion_percent(y_true, y_pred, len(classes)).tolist(),
                   counts=counts.astype(int).tolist())

    def to_json(self) -> dict:
        return {"name": self.name, "n": self.n, "wa": self.wa, "ua": self.ua, "macro_f1": self.macro_f1,
                "precision": self.precision, "recall": self.recall, "f1": self.f1, "support": self.support,
                "confusion_percent": self.confusion, "confusion_counts": self.counts}


def aggregate_folds(folds: Sequence[FoldScores], classes: Sequence[str]) -> tuple[dict, dict]:
    """(mean, std) over folds, population std (ddof 0) as `metrics.mean_std`.

    Each holds wa, ua, macro_f1, {precision, recall, f1}: {class: value}, and confusion: (C, C) percent. A class's
    scores and confusion row are taken over the folds whose test part holds that class (0 where none does).
    """
    mean: dict = {}
    std: dict = {}
    for key in _SCALARS:
        mean[key], std[key] = metrics.mean_std([getattr(f, key) for f in folds])
    for key in _PER_CLASS:
        mean[key], std[key] = {}, {}
        for c in classes:
            mean[key][c], std[key][c] = metrics.mean_std([getattr(f, key)[c] for f in folds if f.support[c] > 0])
    rows_mean, rows_std = [], []
    for i, c in enumerate(classes):
        rows = np.asarray([f.confusion[i] for f in folds if f.support[c] > 0], dtype=np.float64)  # (k, C)
        rows_mean.append(rows.mean(axis=0).tolist() if len(rows) else [0.0] * len(classes))
        rows_std.append(rows.std(axis=0).tolist() if len(rows) else [0.0] * len(classes))
    mean["confusion"], std["confusion"] = rows_mean, rows_std
    return mean, std


@dataclass
class EvalReport:
    run_dir: Path
    classes: tuple[str, ...]
    display: dict[str, str]  # class -> human name (angry, happy, sad, neutral)
    source: str  # HELD_OUT, or "cache <path> (whole corpus)"
    folds: list[FoldScores]
    mean: dict  # see aggregate_folds
    std: dict
    cache: Path | None = None  # the other cache, for evaluate_on_cache
    unfinished: list[str] = field(default_factory=list)  # folds left out because they have not finished
    # For a cache whose texts were recognised (prepare --transcripts asr): the recogniser's word error rate against
    # the gold transcripts, and the scores the same models reach reading the gold transcripts instead.
    transcripts: dict | None = None
    # Dimensional models: {"per_fold": {fold: {dim: ccc}}, "mean": {dim: ccc}, "std": {dim: ccc}}, else None;
    # `pairs`: (true (N, 3), predicted (N, 3)) pooled over folds, for the scatter plot (not in the JSON).
    dimensions: dict | None = None
    pairs: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def has_classes(self) -> bool:
        return bool(self.folds)

    @property
    def display_names(self) -> list[str]:
        return [self.display.get(c, c) for c in self.classes]

    def to_json(self) -> dict:
        return {"run_dir": str(self.run_dir), "source": self.source,
                "cache": str(self.cache) if self.cache is not None else None,
                "classes": list(self.classes), "display": self.display_names,
                "mean": self.mean, "std": self.std, "folds": [f.to_json() for f in self.folds],
                "unfinished": list(self.unfinished), "transcripts": self.transcripts,
                "dimensions": self.dimensions,
                "units": {"scores": "fraction 0-1", "ccc": "-1..1", "std": "population (ddof 0) over folds"}}


def _report(run: bundle.Run, source: str, folds: list[FoldScores], unfinished: list[str],
            cache_path: Path | None = None, dimensions: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
            ) -> EvalReport:
    classes = run.config.classes
    mean, std = aggregate_folds(folds, classes) if folds else ({}, {})
    report = EvalReport(run_dir=run.path, classes=classes, display=dict(run.config.label_set.display),
                        source=source, folds=folds, mean=mean, std=std, cache=cache_path, unfinished=unfinished)
    if dimensions:
        per_fold = {name: metrics.ccc_per_dimension(truth, pred) for name, (truth, pred) in dimensions.items()}
        names = list(next(iter(per_fold.values())))
        spread = {d: metrics.mean_std([scores[d] for scores in per_fold.values()]) for d in names}
        report.dimensions = {"per_fold": per_fold, "mean": {d: m for d, (m, _) in spread.items()},
                             "std": {d: sd for d, (_, sd) in spread.items()}}
        report.pairs = (np.concatenate([t for t, _ in dimensions.values()]),
                        np.concatenate([p for _, p in dimensions.values()]))
    return report


def _finished_folds(run: bundle.Run) -> tuple[list[str], list[str]]:
    """(finished, unfinished) fold names in the run's order; CheckpointError when none has finished."""
    finished = [name for name in run.config.folds if run.fold(name).result() is not None]
    if not finished:
        raise CheckpointError(f"run {run.path} has no finished fold; train it first with "
                              f"`emocli train --run {run.path}`")
    return finished, [name for name in run.config.folds if name not in finished]


# --------------------------------------------------------------------------------------------- held-out parts


def evaluate_run(run_dir: Path) -> EvalReport:
    """Scores of every finished fold on its own held-out test part, from its saved predictions (no model)."""
    run = bundle.open_run(Path(run_dir))
    finished, unfinished = _finished_folds(run)
    classes = run.config.classes
    index = {c: i for i, c in enumerate(classes)}
    if run.config.train.get("protocol") == "all":
        raise ConfigError(f"{run.path} is a final model (--protocol all): nothing was held out to score it on; "
                          f"score it on other data with `emocli eval {run.path} --cache OTHER.h5`, or evaluate the "
                          f"cross-validated run it was made --like")
    model = run.config.model
    folds, dimensions = [], {}
    for name in finished:
        rows = run.fold(name).read_predictions()
        try:
            if model.predicts_classes:
                y_true = [index[r["true"]] for r in rows]
                y_pred = [index[r["pred"]] for r in rows]
                folds.append(FoldScores.from_labels(name, y_true, y_pred, classes))
            if model.predicts_dimensions:
                dimensions[name] = (np.asarray([[np.nan if v is None else v for v in r["true_dimensions"]]
                                                for r in rows], dtype=np.float64).reshape(-1, 3),
                                    np.asarray([r["dimensions"] for r in rows], dtype=np.float64).reshape(-1, 3))
        except KeyError as exc:
            raise CheckpointError(f"fold {name} of {run.path}: a prediction names {exc.args[0]!r}, which is not "
                                  f"a class of the run ({', '.join(classes)}) nor one of its fields; the fold is "
                                  f"damaged — retrain it") from None
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"fold {name} of {run.path}: its dimensional predictions are malformed ({exc}); "
                                  f"the fold is damaged — retrain it") from None
    return _report(run, HELD_OUT, folds, unfinished, dimensions=dimensions)


# --------------------------------------------------------------------------------------------- another cache


def predict_cache(model, data: cache.CacheData, batch_size: int = 64, device="cpu", stage=None) -> np.ndarray:
    """(N, C) float32 class probabilities of every utterance of `data`, in cache order."""
    return predict_cache_outputs(model, data, batch_size, device, stage)[0]


def predict_cache_outputs(model, data: cache.CacheData, batch_size: int = 64, device="cpu", stage=None
                          ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """((N, C) float32 class probabilities or None, (N, 3) valence/arousal/dominance or None) of every utterance
    of `data`, in cache order, for whichever the model predicts.

    Utterances are batched by length so little is padded; the model is padding-invariant, so the batching does
    not change the numbers. `stage`: the embedding stage of `data` for a frames model.
    """
    import torch

    from emocli.batch import inference_batch_size, inputs_from_cache

    config = model.config
    batch_size = inference_batch_size(model, batch_size)
    inputs = inputs_from_cache(data, config, stage, labels=False)
    lengths = inputs.audio.host_lengths if inputs.audio is not None else inputs.host_text_widths
    order = np.argsort(lengths, kind="stable")
    probs = np.zeros((len(data), config.n_classes), dtype=np.float32) if config.predicts_classes else None
    dims = np.zeros((len(data), 3), dtype=np.float32) if config.predicts_dimensions else None
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            idx = order[start:start + batch_size]
            kwargs, _ = inputs.batch(idx, torch.device(device))
            out = model(**kwargs)
            if probs is not None:
                probs[idx] = torch.softmax(out.logits.float(), dim=-1).cpu().numpy()  # (B, C)
            if dims is not None:
                dims[idx] = out.dimensions.float().cpu().numpy()  # (B, 3)
    return probs, dims


def evaluate_on_cache(run_dir: Path, cache_path: Path, device: str = "auto", batch_size: int = 64) -> EvalReport:
    """Scores of every finished fold's model on the whole of another cache."""
    from emocli.batch import resolve_device

    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, not {batch_size}")
    run = bundle.open_run(Path(run_dir))
    finished, unfinished = _finished_folds(run)
    cache_path = Path(cache_path)
    from emocli.compat import check_cache_fits

    inputs = cache.read_meta(cache_path).typed_inputs(cache_path)
    check_cache_fits(inputs, run.config.model, cache_path, run=run.config)  # before reading gigabytes
    data = cache.read_cache(cache_path)
    if not len(data):
        raise CacheError(f"cache {cache_path} holds no utterance; nothing to evaluate")
    torch_device = resolve_device(device)
    from emocli.encoders import feature_source

    stage, source = None, feature_source(run.config.model)
    if source is not None:  # the same pinned encoder the run was trained on
        from emocli.embed import ensure_stage

        stage = ensure_stage(cache_path, source, data, device=torch_device.type)
    predicts = run.config.model
    if predicts.predicts_dimensions and not predicts.predicts_classes and data.dimensions is None:
        raise CacheError(f"cache {cache_path} has no valence/arousal/dominance values to score this dimensional "
                         f"model on; prepare a corpus that has them")
    folds, gold_folds, gold, dimensions = [], [], None, {}
    recognised = data.gold_texts is not None and run.config.model.uses_text
    for name in finished:
        model, _, tokenizer = bundle.load_model(run.path, name, str(torch_device))
        if model.text is not None:
            from emocli.compat import check_token_ids

            check_token_ids(data.input_ids, model.text.vocab_size, cache_path)
        probs, dims = predict_cache_outputs(model, data, batch_size, torch_device, stage)  # (N, C), (N, 3)
        if dims is not None and data.dimensions is not None:
            dimensions[name] = (data.dimensions.astype(np.float64), dims.astype(np.float64))
        if probs is None:
            del model
            continue
        folds.append(FoldScores.from_labels(name, data.labels, probs.argmax(axis=1), run.config.classes))
        if recognised:
            if gold is None:  # every fold reads with the run's one tokenizer: tokenised once
                gold = _with_gold_texts(data, tokenizer, run.config.features.max_tokens)
            probs = predict_cache(model, gold, batch_size, torch_device, stage)
            gold_folds.append(FoldScores.from_labels(name, data.labels, probs.argmax(axis=1), run.config.classes))
        del model
    report = _report(run, f"cache {cache_path} (whole corpus)", folds, unfinished, cache_path, dimensions)
    if data.gold_texts is not None:
        from emocli.asr import corpus_wer

        report.transcripts = {"source": "asr", "recogniser": data.meta.inputs.get("transcripts", {}),
                              "wer": corpus_wer(data.gold_texts, data.texts)}
        if gold_folds:
            gold_mean, gold_std = aggregate_folds(gold_folds, run.config.classes)
            report.transcripts["with_gold"] = {k: {"mean": gold_mean[k], "std": gold_std[k]} for k in _SCALARS}
    return report


def _with_gold_texts(data: cache.CacheData, tokenizer, max_tokens: int) -> cache.CacheData:
    """The cache as it would be with the corpus's own transcripts, tokenised as prepare does."""
    import dataclasses

    from emocli.features import tokenize

    ids, mask = tokenize(tokenizer, list(data.gold_texts), max_tokens)
    return dataclasses.replace(data, input_ids=ids, attention_mask=mask, texts=list(data.gold_texts))


# --------------------------------------------------------------------------------------------- files


def report_paths(report: EvalReport, run_dir: Path) -> dict[str, Path]:
    """Where `save_report` writes (the run directory's layout is bundle's); another cache's report is named by it."""
    return bundle.open_run(Path(run_dir)).report_paths(report.cache.stem if report.cache is not None else None)


def save_report(report: EvalReport, run_dir: Path) -> list[Path]:
    """Write the report's JSON, its mean confusion matrix and the run's training curves; the paths written."""
    paths = report_paths(report, run_dir)
    # Everything is rendered first (the plots take most of the time) and written after, in one quick sequence:
    # an interruption while rendering leaves the previous report whole, never new metrics beside old plots.
    files = {paths["metrics"]: (json.dumps(report.to_json(), indent=2) + "\n").encode()}
    if report.has_classes:
        files[paths["confusion"]] = _png(_confusion_figure(report))
    if report.pairs is not None:
        files[paths["scatter"]] = _png(_scatter_figure(report))
    run = bundle.open_run(Path(run_dir))
    names = [f.name for f in report.folds] or list((report.dimensions or {}).get("per_fold", {}))
    histories = {name: run.fold(name).read_metrics() for name in names}
    tested = {name: (run.fold(name).result() or {}).get("epoch") for name in names}
    if any(histories.values()):
        files[paths["curves"]] = _png(_curves_figure(histories, tested))
    for path, data in files.items():
        write_bytes_atomic(path, data)
    return list(files)


def _png(figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)  # Agg, without pyplot: no global backend, no window
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_PLOT_DPI, bbox_inches="tight")
    return buffer.getvalue()


def _confusion_figure(report: EvalReport):
    """The mean confusion matrix in percent, laid out as the paper's table: rows true, columns predicted."""
    from matplotlib.figure import Figure

    names = report.display_names
    mean = np.asarray(report.mean["confusion"])  # (C, C)
    std = np.asarray(report.std["confusion"])  # (C, C)
    size = 1.4 + 1.1 * len(names)
    figure = Figure(figsize=(size + 1.2, size))
    ax = figure.add_subplot()
    image = ax.imshow(mean, cmap="Blues", vmin=0.0, vmax=100.0)
    figure.colorbar(image, ax=ax, label="% of true class")
    many = len(report.folds) > 1
    for i in range(len(names)):
        for j in range(len(names)):
            text = f"{mean[i, j]:.1f}" + (f"\n±{std[i, j]:.1f}" if many else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    color="white" if mean[i, j] > 50.0 else "black")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    folds = f"mean of {len(report.folds)} folds" if many else report.folds[0].name
    ax.set_title(f"WA {100 * report.mean['wa']:.1f} %  UA {100 * report.mean['ua']:.1f} %  ({folds})\n"
                 f"{report.source}", fontsize=9)
    return figure


def _curves_figure(histories: dict[str, list[dict]], tested: dict[str, int | None] | None = None):
    """Loss and scores per epoch, train solid and validation dashed, one colour per fold; a dot marks the epoch
    whose weights were tested (the best on validation, or the last)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    tested = tested or {}
    panels = [("loss", "loss (cross-entropy; + 1 - CCC for dimensions)", 1.0),
              ("acc", "accuracy, %", 100.0)]
    if any("val_ccc" in r for records in histories.values() for r in records):
        panels.append(("ccc", "CCC, mean of valence/arousal/dominance", 1.0))
    figure = Figure(figsize=(5.5 * len(panels), 4))
    axes = figure.subplots(1, len(panels))
    for k, (name, records) in enumerate(histories.items()):
        colour = f"C{k % 10}"
        by_epoch = {r["epoch"]: r for r in records}
        for ax, (metric, _, scale) in zip(axes, panels):
            for part, style in (("train", "-"), ("val", "--")):
                key = f"{part}_{metric}"
                points = [(e, scale * r[key]) for e, r in by_epoch.items() if r.get(key) is not None]
                if points:
                    ax.plot(*zip(*points), style, color=colour, label=f"{name} {part}")
            chosen = by_epoch.get(tested.get(name))
            key = f"val_{metric}" if chosen is not None and chosen.get(f"val_{metric}") is not None \
                else f"train_{metric}"
            if chosen is not None and chosen.get(key) is not None:
                ax.plot([chosen["epoch"]], [scale * chosen[key]], "o", color=colour, markersize=7,
                        markerfacecolor="none")
    for ax, (_, label, _) in zip(axes, panels):
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper right")
    figure.suptitle("training curves (solid: train, dashed: validation; circle: the epoch tested)", fontsize=10)
    return figure


def _scatter_figure(report: EvalReport):
    """Predicted against true valence, arousal and dominance, every held-out utterance of every fold."""
    from matplotlib.figure import Figure

    from emocli.corpus.records import DIMENSIONS

    truth, pred = report.pairs
    figure = Figure(figsize=(13, 4.4))
    for k, (ax, name) in enumerate(zip(figure.subplots(1, 3), DIMENSIONS)):
        known = ~np.isnan(truth[:, k])
        ax.scatter(truth[known, k], pred[known, k], s=8, alpha=0.5)
        if known.any():
            low = float(min(truth[known, k].min(), pred[known, k].min()))
            high = float(max(truth[known, k].max(), pred[known, k].max()))
            ax.plot([low, high], [low, high], "k--", linewidth=0.8)  # perfect agreement
        mean, std = report.dimensions["mean"][name], report.dimensions["std"][name]
        ax.set_title(f"{name}: CCC {mean:.3f} ± {std:.3f}", fontsize=10)
        ax.set_xlabel(f"true {name}")
        ax.set_ylabel(f"predicted {name}")
        ax.grid(alpha=0.3)
    figure.suptitle(f"{report.run_dir.name}: {report.source}", fontsize=10)
    return figure
