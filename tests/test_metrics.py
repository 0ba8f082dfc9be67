"""The scores against values worked out by hand."""

import numpy as np
import pytest

from emocli import metrics

CLASSES = ("ang", "hap", "sad", "neu")
# true:  ang ang ang hap hap sad sad sad sad neu
# pred:  ang ang hap hap ang sad sad neu sad neu
Y_TRUE = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
Y_PRED = [0, 0, 1, 1, 0, 2, 2, 3, 2, 3]


def test_accuracy_is_fraction_correct():
    assert metrics.accuracy(Y_TRUE, Y_PRED) == pytest.approx(7 / 10)


def test_unweighted_accuracy_is_mean_recall():
    assert metrics.unweighted_accuracy(Y_TRUE, Y_PRED) == pytest.approx((2 / 3 + 1 / 2 + 3 / 4 + 1) / 4)


def test_unweighted_accuracy_ignores_classes_absent_from_truth():
    # Only ang and hap are true; a stray prediction of sad lowers ang's recall and adds no class of its own.
    assert metrics.unweighted_accuracy([0, 0, 1, 1], [0, 2, 1, 1]) == pytest.approx((1 / 2 + 1) / 2)


def test_macro_f1_and_per_class():
    f1 = [2 / 3, 1 / 2, 2 * 0.75 / 1.75, 2 * 0.5 / 1.5]
    assert metrics.macro_f1(Y_TRUE, Y_PRED) == pytest.approx(sum(f1) / 4)
    table = metrics.per_class(Y_TRUE, Y_PRED, CLASSES)
    assert list(table) == list(CLASSES)
    assert table["ang"]["precision"] == pytest.approx(2 / 3) and table["ang"]["recall"] == pytest.approx(2 / 3)
    assert table["sad"]["precision"] == pytest.approx(1.0) and table["sad"]["recall"] == pytest.approx(0.75)
    assert table["neu"]["precision"] == pytest.approx(0.5) and table["neu"]["support"] == 1
    assert [table[c]["f1"] for c in CLASSES] == pytest.approx(f1)


def test_per_class_without_support_is_zero():
    table = metrics.per_class([0, 0], [0, 0], CLASSES)
    assert table["hap"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_confusion_rows_true_columns_predicted_in_percent():
    cm = metrics.confusion_percent(Y_TRUE, Y_PRED, 4)
    expected = np.array([[200 / 3, 100 / 3, 0, 0], [50, 50, 0, 0], [0, 0, 75, 25], [0, 0, 0, 100]])
    np.testing.assert_allclose(cm, expected)
    np.testing.assert_allclose(cm.sum(axis=1), 100.0)


def test_confusion_row_of_absent_class_is_zero():
    cm = metrics.confusion_percent([0, 1], [1, 1], 4)
    np.testing.assert_allclose(cm[0], [0, 100, 0, 0])
    np.testing.assert_allclose(cm[2], 0.0)
    assert cm.shape == (4, 4)


def test_mean_std_and_aggregate():
    assert metrics.mean_std([0.5, 0.7]) == pytest.approx((0.6, 0.1))
    assert metrics.mean_std([]) == (0.0, 0.0)
    agg = metrics.aggregate([{"wa": 0.5, "ua": 0.4, "macro_f1": 0.3}, {"wa": 0.7, "ua": 0.6, "macro_f1": 0.5}])
    assert agg["wa"]["mean"] == pytest.approx(0.6) and agg["ua"]["std"] == pytest.approx(0.1)
    assert agg["macro_f1"]["values"] == [0.3, 0.5]


def test_scores_bundle_everything():
    s = metrics.scores(Y_TRUE, Y_PRED, CLASSES)
    assert set(s) == {"wa", "ua", "macro_f1", "per_class", "confusion_percent", "n"}
    assert s["n"] == 10 and len(s["confusion_percent"]) == 4
    assert s["wa"] == pytest.approx(0.7)


def test_scores_from_saved_predictions():
    rows = [{"utt_id": f"u{i}", "true": CLASSES[t], "pred": CLASSES[p], "probs": [0.25] * 4}
            for i, (t, p) in enumerate(zip(Y_TRUE, Y_PRED))]
    assert metrics.scores_from_predictions(rows, CLASSES) == metrics.scores(Y_TRUE, Y_PRED, CLASSES)
    from emocli.errors import CheckpointError

    with pytest.raises(CheckpointError, match="class 'fru'"):
        metrics.scores_from_predictions([{"true": "fru", "pred": "ang"}], CLASSES)
