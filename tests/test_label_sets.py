"""Any label set: IEMOCAP's 4class, 4class-noexc, 6class and all, and a manifest's own classes (any number >= 2),
followed by everything downstream (model head, metrics, predictions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emocli.corpus.iemocap import ReaderConfig, read_iemocap
from emocli.corpus.manifest import read_manifest, resolve_label_set
from emocli.corpus.records import LABEL_SETS, get_label_set
from emocli.errors import ConfigError, CorpusError
from emocli.prepare import resolve_label_set as resolve_for_source
from emocli.synth import SynthConfig, synthesize


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    return Path(synthesize(root / "c", SynthConfig(per_class=6, fmt="dir")).archive)


def test_iemocap_label_sets(corpus, tmp_path):
    counts = {}
    for name in ("4class", "4class-noexc", "6class", "all"):
        report = read_iemocap(corpus, ReaderConfig(label_set=name), tmp_path)
        counts[name] = {c: sum(u.label == c for u in report.utterances) for c in get_label_set(name).classes}
        assert {u.label for u in report.utterances} <= set(get_label_set(name).classes)
    raw = {}
    for u in read_iemocap(corpus, ReaderConfig(label_set="all"), tmp_path).utterances:
        raw[u.raw_label] = raw.get(u.raw_label, 0) + 1
    assert counts["4class"]["hap"] == raw.get("hap", 0) + raw.get("exc", 0)  # excited merged into happy
    assert counts["4class-noexc"]["hap"] == raw.get("hap", 0)
    assert counts["6class"]["exc"] == raw.get("exc", 0) and counts["6class"]["fru"] == raw.get("fru", 0) > 0
    assert LABEL_SETS["6class"].classes == ("ang", "hap", "sad", "neu", "exc", "fru")
    assert "xxx" not in LABEL_SETS["all"].classes and len(LABEL_SETS["all"].classes) == 10
    assert sum(counts["all"].values()) == sum(raw.values())
    with pytest.raises(ConfigError, match="manifest"):
        resolve_for_source(corpus, "manifest")


def _manifest(folder: Path, labels: list[str], extra: str = "", rows_extra: list[str] | None = None) -> Path:
    rate = 16_000
    lines = ["path,label,speaker" + extra]
    for i, label in enumerate(labels):
        wav = folder / f"u{i}.wav"
        sf.write(wav, 0.1 * np.sin(np.linspace(0, 300 * (i + 1), rate)).astype(np.float32), rate)
        lines.append(f"{wav.name},{label},s{i % 3}" + (rows_extra[i] if rows_extra else ""))
    path = folder / "manifest.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_manifest_brings_its_own_classes(tmp_path):
    labels = ["anger", "boredom", "Disgust", "fear", "happiness", "neutral", "sadness"] * 2
    path = _manifest(tmp_path, labels)
    for name in ("auto", "manifest"):
        label_set = resolve_label_set(path, name)
        assert label_set.name == "manifest"
        assert label_set.classes == ("anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness")
    report = read_manifest(path, resolve_label_set(path, "auto"))
    assert len(report.utterances) == 14 and report.utterances[2].label == "disgust"
    # IEMOCAP's own codes and names keep the paper's set (and its excited -> happy merge) under auto ...
    iemocap_like = _manifest(tmp_path, ["angry", "hap", "exc", "sad", "neutral"])
    assert resolve_label_set(iemocap_like, "auto") is LABEL_SETS["4class"]
    # ... but are classes of their own when asked.
    own = resolve_label_set(iemocap_like, "manifest")
    assert own.classes == ("angry", "exc", "hap", "neutral", "sad")
    with pytest.raises(CorpusError, match="at least 2 classes"):
        resolve_label_set(_manifest(tmp_path, ["calm", "calm"]), "auto")


def test_a_manifest_gives_dimensions(tmp_path):
    path = _manifest(tmp_path, ["a", "b", "a"], ",valence,arousal,dominance", [",1,2,3", ",4.5,,0.5", ",x,1,1"])
    report = read_manifest(path, resolve_label_set(path, "auto"))
    assert [u.dimensions for u in report.utterances[:1]] == [(1.0, 2.0, 3.0)]
    assert np.isnan(report.utterances[1].dimensions[1]) and report.utterances[1].dimensions[0] == 4.5
    assert len(report.utterances) == 2 and "valence 'x' is not a number" in report.problems[0]


def test_prepare_and_train_follow_a_seven_class_manifest(tmp_path, tiny_bert_dir):
    from emocli import cache
    from emocli.api import load, model_config_for
    from emocli.features import FeatureConfig
    from emocli.prepare import PrepareConfig, prepare
    from emocli.train import TrainConfig, train

    labels = ["anger", "boredom", "disgust", "fear", "happiness", "neutral", "sadness"] * 3
    path = _manifest(tmp_path, labels)
    result = prepare(path, tmp_path / "c.h5", PrepareConfig(text_model=str(tiny_bert_dir), workers=1,
                                                             features=FeatureConfig(n_mels=64)))
    assert result.summary["classes"] == sorted(set(labels))
    assert cache.read_meta(tmp_path / "c.h5").inputs["label_set"]["name"] == "manifest"
    config = model_config_for(tmp_path / "c.h5", modality="audio", audio_width=0.0625, fusion_hidden=16)
    assert config.n_classes == 7
    train(tmp_path / "c.h5", tmp_path / "run", config,
          TrainConfig(protocol="speaker-folds", folds=3, epochs=1, batch_size=8, val_fraction=0.0,
                      select_best=False))
    model = load(tmp_path / "run")
    assert model.classes == tuple(sorted(set(labels)))
    prediction = model.predict(tmp_path / "u0.wav")
    assert set(prediction.probs) == set(labels) and prediction.label in labels


def test_auto_keeps_iemocap_sets_only_for_iemocap_manifests(tmp_path):
    # Every class of 4class present, extra IEMOCAP codes dropped as IEMOCAP's reader drops them.
    full = _manifest(tmp_path, ["ang", "happy", "sad", "neu", "fru", "xxx"])
    assert resolve_label_set(full, "auto") is LABEL_SETS["4class"]
    assert len(read_manifest(full, LABEL_SETS["4class"]).utterances) == 4
    # A typo in such a manifest is a bad row naming the way to own classes, never a class of its own.
    (tmp_path / "t").mkdir()
    typo = _manifest(tmp_path / "t", ["ang", "hap", "sad", "neu", "angery"])
    assert resolve_label_set(typo, "auto") is LABEL_SETS["4class"]
    report = read_manifest(typo, LABEL_SETS["4class"])
    assert len(report.utterances) == 4 and "unknown label 'angery'" in report.problems[0]
    assert "--labels manifest" in report.problems[0]
    # Only some of the four: the manifest's own two classes, not a 4-class model with empty classes.
    assert resolve_label_set(_manifest(tmp_path, ["angry", "neutral", "angry"]), "auto").classes == ("angry", "neutral")


def test_a_bad_row_brings_no_class(tmp_path):
    path = _manifest(tmp_path, ["ang", "hap", "sad", "neu"])
    with path.open("a") as handle:
        handle.write("u0.wav,world,angry,extra\n")  # one field too many: skipped by the reader, so no class either
    assert resolve_label_set(path, "auto") is LABEL_SETS["4class"]
    assert resolve_label_set(path, "manifest").classes == ("ang", "hap", "neu", "sad")


def test_display_names_stay_one_per_class(tmp_path):
    own = resolve_label_set(_manifest(tmp_path, ["hap", "happy", "sad"]), "manifest")
    assert len(set(own.display.values())) == 3


def test_only_sources_with_dimensions_change_their_fingerprint(tmp_path, tiny_bert_dir):
    from emocli.prepare import PrepareConfig, _cache_inputs

    plain = _manifest(tmp_path, ["a", "b"])
    inputs, _ = _cache_inputs(plain, PrepareConfig(text_model=str(tiny_bert_dir)))
    assert "dimensions" not in inputs["reader"]
    other = tmp_path / "vad"
    other.mkdir()
    with_vad = _manifest(other, ["a", "b"], ",valence", [",1", ",2"])
    inputs, _ = _cache_inputs(with_vad, PrepareConfig(text_model=str(tiny_bert_dir)))
    assert inputs["reader"]["dimensions"] is True
