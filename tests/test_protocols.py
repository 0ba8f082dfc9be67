"""Speaker-independent protocols for any corpus (leave one speaker out, K folds of speakers) and the final model
of `--protocol all` (with `--like RUN`)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from emocli import bundle
from emocli.errors import ConfigError
from emocli.evaluate import evaluate_run
from emocli.train import TrainConfig, final_settings, make_splits, train
from test_train import make_cache, model_config

CLASSES = ("ang", "hap", "sad", "neu")


def _corpus(n_speakers: int = 8, per_speaker: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n_speakers * per_speaker)
    speakers = [f"spk{i // per_speaker:02d}" for i in range(len(labels))]
    return labels, speakers


def test_leave_one_speaker_out_never_trains_on_the_test_speaker():
    labels, speakers = _corpus()
    sessions = ["unknown"] * len(labels)
    splits = make_splits(labels, sessions, CLASSES, TrainConfig(protocol="loso-speaker"), speakers)
    who = np.asarray(speakers)
    assert [s.name for s in splits] == [f"speaker-spk{i:02d}" for i in range(8)]
    for s in splits:
        held = set(who[s.test])
        assert len(held) == 1 and held.isdisjoint(who[s.train]) and held.isdisjoint(who[s.val])
    assert sorted(np.concatenate([s.test for s in splits]).tolist()) == list(range(len(labels)))


def test_speaker_folds_group_speakers_and_keep_classes_balanced():
    labels, speakers = _corpus(n_speakers=10)
    splits = make_splits(labels, ["unknown"] * len(labels), CLASSES, TrainConfig(protocol="speaker-folds", folds=5),
                         speakers)
    who = np.asarray(speakers)
    assert len(splits) == 5
    assert sorted(np.concatenate([s.test for s in splits]).tolist()) == list(range(len(labels)))
    overall = np.bincount(labels, minlength=4) / len(labels)
    for s in splits:
        assert set(who[s.test]).isdisjoint(who[s.train]) and set(who[s.test]).isdisjoint(who[s.val])
        share = np.bincount(labels[s.test], minlength=4) / len(s.test)
        assert np.abs(share - overall).max() < 0.15  # stratified over groups
    # The inner validation part is carved from the training speakers only, stratified.
    assert all(len(s.val) and set(s.val).isdisjoint(s.test) for s in splits)
    with pytest.raises(ConfigError, match="--folds 11 needs at least 11 speakers"):
        make_splits(labels, ["unknown"] * len(labels), CLASSES, TrainConfig(protocol="speaker-folds", folds=11),
                    speakers)


def test_a_corpus_without_sessions_is_steered_to_a_speaker_protocol():
    labels, speakers = _corpus()
    with pytest.raises(ConfigError, match="loso-speaker or speaker-folds") as caught:
        make_splits(labels, ["unknown"] * len(labels), CLASSES, TrainConfig(protocol="loso"), speakers)
    assert "random" not in str(caught.value).split("; ")[-1]
    with pytest.raises(ConfigError, match="speaker column.*--protocol random"):
        make_splits(labels, ["unknown"] * len(labels), CLASSES, TrainConfig(protocol="loso-speaker"),
                    ["unknown"] * len(labels))


@pytest.fixture(scope="module")
def small_cache(tiny_bert_dir, tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("c") / "cache.h5", tiny_bert_dir, per_class=4)


def test_final_model_like_a_cross_validated_run(small_cache, tiny_bert_dir, tmp_path):
    cv = tmp_path / "cv"
    config = TrainConfig(protocol="loso", epochs=5, batch_size=8, lr=3e-3, val_fraction=0.25)
    summary = train(small_cache, cv, model_config(tiny_bert_dir), config)
    model, settings = final_settings(cv)
    chosen = sorted(f.epoch for f in summary.folds)
    assert settings.protocol == "all" and settings.epochs == int(round(float(np.median(chosen))))
    assert settings.val_fraction == 0 and not settings.select_best and settings.lr == config.lr
    final = tmp_path / "final"
    result = train(small_cache, final, model, settings)
    (fold,) = result.folds
    assert fold.name == "all" and fold.n_test == 0 and fold.ua is None and result.aggregate == {}
    assert fold.n_train == 3 * 4 * 4  # every utterance trains
    run = bundle.open_run(final)
    assert bundle.default_fold(run.config) == "all"
    with pytest.raises(ConfigError, match="final model.*nothing was held out"):
        evaluate_run(final)
    with pytest.raises(ConfigError, match="itself a final model"):
        final_settings(final)
    # The default fold of a cross-validated run is its first; the predictor says which it took.
    from emocli.api import load

    assert load(cv).fold == summary.folds[0].name and load(final).fold == "all"
    # ... and `predict` says so with its results (stdout), not among the problems (stderr).
    import soundfile as sf
    from typer.testing import CliRunner

    from emocli.cli import app

    wav = tmp_path / "clip.wav"
    sf.write(wav, (0.2 * np.sin(np.linspace(0, 3000, 16000))).astype(np.float32), 16000)
    shown = CliRunner().invoke(app, ["predict", str(cv), str(wav), "--asr", "off"])
    assert shown.exit_code == 0 and shown.stderr == "", shown.output
    assert f"predicted by the model of fold {summary.folds[0].name} (one of 3" in shown.stdout
    shown = CliRunner().invoke(app, ["predict", str(final), str(wav), "--asr", "off"])
    assert shown.exit_code == 0 and "predicted by the model of fold" not in shown.stdout


def test_label_counts_per_fold_are_reported_in_the_split_files(small_cache, tiny_bert_dir, tmp_path):
    """Every protocol writes which utterances each fold trained, validated and tested on."""
    run = tmp_path / "run"
    train(small_cache, run, model_config(tiny_bert_dir, modality="audio"),
          TrainConfig(protocol="loso-speaker", epochs=1, batch_size=8, val_fraction=0.25))
    folds = bundle.open_run(run).config.folds
    assert len(folds) == 6 and all(name.startswith("speaker-Ses0") for name in folds)
    tested = Counter(u for name in folds for u in bundle.open_run(run).fold(name).read_split()["test"])
    assert set(tested.values()) == {1} and len(tested) == 48


def test_names_that_would_share_a_fold_folder_are_refused():
    labels = np.tile(np.arange(4), 6)
    speakers = ["spk 1"] * 12 + ["spk_1"] * 12
    with pytest.raises(ConfigError, match="share one folder"):
        make_splits(labels, ["unknown"] * 24, CLASSES, TrainConfig(protocol="loso-speaker"), speakers)


def test_a_run_written_before_folds_existed_still_resumes(small_cache, tiny_bert_dir, tmp_path):
    import json

    run = tmp_path / "run"
    config = TrainConfig(protocol="loso", epochs=1, batch_size=8, val_fraction=0.25)
    train(small_cache, run, model_config(tiny_bert_dir, modality="audio"), config)
    written = json.loads((run / "config.json").read_text())
    del written["train"]["folds"]  # as a2f8a38 wrote it
    (run / "config.json").write_text(json.dumps(written))
    again = train(small_cache, run, model_config(tiny_bert_dir, modality="audio"), config)
    assert all("already finished" in line for line in again.resumed) and len(again.resumed) == 3


def test_compare_leaves_out_a_final_model(small_cache, tiny_bert_dir, tmp_path):
    from typer.testing import CliRunner

    from emocli.cli import app

    cv, final = tmp_path / "cv", tmp_path / "final"
    audio = model_config(tiny_bert_dir, modality="audio")
    train(small_cache, cv, audio, TrainConfig(protocol="loso", epochs=1, batch_size=8, val_fraction=0.25))
    model, settings = final_settings(cv)
    train(small_cache, final, model, settings)
    result = CliRunner().invoke(app, ["compare", str(cv), str(final), "--json"])
    assert result.exit_code == 0, result.output
    assert "a final model (--protocol all)" in result.stderr
    import json

    (row,) = json.loads(result.stdout)
    assert row["run"] == "cv" and row["protocol"] == "loso"
