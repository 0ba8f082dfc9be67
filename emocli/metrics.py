"""The paper's scores, from scikit-learn: small pure functions over integer labels in label-set class order.

WA (weighted accuracy) is plain accuracy; UA (unweighted accuracy) is the mean of per-class recalls, i.e.
scikit-learn's balanced accuracy, over the classes present in `y_true`. Every function takes `n_classes` (or the
class names) where the answer depends on which classes exist, so a class absent from one fold still gets its
row and column.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np


def _arrays(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    assert y_true.shape == y_pred.shape and y_true.ndim == 1, "y_true and y_pred must be 1-D of equal length"
    return y_true, y_pred


def accuracy(y_true, y_pred) -> float:
    """WA: the fraction of utterances classified correctly."""
    from sklearn.metrics import accuracy_score

    y_true, y_pred = _arrays(y_true, y_pred)
    return float(accuracy_score(y_true, y_pred)) if y_true.size else 0.0


def unweighted_accuracy(y_true, y_pred) -> float:
    """UA: the mean per-class recall over the classes present in `y_true` (= balanced accuracy)."""
    from sklearn.metrics import balanced_accuracy_score

    y_true, y_pred = _arrays(y_true, y_pred)
    if not y_true.size:
        return 0.0
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" is expected and harmless here
        warnings.simplefilter("ignore")
        return float(balanced_accuracy_score(y_true, y_pred))


def macro_f1(y_true, y_pred) -> float:
    """The unweighted mean of per-class F1 over the classes seen in `y_true` or `y_pred` (scikit-learn's default)."""
    from sklearn.metrics import f1_score

    y_true, y_pred = _arrays(y_true, y_pred)
    if not y_true.size:
        return 0.0
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def per_class(y_true, y_pred, classes: Sequence[str]) -> dict[str, dict[str, float]]:
    """{class: {precision, recall, f1, support}} in class order; 0.0 where a score is undefined (no support)."""
    from sklearn.metrics import precision_recall_fscore_support

    y_true, y_pred = _arrays(y_true, y_pred)
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels,
                                                                     zero_division=0)
    return {name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])} for i, name in enumerate(classes)}


def confusion_percent(y_true, y_pred, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) float64: rows true, columns predicted, each row in percent of its true class.

    A class with no utterance in `y_true` gets a row of zeros.
    """
    from sklearn.metrics import confusion_matrix

    y_true, y_pred = _arrays(y_true, y_pred)
    counts = confusion_matrix(y_true, y_pred, labels=list(range(n_classes))).astype(np.float64)  # (C, C)
    totals = counts.sum(axis=1, keepdims=True)  # (C, 1)
    return np.divide(counts * 100.0, totals, out=np.zeros_like(counts), where=totals > 0)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and population standard deviation (ddof=0) over folds or repeats; (0, 0) for none."""
    arr = np.asarray(list(values), dtype=np.float64)
    if not arr.size:
        return 0.0, 0.0
    return float(arr.mean()), float(arr.std())


def scores(y_true, y_pred, classes: Sequence[str]) -> dict:
    """Every score of one fold: wa, ua, macro_f1, per_class, confusion_percent (nested lists)."""
    return {
        "wa": accuracy(y_true, y_pred),
        "ua": unweighted_accuracy(y_true, y_pred),
        "macro_f1": macro_f1(y_true, y_pred),
        "per_class": per_class(y_true, y_pred, classes),
        "confusion_percent": confusion_percent(y_true, y_pred, len(classes)).round(4).tolist(),
        "n": int(len(y_true)),
    }


def aggregate(fold_scores: Sequence[dict], keys: Sequence[str] = ("wa", "ua", "macro_f1")) -> dict[str, dict]:
    """{key: {mean, std, values}} over folds, for the scalar scores named in `keys` (std: population, ddof 0)."""
    out = {}
    for key in keys:
        values = [float(s[key]) for s in fold_scores]
        mean, std = mean_std(values)
        out[key] = {"mean": mean, "std": std, "values": values}
    return out


def scores_from_predictions(rows: Sequence[dict], classes: Sequence[str]) -> dict:
    """`scores` recomputed from a fold's saved predictions (rows with "true" and "pred" class names), as
    `emocli eval` does without retraining."""
    index = {name: i for i, name in enumerate(classes)}
    try:
        y_true = [index[r["true"]] for r in rows]
        y_pred = [index[r["pred"]] for r in rows]
    except KeyError as exc:
        from emocli.errors import CheckpointError

        raise CheckpointError(f"a prediction names class {exc.args[0]!r}, which is not one of {', '.join(classes)}; "
                              f"the predictions do not belong to this run") from None
    return scores(y_true, y_pred, classes)


def ccc(truth, pred) -> float:
    """Lin's concordance correlation coefficient (population moments) over the pairs whose truth is known;
    0.0 for fewer than two such pairs."""
    truth, pred = np.asarray(truth, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    known = ~np.isnan(truth)
    truth, pred = truth[known], pred[known]
    if truth.size < 2:
        return 0.0
    cov = np.mean((truth - truth.mean()) * (pred - pred.mean()))
    denominator = truth.var() + pred.var() + (truth.mean() - pred.mean()) ** 2
    return float(2 * cov / denominator) if denominator > 0 else 0.0


def ccc_per_dimension(truth, pred) -> dict[str, float]:
    """{valence, arousal, dominance: CCC} of (N, 3) true and predicted values (NaN truth: left out)."""
    from emocli.corpus.records import DIMENSIONS

    truth, pred = np.asarray(truth, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    return {name: ccc(truth[:, k], pred[:, k]) for k, name in enumerate(DIMENSIONS)}
