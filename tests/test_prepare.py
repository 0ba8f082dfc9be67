"""End to end through the real code path: a generated IEMOCAP archive -> reader -> prepare -> cache, and the CLI.

The reader's counts are checked against the generator's own truth, never against the reader itself.
"""

import json
import os
import tarfile

import numpy as np
import pytest
from typer.testing import CliRunner

from emocli import cache
from emocli.cli import app
from emocli.corpus.iemocap import ReaderConfig, read_iemocap
from emocli.features import FeatureConfig
from emocli.prepare import PrepareConfig, prepare
from emocli.synth import SynthConfig, synthesize

runner = CliRunner()
SMALL = FeatureConfig(n_mels=64, max_tokens=16)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return synthesize(out, SynthConfig(per_class=6, seed=3, mean_seconds=0.6))


def _expected_ids(truth, label_set: str) -> set[str]:
    keep = {"ang", "hap", "sad", "neu"} | ({"exc"} if label_set == "4class" else set())
    return {u for u, code in truth.codes.items() if code in keep}


@pytest.mark.parametrize("label_set", ["4class", "4class-noexc"])
def test_reader_matches_generator_truth(corpus, tmp_path, label_set):
    report = read_iemocap(corpus.archive, ReaderConfig(label_set=label_set), tmp_path / "work")
    ids = {u.utt_id for u in report.utterances}
    assert ids == _expected_ids(corpus, label_set)
    merge = label_set == "4class"
    expected = {k: v for k, v in corpus.four_class_counts(merge_exc=merge).items() if v}
    assert report.per_class() == dict(sorted(expected.items()))
    for u in report.utterances:
        assert u.speaker == corpus.speakers[u.utt_id] and u.session == corpus.sessions[u.utt_id]
        assert u.raw_label == corpus.codes[u.utt_id]
        assert u.audio_path.is_file()
        assert " ".join(corpus.texts[u.utt_id].split()).upper() == u.text.upper()
    dropped = sum(1 for c in corpus.codes.values() if c not in ({"ang", "hap", "sad", "neu"} | ({"exc"} if merge else set())))
    assert sum(n for reason, n in report.skipped.items() if reason.startswith("label")) == dropped


def test_all_formats_give_identical_records(corpus, tmp_path):
    base = read_iemocap(corpus.archive, ReaderConfig(), tmp_path / "w0")
    for fmt in ("zip", "dir"):
        other = synthesize(tmp_path / fmt, SynthConfig(per_class=6, seed=3, mean_seconds=0.6, fmt=fmt))
        report = read_iemocap(other.archive, ReaderConfig(), tmp_path / f"w-{fmt}")
        assert [(u.utt_id, u.text, u.label, u.speaker) for u in report.utterances] == \
               [(u.utt_id, u.text, u.label, u.speaker) for u in base.utterances]


def test_prepare_writes_cache_then_hits(corpus, tmp_path, tiny_bert_dir):
    config = PrepareConfig(text_model=str(tiny_bert_dir), features=SMALL)
    path = tmp_path / "c.h5"
    first = prepare(corpus.archive, path, config)
    assert not first.cache_hit and first.summary["utterances"] == len(_expected_ids(corpus, "4class"))
    data = cache.read_cache(path)
    assert set(data.utt_ids) == _expected_ids(corpus, "4class")
    classes = data.meta.classes
    for i, utt in enumerate(data.utt_ids):
        code = corpus.codes[utt]
        assert classes[data.labels[i]] == ("hap" if code == "exc" else code)
        # frames follow the true duration: 1 + floor(samples / hop)
        assert data.spec_lengths[i] == 1 + int(np.floor(corpus.durations[utt] * 16000)) // SMALL.hop_length
    assert data.input_ids.shape == (len(data), 16) and (data.attention_mask.sum(1) >= 2).all()
    assert data.meta.inputs["feature_config"]["n_mels"] == 64
    mtime = path.stat().st_mtime_ns
    second = prepare(corpus.archive, path, config)
    assert second.cache_hit and second.fingerprint == first.fingerprint and path.stat().st_mtime_ns == mtime
    third = prepare(corpus.archive, path, PrepareConfig(text_model=str(tiny_bert_dir),
                                                        features=FeatureConfig(n_mels=16, max_tokens=16)))
    assert not third.cache_hit and third.fingerprint != first.fingerprint
    assert cache.read_cache(path).spec.shape[1] == 16


def test_folder_source_change_rebuilds(corpus, tmp_path, tiny_bert_dir):
    folder = synthesize(tmp_path / "d", SynthConfig(per_class=6, seed=3, mean_seconds=0.6, fmt="dir")).archive
    config = PrepareConfig(text_model=str(tiny_bert_dir), features=SMALL)
    first = prepare(folder, tmp_path / "c.h5", config)
    wav = next(folder.glob("Session1/sentences/wav/*/Ses01*.wav"))
    os.utime(wav, ns=(wav.stat().st_atime_ns, wav.stat().st_mtime_ns + 10**9))
    assert not prepare(folder, tmp_path / "c.h5", config).cache_hit
    assert prepare(folder, tmp_path / "c.h5", config).cache_hit
    assert first.summary["utterances"] > 0


def test_bad_wav_is_skipped_and_counted(tmp_path, tiny_bert_dir):
    truth = synthesize(tmp_path / "d", SynthConfig(per_class=6, seed=4, mean_seconds=0.6, fmt="dir"))
    victim = sorted(_expected_ids(truth, "4class"))[0]
    wav = next(truth.archive.glob(f"Session*/sentences/wav/*/{victim}.wav"))
    wav.write_bytes(b"RIFF garbage that is not a wav")
    result = prepare(truth.archive, tmp_path / "c.h5", PrepareConfig(text_model=str(tiny_bert_dir), features=SMALL))
    assert victim not in cache.read_cache(tmp_path / "c.h5").utt_ids
    assert any(victim in p for p in result.problems)
    assert sum(result.summary["skipped"].values()) >= 1


def test_cli_json_summary_and_hit(corpus, tmp_path, tiny_bert_dir):
    args = ["prepare", str(corpus.archive), "--cache", str(tmp_path / "c.h5"), "--text-model", str(tiny_bert_dir),
            "--n-mels", "64", "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    info = json.loads(first.stdout)
    assert info["cache_hit"] is False and info["utterances"] == len(_expected_ids(corpus, "4class"))
    assert set(info) >= {"per_class", "skipped", "cache", "fingerprint", "per_session"}
    again = json.loads(runner.invoke(app, args).stdout)
    assert again["cache_hit"] is True and again["fingerprint"] == info["fingerprint"]


def test_cli_table_output(corpus, tmp_path, tiny_bert_dir):
    result = runner.invoke(app, ["prepare", str(corpus.archive), "--cache", str(tmp_path / "c.h5"),
                                 "--text-model", str(tiny_bert_dir), "--n-mels", "64"])
    assert result.exit_code == 0, result.output
    assert "cache written" in result.stdout and "Ses05" in result.stdout and "skipped" in result.stdout


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [l for l in result.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_cli_bad_inputs(tmp_path, tiny_bert_dir):
    cache_path = tmp_path / "c.h5"
    common = ["--cache", str(cache_path), "--text-model", str(tiny_bert_dir)]
    assert "does not exist" in _one_error_line(runner.invoke(app, ["prepare", str(tmp_path / "missing.tar.gz"), *common]))
    not_archive = tmp_path / "notes.tar.gz"
    not_archive.write_text("hello")
    assert "notes.tar.gz" in _one_error_line(runner.invoke(app, ["prepare", str(not_archive), *common]))
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    assert "IEMOCAP" in _one_error_line(runner.invoke(app, ["prepare", str(empty), *common]))
    wrong_layout = tmp_path / "wrong.tar.gz"
    with tarfile.open(wrong_layout, "w:gz") as tar:
        f = tmp_path / "x.txt"
        f.write_text("x")
        tar.add(f, arcname="something/else.txt")
    assert "IEMOCAP" in _one_error_line(runner.invoke(app, ["prepare", str(wrong_layout), *common]))
    assert not cache_path.exists()
    bad_model = tmp_path / "not_bert"
    bad_model.mkdir()
    (bad_model / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    assert "BERT" in _one_error_line(runner.invoke(app, ["prepare", str(empty), "--cache", str(cache_path),
                                                         "--text-model", str(bad_model)]))


def test_truncated_archive_leaves_previous_cache(corpus, tmp_path, tiny_bert_dir):
    cache_path = tmp_path / "c.h5"
    prepare(corpus.archive, cache_path, PrepareConfig(text_model=str(tiny_bert_dir), features=SMALL))
    before = cache_path.read_bytes()
    truncated = tmp_path / "IEMOCAP_full_release.tar.gz"
    data = corpus.archive.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    line = _one_error_line(runner.invoke(app, ["prepare", str(truncated), "--cache", str(cache_path),
                                               "--text-model", str(tiny_bert_dir), "--n-mels", "64"]))
    assert "truncated" in line or "corrupt" in line
    assert cache_path.read_bytes() == before
    assert not list(tmp_path.glob(".c.h5.tmp-*"))


def test_default_text_model_is_the_offline_minilm(corpus, tmp_path):
    result = prepare(corpus.archive, tmp_path / "c.h5", PrepareConfig(features=SMALL))
    meta = cache.read_meta(tmp_path / "c.h5")
    assert meta.inputs["tokenizer"]["name"] == "all-MiniLM-L6-v2" and meta.inputs["tokenizer"]["model_type"] == "bert"
    assert result.summary["utterances"] > 0


def test_full_disk_during_write_keeps_previous_cache(corpus, tmp_path, tiny_bert_dir, monkeypatch):
    cache_path = tmp_path / "c.h5"
    config = PrepareConfig(text_model=str(tiny_bert_dir), features=SMALL)
    prepare(corpus.archive, cache_path, config)
    before = cache_path.read_bytes()

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache.CacheWriter, "commit", disk_full)
    line = _one_error_line(runner.invoke(app, ["prepare", str(corpus.archive), "--cache", str(cache_path),
                                               "--text-model", str(tiny_bert_dir), "--n-mels", "80"]))
    assert "No space left on device" in line and "intact" in line
    assert cache_path.read_bytes() == before
    assert not list(tmp_path.glob(".c.h5.tmp-*"))
