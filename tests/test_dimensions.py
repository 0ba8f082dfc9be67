"""Dimensional emotion: valence/arousal/dominance from the readers into the cache, the CCC metric, training with
--task dimensions or both, eval's CCC report and scatter plot, and predict's three values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from emocli import cache, metrics
from emocli.errors import ConfigError
from emocli.evaluate import evaluate_run, save_report
from emocli.model import concordance
from emocli.train import TrainConfig, train
from test_train import VAD, make_cache, model_config

FAST = TrainConfig(protocol="loso", epochs=12, batch_size=8, lr=3e-3, step_size=30, val_fraction=0.2)


def test_ccc_matches_its_definition_and_the_torch_loss():
    rng = np.random.default_rng(0)
    truth = rng.normal(3, 1, 200)
    assert metrics.ccc(truth, truth) == pytest.approx(1.0)
    assert metrics.ccc(truth, -truth + 6) == pytest.approx(-1.0, abs=0.05)
    # A constant offset keeps Pearson's r at 1 but costs concordance: (mean difference)^2 in the denominator.
    shifted = metrics.ccc(truth, truth + 1.0)
    var = truth.var()
    assert shifted == pytest.approx(2 * var / (2 * var + 1.0))
    pred = truth + rng.normal(0, 0.5, 200)
    both = np.stack([truth, truth * 2], axis=1)
    guess = np.stack([pred, pred * 2 + 0.3], axis=1)
    torch_ccc = concordance(torch.tensor(guess), torch.tensor(both)).numpy()
    np.testing.assert_allclose(torch_ccc, [metrics.ccc(both[:, k], guess[:, k]) for k in range(2)], atol=1e-6)
    # Unknown truths (NaN) are left out, in both implementations.
    holes = truth.copy()
    holes[:50] = np.nan
    assert metrics.ccc(holes, pred) == pytest.approx(metrics.ccc(truth[50:], pred[50:]))
    value = concordance(torch.tensor(pred)[:, None], torch.tensor(holes)[:, None])
    assert float(value) == pytest.approx(metrics.ccc(truth[50:], pred[50:]), abs=1e-6)


@pytest.fixture(scope="module")
def vad_cache(tiny_bert_dir, tmp_path_factory) -> Path:
    return make_cache(tmp_path_factory.mktemp("vad") / "cache.h5", tiny_bert_dir, per_class=6, dimensions=True)


def test_cache_keeps_the_dimensions(vad_cache):
    data = cache.read_cache(vad_cache)
    assert data.dimensions.shape == (len(data), 3)
    angry = np.asarray([cls == 0 for cls in data.labels])
    assert np.allclose(data.dimensions[angry].mean(axis=0), VAD["ang"], atol=0.3)


def test_dimensions_task_learns_and_is_scored_by_ccc(vad_cache, tiny_bert_dir, tmp_path):
    run = tmp_path / "run"
    summary = train(vad_cache, run, model_config(tiny_bert_dir, modality="audio", task="dimensions"), FAST)
    assert set(summary.aggregate) == {"ccc"} and all(f.ua is None for f in summary.folds)
    # Class-dependent values from class-dependent spectra: clearly learnt, speaker-independently.
    assert summary.aggregate["ccc"]["mean"] > 0.5
    report = evaluate_run(run)
    assert not report.has_classes and set(report.dimensions["mean"]) == {"valence", "arousal", "dominance"}
    fold = next(iter(report.dimensions["per_fold"]))
    rows = [json.loads(line) for line in (run / "folds" / fold / "predictions.jsonl").read_text().splitlines()]
    assert len(rows[0]["dimensions"]) == 3 and "pred" not in rows[0]
    written = save_report(report, run)
    assert run / "dimensions.png" in written and run / "confusion.png" not in written
    assert json.loads((run / "metrics.json").read_text())["dimensions"]["mean"]["arousal"] > 0.3

    from emocli.bundle import load_model

    model, _, _ = load_model(run)
    assert model.head is None and model.dimension_head is not None
    out = model(audio=torch.zeros(2, 50, 64))
    assert out.logits is None and out.dimensions.shape == (2, 3)


def test_both_tasks_at_once(vad_cache, tiny_bert_dir, tmp_path):
    run = tmp_path / "run"
    summary = train(vad_cache, run, model_config(tiny_bert_dir, task="both"), FAST)
    assert {"ua", "ccc"} <= set(summary.aggregate)
    report = evaluate_run(run)
    assert report.has_classes and report.dimensions is not None
    history = [json.loads(line) for line in (run / "folds" / summary.folds[0].name / "metrics.jsonl").open()]
    assert all("val_ccc" in r and "val_ua" in r for r in history)


def test_dimensions_without_values_is_one_clear_error(tiny_bert_dir, tmp_path):
    plain = make_cache(tmp_path / "plain.h5", tiny_bert_dir)
    with pytest.raises(ConfigError, match="no valence/arousal/dominance values"):
        train(plain, tmp_path / "run", model_config(tiny_bert_dir, task="dimensions"), FAST)
    assert not (tmp_path / "run").exists()  # refused before the run folder is made


def test_iemocap_reader_keeps_each_summary_lines_vad(tmp_path):
    from emocli.corpus.iemocap import ReaderConfig, parse_emo_evaluation, read_iemocap
    from emocli.synth import SynthConfig, synthesize

    truth = synthesize(tmp_path / "c", SynthConfig(per_class=3, fmt="dir"))
    root = Path(truth.archive)
    report = read_iemocap(root, ReaderConfig(label_set="all"), tmp_path / "work")
    expected = {}
    for label_file in root.glob("Session*/dialog/EmoEvaluation/*.txt"):
        entries, _ = parse_emo_evaluation(label_file.read_text(encoding="utf-8", errors="replace"), label_file.name)
        expected.update({e.utt_id: (e.v, e.a, e.d) for e in entries})
    assert report.utterances and all(u.dimensions == expected[u.utt_id] for u in report.utterances)
    # The generator's values follow its emotions: angry utterances are more aroused and less positive than sad...
    by = {c: np.mean([u.dimensions for u in report.utterances if u.label == c], axis=0)
          for c in ("ang", "sad", "hap")}
    assert by["ang"][1] > by["sad"][1] and by["hap"][0] > by["ang"][0]


def test_predict_gives_the_three_values(vad_cache, tiny_bert_dir, tmp_path):
    import emocli

    run = tmp_path / "run"
    train(vad_cache, run, model_config(tiny_bert_dir, modality="audio", task="both"),
          TrainConfig(protocol="loso", epochs=1, batch_size=8, val_fraction=0.2))
    model = emocli.load(run)
    assert model.dimensions == ("valence", "arousal", "dominance") and len(model.classes) == 4
    wave = 0.2 * np.sin(np.linspace(0, 2000, 16000)).astype(np.float32)
    p = model.predict(wave, sample_rate=16000)
    assert set(p.dimensions) == {"valence", "arousal", "dominance"} and p.label in model.classes
    row = p.to_json()
    assert {"valence", "arousal", "dominance", "p_angry"} <= set(row)


def test_training_curves_mark_the_tested_epoch_on_whole_epochs():
    from matplotlib.ticker import MaxNLocator

    from emocli.evaluate import _curves_figure

    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "train_acc": 0.1 * e, "val_acc": 0.09 * e,
                "val_ccc": 0.1 * e} for e in range(1, 6)]
    figure = _curves_figure({"fold-a": history}, {"fold-a": 3})
    axes = figure.axes
    assert len(axes) == 3  # loss, accuracy, CCC
    for ax in axes:
        marked = [line for line in ax.get_lines() if line.get_marker() == "o"]
        assert len(marked) == 1 and list(marked[0].get_xdata()) == [3]
        assert isinstance(ax.xaxis.get_major_locator(), MaxNLocator)
        assert all(float(t).is_integer() for t in ax.get_xticks())
    accuracy = [line for line in axes[1].get_lines() if line.get_marker() == "o"][0]
    assert list(accuracy.get_ydata()) == pytest.approx([100 * 0.09 * 3])  # percent, the validation value


def test_predict_command_writes_the_three_values(vad_cache, tiny_bert_dir, tmp_path):
    import csv

    import soundfile as sf
    from typer.testing import CliRunner

    from emocli.cli import app

    run = tmp_path / "run"
    train(vad_cache, run, model_config(tiny_bert_dir, modality="audio", task="dimensions"),
          TrainConfig(protocol="loso", epochs=1, batch_size=8, val_fraction=0.2))
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(3):
        sf.write(folder / f"c{k}.wav", (0.2 * np.sin(np.linspace(0, 900 * (k + 1), 16000))).astype(np.float32), 16000)
    out = tmp_path / "p.csv"
    result = CliRunner().invoke(app, ["predict", str(run), str(folder), "--output", str(out), "--asr", "off"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.open(newline="")))
    assert len(rows) == 3
    assert all(np.isfinite(float(r[d])) for r in rows for d in ("valence", "arousal", "dominance"))
    assert {"valence", "arousal", "dominance"} <= set(rows[0]) and not any(k.startswith("p_") for k in rows[0])
    assert rows[0]["label"] == ""
    assert "valence" in result.stdout  # the table shows the values
