"""`emocli eval` on tiny runs: scores against hand-computed values and scikit-learn, aggregation over folds, the
files it writes, inference on a whole other cache, and its refusals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from emocli import bundle, cache
from emocli.corpus.records import LabelSet, Utterance
from emocli.errors import CheckpointError, ConfigError, EmocliError
from emocli.evaluate import (HELD_OUT, EvalReport, FoldScores, aggregate_folds, evaluate_on_cache, evaluate_run,
                             predict_cache, save_report)
from emocli.train import TrainConfig, train
from test_train import make_cache, model_config

CLASSES = ("ang", "hap", "sad", "neu")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Two folds of two epochs: enough for curves with two points per fold.
TINY_TRAIN = TrainConfig(repeats=2, epochs=2, batch_size=8, lr=3e-3)


@pytest.fixture(scope="module")
def tiny_cache(tiny_bert_dir, tmp_path_factory) -> Path:
    return make_cache(tmp_path_factory.mktemp("cache") / "cache.h5", tiny_bert_dir)


@pytest.fixture(scope="module")
def tiny_run(tiny_cache, tiny_bert_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("eval") / "run"
    train(tiny_cache, run_dir, model_config(tiny_bert_dir), TINY_TRAIN)
    return run_dir


def copy_cache(source: Path, target: Path, inputs: dict | None = None, keep=None, relabel=None) -> Path:
    """`source` rewritten through CacheWriter with other metadata: `inputs` overrides its recorded inputs,
    `keep(label)` selects utterances and `relabel(label)` gives their new label index."""
    data = cache.read_cache(source)
    writer = cache.CacheWriter(target, data.spec.shape[1], data.input_ids.shape[1])
    for i in range(len(data)):
        label = int(data.labels[i])
        if keep is not None and not keep(label):
            continue
        utt = Utterance(data.utt_ids[i], Path(data.audio_paths[i]), data.texts[i], data.raw_labels[i],
                        data.raw_labels[i], data.speakers[i], data.sessions[i])
        writer.append(utt, relabel(label) if relabel else label, data.spectrogram(i), data.input_ids[i],
                      data.attention_mask[i], float(data.durations[i]))
    writer.commit({**data.meta.inputs, **(inputs or {})}, {"utterances": len(writer)})
    return target


def hand_run(tmp_path: Path, reference: Path, folds: dict[str, list[tuple[str, str]]]) -> Path:
    """A run with the reference's config whose folds in `folds` are finished with these (true, pred) pairs."""
    config = bundle.open_run(reference).config
    run = bundle.create_or_open_run(tmp_path / "hand", config)
    for name, pairs in folds.items():
        rows = [{"utt_id": f"u{k}", "true": t, "pred": p, "probs": [0.25] * 4} for k, (t, p) in enumerate(pairs)]
        run.fold(name).save_final({}, rows, {"name": name})
    return run.path


# Fold random-0: ang 2/3 right (one as hap), hap 2/2, sad 1/2 (one as neu), neu 2/3 (one as ang).
FOLD_0 = [("ang", "ang"), ("ang", "ang"), ("ang", "hap"), ("hap", "hap"), ("hap", "hap"), ("sad", "sad"),
          ("sad", "neu"), ("neu", "neu"), ("neu", "neu"), ("neu", "ang")]
# Fold random-1: every answer right, and no sad utterance at all (as a leave-one-session-out fold may be).
FOLD_1 = [("ang", "ang"), ("hap", "hap"), ("neu", "neu")]


# --------------------------------------------------------------------------------------------- hand-computed


def test_fold_scores_match_hand_computed_values(tiny_run, tmp_path):
    report = evaluate_run(hand_run(tmp_path, tiny_run, {"random-0": FOLD_0}))
    assert report.unfinished == ["random-1"] and report.source == HELD_OUT
    (fold,) = report.folds
    assert fold.name == "random-0" and fold.n == 10
    assert fold.wa == pytest.approx(0.7)
    assert fold.ua == pytest.approx((2 / 3 + 1 + 1 / 2 + 2 / 3) / 4)
    assert fold.macro_f1 == pytest.approx((2 / 3 + 0.8 + 2 / 3 + 2 / 3) / 4)  # hap: P 2/3, R 1 -> F1 0.8
    assert fold.precision == pytest.approx({"ang": 2 / 3, "hap": 2 / 3, "sad": 1.0, "neu": 2 / 3})
    assert fold.recall == pytest.approx({"ang": 2 / 3, "hap": 1.0, "sad": 0.5, "neu": 2 / 3})
    assert fold.counts == [[2, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1], [1, 0, 0, 2]]
    np.testing.assert_allclose(fold.confusion, [[200 / 3, 100 / 3, 0, 0], [0, 100, 0, 0], [0, 0, 50, 50],
                                                [100 / 3, 0, 0, 200 / 3]])
    # a single fold: the mean is the fold, the std zero
    assert report.mean["wa"] == fold.wa and report.std["wa"] == 0.0
    assert report.display == {"ang": "angry", "hap": "happy", "sad": "sad", "neu": "neutral"}


def test_mean_and_std_over_folds(tiny_run, tmp_path):
    report = evaluate_run(hand_run(tmp_path, tiny_run, {"random-0": FOLD_0, "random-1": FOLD_1}))
    assert [f.name for f in report.folds] == ["random-0", "random-1"] and not report.unfinished
    assert report.folds[1].wa == report.folds[1].ua == report.folds[1].macro_f1 == 1.0
    assert report.mean["wa"] == pytest.approx(0.85) and report.std["wa"] == pytest.approx(0.15)  # ddof 0
    ua0 = (2 / 3 + 1 + 1 / 2 + 2 / 3) / 4
    assert report.mean["ua"] == pytest.approx((ua0 + 1) / 2) and report.std["ua"] == pytest.approx((1 - ua0) / 2)
    assert report.mean["recall"]["ang"] == pytest.approx(5 / 6) and report.std["recall"]["ang"] == pytest.approx(1 / 6)
    # sad is only in fold 0: its scores and its row come from fold 0 alone, not halved by fold 1's absence
    assert report.mean["recall"]["sad"] == pytest.approx(0.5) and report.std["recall"]["sad"] == 0.0
    assert report.mean["precision"]["sad"] == pytest.approx(1.0)
    mean = np.asarray(report.mean["confusion"])
    np.testing.assert_allclose(mean, [[250 / 3, 50 / 3, 0, 0], [0, 100, 0, 0], [0, 0, 50, 50], [50 / 3, 0, 0, 250 / 3]])
    np.testing.assert_allclose(mean.sum(axis=1), 100.0)
    np.testing.assert_allclose(report.std["confusion"][0], [50 / 3, 50 / 3, 0, 0])


def test_aggregate_of_a_class_no_fold_holds_is_zero():
    folds = [FoldScores.from_labels("a", [0, 1], [0, 1], ("x", "y", "z"))]
    mean, std = aggregate_folds(folds, ("x", "y", "z"))
    assert mean["recall"]["z"] == 0.0 and mean["confusion"][2] == [0.0, 0.0, 0.0]
    assert mean["confusion"][0] == [100.0, 0.0, 0.0] and std["confusion"][0] == [0.0, 0.0, 0.0]


# --------------------------------------------------------------------------------------------- a trained run


def test_trained_run_scores_equal_sklearn_on_its_predictions(tiny_run):
    report = evaluate_run(tiny_run)
    run = bundle.open_run(tiny_run)
    assert [f.name for f in report.folds] == list(run.config.folds) and report.classes == CLASSES
    for fold in report.folds:
        rows = run.fold(fold.name).read_predictions()
        y_true, y_pred = [r["true"] for r in rows], [r["pred"] for r in rows]
        assert fold.n == len(rows) == 6
        assert fold.wa == pytest.approx(accuracy_score(y_true, y_pred))
        assert fold.ua == pytest.approx(balanced_accuracy_score(y_true, y_pred))
        assert fold.macro_f1 == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
        result = run.fold(fold.name).result()
        assert (fold.wa, fold.ua, fold.macro_f1) == pytest.approx((result["wa"], result["ua"], result["macro_f1"]))
        np.testing.assert_allclose(np.sum(fold.confusion, axis=1), 100.0)
        assert np.sum(fold.counts) == fold.n
    assert report.mean["wa"] == pytest.approx(np.mean([f.wa for f in report.folds]))
    assert report.std["ua"] == pytest.approx(np.std([f.ua for f in report.folds]))


def test_save_report_writes_json_and_pngs(tiny_run, tiny_cache):
    report = evaluate_run(tiny_run)
    written = save_report(report, tiny_run)
    names = sorted(p.name for p in written)
    assert names == ["confusion.png", "metrics.json", "training-curves.png"]
    saved = json.loads((tiny_run / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(report.to_json()))
    assert saved["classes"] == list(CLASSES) and saved["display"] == ["angry", "happy", "sad", "neutral"]
    assert saved["mean"]["wa"] == pytest.approx(report.mean["wa"]) and "ua" in saved["std"]
    assert [f["name"] for f in saved["folds"]] == ["random-0", "random-1"]
    assert len(saved["folds"][0]["confusion_percent"]) == 4
    for path in written:
        data = path.read_bytes()
        if path.suffix == ".png":
            assert len(data) > len(PNG_MAGIC) and data.startswith(PNG_MAGIC), path
    assert not list(tiny_run.glob(".*.tmp-*"))  # no temporary left behind

    # a report on another cache gets its own names and leaves the held-out one alone
    other = evaluate_on_cache(tiny_run, tiny_cache, device="cpu")
    before = (tiny_run / "metrics.json").read_bytes()
    written = save_report(other, tiny_run)
    assert sorted(p.name for p in written) == ["confusion-cache.png", "metrics-cache.json", "training-curves.png"]
    assert (tiny_run / "metrics.json").read_bytes() == before
    assert json.loads((tiny_run / "metrics-cache.json").read_text())["cache"] == str(tiny_cache)
    assert (tiny_run / "confusion-cache.png").read_bytes().startswith(PNG_MAGIC)


# --------------------------------------------------------------------------------------------- another cache


def test_evaluate_on_the_whole_training_cache(tiny_run, tiny_cache):
    data = cache.read_cache(tiny_cache)
    report = evaluate_on_cache(tiny_run, tiny_cache, device="cpu", batch_size=16)
    assert isinstance(report, EvalReport) and report.cache == tiny_cache and "whole corpus" in report.source
    assert [f.n for f in report.folds] == [len(data)] * 2
    assert [sum(f.support.values()) for f in report.folds] == [len(data)] * 2
    for fold in report.folds:
        np.testing.assert_allclose(np.sum(fold.confusion, axis=1), 100.0)

    # the same probabilities as the trainer saved for the held-out part, whatever the batch size
    run = bundle.open_run(tiny_run)
    model, _, _ = bundle.load_model(tiny_run, "random-1")
    probs = predict_cache(model, data, batch_size=7)  # (N, C)
    np.testing.assert_allclose(predict_cache(model, data, batch_size=64), probs, atol=1e-5)
    index = {u: i for i, u in enumerate(data.utt_ids)}
    saved = run.fold("random-1").read_predictions()
    np.testing.assert_allclose(probs[[index[r["utt_id"]] for r in saved]], [r["probs"] for r in saved], atol=1e-5)
    assert report.folds[1].wa == pytest.approx(np.mean(probs.argmax(axis=1) == data.labels))


def test_audio_only_run_ignores_the_tokenizer(tiny_cache, tiny_bert_dir, tmp_path):
    run_dir = tmp_path / "audio"
    one_fold = dataclasses.replace(TINY_TRAIN, repeats=1)
    train(tiny_cache, run_dir, model_config(tiny_bert_dir, modality="audio"), one_fold)
    tokenizer = {**cache.read_meta(tiny_cache).inputs["tokenizer"], "identity": "another tokenizer"}
    other = copy_cache(tiny_cache, tmp_path / "other.h5", {"tokenizer": tokenizer})
    report = evaluate_on_cache(run_dir, other, device="cpu")
    assert report.folds[0].n == len(cache.read_cache(tiny_cache))


def _mismatch(tiny_cache, tmp_path, **kwargs) -> Path:
    return copy_cache(tiny_cache, tmp_path / "other.h5", **kwargs)


@pytest.mark.parametrize("classes", [("neu", "ang", "hap", "sad"), ("ang", "hap", "sad")])
def test_label_set_mismatch_is_refused(tiny_run, tiny_cache, tmp_path, classes):
    label_set = LabelSet("other", classes, {c: c for c in classes}, {c: c for c in classes})
    keep = (lambda label: CLASSES[label] in classes)
    relabel = (lambda label: classes.index(CLASSES[label]))
    other = _mismatch(tiny_cache, tmp_path, inputs={"label_set": label_set.to_json()}, keep=keep, relabel=relabel)
    with pytest.raises(ConfigError) as err:
        evaluate_on_cache(tiny_run, other, device="cpu")
    message = str(err.value)
    assert message.startswith(f"label-set mismatch: run has ang, hap, sad, neu, cache {other} has {', '.join(classes)}")
    assert "\n" not in message


def test_feature_mismatch_is_refused(tiny_run, tiny_cache, tmp_path):
    features = {**cache.read_meta(tiny_cache).inputs["feature_config"], "hop_length": 200, "n_mels": 80}
    other = _mismatch(tiny_cache, tmp_path, inputs={"feature_config": features})
    with pytest.raises(ConfigError, match=r"^feature mismatch: .*hop_length 160 vs 200.*n_mels 64 vs 80.*"
                                          r"re-run `emocli prepare` with the run's settings \(--n-mels 64\)$"):
        evaluate_on_cache(tiny_run, other, device="cpu")


def test_selection_only_feature_settings_are_not_a_mismatch(tiny_run, tiny_cache, tmp_path):
    features = {**cache.read_meta(tiny_cache).inputs["feature_config"], "min_seconds": 0.3}
    other = _mismatch(tiny_cache, tmp_path, inputs={"feature_config": features}, keep=lambda label: label != 0)
    report = evaluate_on_cache(tiny_run, other, device="cpu")
    assert report.folds[0].support["ang"] == 0 and report.folds[0].n == len(cache.read_cache(other))


def test_tokenizer_mismatch_is_refused_for_a_text_model(tiny_run, tiny_cache, tmp_path):
    tokenizer = {**cache.read_meta(tiny_cache).inputs["tokenizer"], "name": "other-bert", "identity": "xyz"}
    other = _mismatch(tiny_cache, tmp_path, inputs={"tokenizer": tokenizer})
    with pytest.raises(ConfigError, match=r"^tokenizer mismatch: .*'other-bert'.*emocli prepare --text-model"):
        evaluate_on_cache(tiny_run, other, device="cpu")


# --------------------------------------------------------------------------------------------- refusals


def test_run_without_finished_fold_is_refused(tiny_run, tiny_cache, tmp_path):
    empty = bundle.create_or_open_run(tmp_path / "empty", bundle.open_run(tiny_run).config).path
    for call in (lambda: evaluate_run(empty), lambda: evaluate_on_cache(empty, tiny_cache, device="cpu")):
        with pytest.raises(CheckpointError, match="has no finished fold; train it first"):
            call()


def test_missing_or_foreign_run_dir_is_refused(tiny_cache, tmp_path):
    with pytest.raises(CheckpointError, match="no run at"):
        evaluate_run(tmp_path / "nowhere")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError):
        evaluate_run(tmp_path / "foreign")
    with pytest.raises(EmocliError):
        evaluate_on_cache(tmp_path / "nowhere", tiny_cache)


def test_missing_cache_and_bad_options_are_refused(tiny_run, tmp_path):
    with pytest.raises(EmocliError, match="no cache at"):
        evaluate_on_cache(tiny_run, tmp_path / "none.h5", device="cpu")
    with pytest.raises(ConfigError, match="batch size"):
        evaluate_on_cache(tiny_run, tmp_path / "none.h5", batch_size=0)
