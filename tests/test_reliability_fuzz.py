"""Every reader of user files, fed anything (hypothesis): it returns records or raises a clean emocli error (an
EmocliError subclass that the CLI turns into one line), never any other exception.

Covered: IEMOCAP EmoEvaluation and transcription files (parsers and the whole folder reader), manifest CSV/TSV
files, predict's --transcripts file (also through the CLI), audio file bytes, and a run's config.json.
"""

from __future__ import annotations

import copy
import io
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corpus_fixtures import TEXT_FILES, build_corpus, write_wav
from emocli import bundle
from emocli.corpus.iemocap import (UTT_ID_RE, ReaderConfig, decode_text, parse_emo_evaluation, parse_transcription,
                                   read_iemocap)
from emocli.corpus.manifest import read_manifest
from emocli.corpus.records import LABEL_SETS
from emocli.errors import AudioError, CorpusError, EmocliError
from emocli.evaluate import evaluate_run
from emocli.features import FeatureConfig, audio_features
from emocli.predict import collect_inputs, read_transcripts
from test_bundle import finished_run, run_config
from test_reliability_common import assert_refused, cli, tone

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.data_too_large])
FEW = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Pieces of the real formats, so generated files get past the first line and into the deep paths.
LABEL_LINES = [
    "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]",
    "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]",
    "[10.0100 - 11.3925]\tSes01F_impro01_F001\texc\t[3.5000, 3.0000, 3.0000]",
    "[1.0 - 2.0]\tSes01F_impro01_F000\tang\t[1.0, 1.0, 1.0]",  # a duplicate id
    "[1.0 - 2.0]\tSes09X_bogus_Q1\tneu\t[1.0, 1.0, 1.0]",
    "[20.0000 - 22.5000]\tSes01F_impro01_M002\thap\t[9e999, -0, nan]",
    "C-E2:\tNeutral;\t()", "A-E3:\tval 3; act 2; dom  2;\t()", "[", "[]", "Ses01F_impro01_F000",
]
TRANSCRIPT_LINES = [
    "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.",
    "Ses01F_impro01_F001 [010.0100-011.3925]: Yeah.  [laughter] Sure.",
    "Ses01F_impro01_F001 [010.0100-011.3925]: again",  # a duplicate line
    "Ses01F_impro01_FXX0 [018.1000-018.9000]: Hmm.", "M: sorry", "Ses01F_impro01_F000 [bad]: x",
    "Ses01F_impro01_M002 [020.0000-022.5000]:", "Ses01F_impro01_M002 [020-022]: [GARBAGE]\t\t\x00",
]


def _text_file(pieces: list[str]) -> st.SearchStrategy[bytes]:
    """Raw bytes, or real lines mixed with any text, joined by any line ending, in utf-8 or latin-1, maybe a BOM."""
    line = st.one_of(st.sampled_from(pieces), st.text(max_size=60))
    structured = st.tuples(st.lists(line, max_size=12), st.sampled_from(["\n", "\r\n", "\r", "\t"]),
                           st.sampled_from(["utf-8", "latin-1", "utf-16"]), st.booleans())
    return st.one_of(st.binary(max_size=400), structured.map(
        lambda t: (b"\xef\xbb\xbf" if t[3] else b"") + t[1].join(t[0]).encode(t[2], errors="replace")))


# --------------------------------------------------------------------------------------------- IEMOCAP text files


@FUZZ
@given(data=_text_file(LABEL_LINES + TRANSCRIPT_LINES))
def test_parsers_never_raise_and_return_only_well_formed_entries(data):
    text = decode_text(data)
    entries, problems = parse_emo_evaluation(text, "f.txt")
    assert all(isinstance(e.utt_id, str) and len(e.code) == 3 and isinstance(e.v, float) for e in entries)
    texts, more = parse_transcription(text, "f.txt")
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in texts.items())
    assert all(isinstance(p, str) and "\n" not in p for p in problems + more)  # one line per problem


@pytest.fixture(scope="module")
def iemocap_folder(tmp_path_factory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("fuzz-corpus"))


LABEL_FILE = "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
TRANSCRIPT_FILE = "Session1/dialog/transcriptions/Ses01F_impro01.txt"


@FEW
@given(labels=_text_file(LABEL_LINES), transcript=_text_file(TRANSCRIPT_LINES))
def test_any_bytes_as_label_and_transcript_files_give_records_or_a_corpus_error(iemocap_folder, labels, transcript):
    (iemocap_folder / LABEL_FILE).write_bytes(labels)
    (iemocap_folder / TRANSCRIPT_FILE).write_bytes(transcript)
    try:
        report = read_iemocap(iemocap_folder, ReaderConfig(), iemocap_folder.parent / "unused-work")
    except CorpusError:
        return
    finally:
        (iemocap_folder / LABEL_FILE).write_text(TEXT_FILES[LABEL_FILE])
        (iemocap_folder / TRANSCRIPT_FILE).write_text(TEXT_FILES[TRANSCRIPT_FILE])
    for u in report.utterances:
        assert UTT_ID_RE.match(u.utt_id) and u.audio_path.is_file() and u.label in ("ang", "hap", "sad", "neu")
    assert len({u.utt_id for u in report.utterances}) == len(report.utterances)


# --------------------------------------------------------------------------------------------- manifests


@pytest.fixture(scope="module")
def manifest_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-manifest")
    for name in ("a", "b", "c"):
        write_wav(folder / "wavs" / f"{name}.wav")
    (folder / "wavs" / "empty.wav").write_bytes(b"")
    (folder / "wavs" / "dir.wav").mkdir()
    return folder


MANIFEST_PATHS = ["wavs/a.wav", "wavs/b.wav", "./wavs/c.wav", "wavs/missing.wav", "wavs/empty.wav", "wavs/dir.wav",
                  "wavs", "/", "/etc/passwd", "wavs/a.wav\x00x", "x" * 300, "/".join(["y" * 200] * 30),
                  "../../wavs/a.wav", "~/a.wav", "", " "]
MANIFEST_LABELS = ["ang", "hap", "exc", "Happy", "NEU", "sad", "fru", "xxx", "bored", "", "\x00"]
MANIFEST_OTHERS = ["path", "text", "label", "speaker", "session", "id", '"', '""', "a,b", "a\tb", "\r", "\u2028",
                   "Ses01", "wavs/a"]
HEADERS = [["path", "text", "label"], ["id", "path", "text", "label", "speaker", "session"], ["path", "label"],
           ["Path", " TEXT ", "label", "label"]]


@st.composite
def _manifest(draw) -> bytes:
    """Raw bytes; or a header and rows, most of them as wide as the header with a path and a label where the
    header names them, any field possibly hostile."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=300))
    anything = st.one_of(st.sampled_from(MANIFEST_PATHS + MANIFEST_LABELS + MANIFEST_OTHERS), st.text(max_size=20))
    by_column = {"path": st.sampled_from(MANIFEST_PATHS), "label": st.sampled_from(MANIFEST_LABELS)}
    header = draw(st.sampled_from(HEADERS))
    rows = []
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.booleans()):
            rows.append([draw(by_column.get(name.strip().lower(), anything)) for name in header])
        else:
            rows.append(draw(st.lists(anything, max_size=7)))
    delimiter, ending = draw(st.sampled_from([",", "\t", ";"])), draw(st.sampled_from(["\n", "\r\n", "\r"]))
    return ending.join(delimiter.join(r) for r in [header, *rows]).encode("utf-8", errors="replace")


@FUZZ
@given(data=_manifest(), suffix=st.sampled_from([".csv", ".tsv"]))
def test_any_bytes_as_a_manifest_give_records_or_a_corpus_error(manifest_folder, data, suffix):
    path = manifest_folder / f"m{suffix}"
    path.write_bytes(data)
    try:
        report = read_manifest(path, LABEL_SETS["4class"])
    except CorpusError:
        return
    assert report.utterances
    for u in report.utterances:
        assert u.audio_path.is_file() and u.audio_path.stat().st_size > 0 and u.label in ("ang", "hap", "sad", "neu")
    assert all("\n" not in p for p in report.problems)


@settings(max_examples=15, deadline=None)
@given(data=_manifest())
def test_any_manifest_through_the_cli_is_refused_in_one_line_or_prepared(manifest_folder, tiny_bert_dir, data):
    path = manifest_folder / "cli.csv"
    path.write_bytes(data)
    result = cli("prepare", path, "--cache", manifest_folder / "out" / "c.h5", "--text-model", tiny_bert_dir,
                 "--n-mels", 64, "--workers", 1, "--json")
    if result.exit_code != 0:
        assert_refused(result)  # the reader's error, or "no usable audio": the fixtures' wavs are 0.05 s long


# --------------------------------------------------------------------------------------------- predict --transcripts


TRANSCRIPT_FIELDS = ["id", "text", "a", "b", "sub/c", "sub/c.wav", "./a", "a.wav", "c", "missing", "../a", "/abs",
                     "a\\b", "", " ", '"', "x,y", "a\tb", "\x00", "x" * 300, "hello, world"]


def _transcripts() -> st.SearchStrategy[bytes]:
    row = st.lists(st.one_of(st.sampled_from(TRANSCRIPT_FIELDS), st.text(max_size=15)), max_size=4)
    table = st.tuples(st.sampled_from([["id", "text"], ["text", "id", "x"], ["name", "words"], ["id"]]),
                      st.lists(row, max_size=6), st.sampled_from([",", "\t"]), st.sampled_from(["\n", "\r\n"]))
    return st.one_of(st.binary(max_size=300), table.map(
        lambda t: t[3].join(t[2].join(r) for r in [t[0], *t[1]]).encode("utf-8", errors="replace")))


@pytest.fixture(scope="module")
def predict_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-predict")
    for name in ("a.wav", "b.wav", "sub/c.wav", "sub/a.wav"):
        write_wav(folder / "in" / name)
    return folder


@FUZZ
@given(data=_transcripts(), suffix=st.sampled_from([".csv", ".tsv", ".txt"]))
def test_any_bytes_as_a_transcripts_file_give_a_table_or_a_corpus_error(predict_folder, data, suffix):
    path = predict_folder / f"t{suffix}"
    path.write_bytes(data)
    try:
        table = read_transcripts(path)
    except CorpusError:
        return
    assert all(isinstance(k, str) and k and isinstance(v, str) for k, v in table.items())
    try:
        items = collect_inputs(predict_folder / "in", transcripts=path)
    except EmocliError:
        return
    assert sorted(i.id for i in items) == ["a.wav", "b.wav", "sub/a.wav", "sub/c.wav"]


@FEW
@given(data=_transcripts())
def test_any_transcripts_file_through_the_cli_is_one_line(predict_folder, data):
    """No run exists, so even a good table ends in one line (the missing run); a bad one is refused first."""
    path = predict_folder / "cli.csv"
    path.write_bytes(data)
    result = cli("predict", predict_folder / "no-run", predict_folder / "in", "--transcripts", path)
    assert_refused(result)


# --------------------------------------------------------------------------------------------- audio bytes


def _encoded(fmt: str, subtype: str, channels: int = 1, rate: int = 16_000) -> bytes:
    buffer = io.BytesIO()
    y = tone(0.4, rate)
    sf.write(buffer, np.stack([y] * channels, axis=1) if channels > 1 else y, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def audio_seeds() -> list[bytes]:
    seeds = [_encoded("WAV", "PCM_16"), _encoded("WAV", "FLOAT"), _encoded("WAV", "PCM_24"), _encoded("WAV", "PCM_U8"),
             _encoded("WAV", "PCM_16", channels=2, rate=44_100), _encoded("FLAC", "PCM_16"), _encoded("WAV", "ULAW")]
    if "MP3" in sf.available_formats():
        seeds.append(_encoded("MP3", "MPEG_LAYER_III"))
    # Float files beyond full scale: +inf and -inf apart in two channels; 3e38 samples to resample from 44.1 kHz.
    for samples, rate in ((np.stack([tone(0.4), tone(0.4)], axis=1), 16_000), (tone(0.4, 44_100) * 1e38, 44_100)):
        if samples.ndim == 2:
            samples[100] = (np.inf, -np.inf)
        buffer = io.BytesIO()
        sf.write(buffer, samples, rate, format="WAV", subtype="FLOAT")
        seeds.append(buffer.getvalue())
    return seeds


@FUZZ
@given(seed=st.integers(0, 9), edits=st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), max_size=8),
       cut=st.one_of(st.none(), st.integers(0, 20_000)))
def test_any_audio_bytes_give_finite_features_or_an_audio_error(audio_seeds, tmp_path_factory, seed, edits, cut):
    """Header fields mangled (rates, channel counts, sizes, formats) or the file cut short: a finite log-mel, or
    AudioError; and no RuntimeWarning, which the CLI would print as extra lines."""
    data = bytearray(audio_seeds[seed % len(audio_seeds)])
    for position, value in edits:
        data[position % len(data)] = value
    path = tmp_path_factory.getbasetemp() / "fuzz.wav"
    path.write_bytes(bytes(data[:cut]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        try:
            spec, seconds = audio_features(path, FeatureConfig(n_mels=64))
        except AudioError:
            return
    assert np.isfinite(spec).all() and spec.shape[0] == 64 and 0.1 <= seconds <= 15.0


# --------------------------------------------------------------------------------------------- a run's config.json


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz-run") / "run"
    finished_run(folder, run_config())
    return folder


def _paths(value, prefix=()):
    if prefix:
        yield prefix
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _paths(inner, prefix + (key,))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from _paths(inner, prefix + (index,))


JSON_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=8),
                        st.sampled_from([2**63, "../x", "random-0", [], {}, [1], {"a": 1}]))


@FEW
@given(data=st.data())
def test_a_mangled_run_config_is_read_or_refused_with_a_checkpoint_error(run_dir, tmp_path_factory, data):
    """Any field of config.json replaced or removed (the model's own fields aside: their ranges are ModelConfig's
    to check): the run opens, evaluates and loads, or is refused with a CheckpointError or ConfigError."""
    original = json.loads((run_dir / "config.json").read_text())
    config = copy.deepcopy(original)
    paths = [p for p in _paths(original) if p[0] != "model" or len(p) == 1]
    for path in data.draw(st.lists(st.sampled_from(paths), min_size=1, max_size=3)):
        parent = config
        try:
            for key in path[:-1]:
                parent = parent[key]
            if isinstance(parent, dict) and data.draw(st.booleans()):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = data.draw(JSON_VALUES)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier edit removed or replaced this path's parent
    copy_dir = tmp_path_factory.getbasetemp() / "fuzz-run-copy"
    shutil.rmtree(copy_dir, ignore_errors=True)
    shutil.copytree(run_dir, copy_dir)
    (copy_dir / "config.json").write_text(json.dumps(config))
    for action in (lambda: bundle.open_run(copy_dir), lambda: evaluate_run(copy_dir),
                   lambda: bundle.load_model(copy_dir)):
        try:
            action()
        except EmocliError:
            pass
