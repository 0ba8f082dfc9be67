"""Manifests: CSV and TSV, label spellings, bad rows skipped by line number, unusable files refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from corpus_fixtures import write_file, write_wav
from emocli.corpus.manifest import read_manifest
from emocli.corpus.records import LABEL_SETS
from emocli.errors import CorpusError

FOUR = LABEL_SETS["4class"]
NOEXC = LABEL_SETS["4class-noexc"]


@pytest.fixture
def wavs(tmp_path: Path) -> Path:
    for name in ("a", "b", "c", "d", "e", "empty"):
        write_wav(tmp_path / "data" / "wavs" / f"{name}.wav")
    (tmp_path / "data/wavs/empty.wav").write_bytes(b"")
    return tmp_path / "data"


def rows(report) -> list[tuple]:
    return [(u.utt_id, u.label, u.raw_label, u.speaker, u.session, u.text) for u in report.utterances]


def test_csv_with_every_label_spelling(wavs: Path) -> None:
    path = wavs / "m.csv"
    path.write_text("path,text,label,speaker,session\n"
                    "wavs/a.wav,Hello there,exc,spk1,s1\n"
                    'wavs/b.wav,"Well,  I said [LAUGHTER] no",angry,spk2,s1\n'
                    "wavs/c.wav,Fine,NEU,spk1,s2\n"
                    "wavs/d.wav,Oh,Happy,,\n")
    report = read_manifest(path, FOUR)
    assert rows(report) == [("wavs/a", "hap", "exc", "spk1", "s1", "Hello there"),
                            ("wavs/b", "ang", "angry", "spk2", "s1", "Well, I said [LAUGHTER] no"),
                            ("wavs/c", "neu", "neu", "spk1", "s2", "Fine"),
                            ("wavs/d", "hap", "happy", "unknown", "unknown", "Oh")]
    assert report.problems == [] and report.label_set == "4class"
    assert report.utterances[0].audio_path == (wavs / "wavs/a.wav").absolute()


def test_tsv_by_extension_with_id_column_and_no_speaker(wavs: Path) -> None:
    path = wavs / "m.tsv"
    path.write_text("id\tpath\ttext\tlabel\n"
                    "utt1\twavs/a.wav\tGood, very good\tsad\n"
                    "utt2\twavs/b.wav\tNo\thap\n")
    report = read_manifest(path, FOUR)
    assert rows(report) == [("utt1", "sad", "sad", "unknown", "unknown", "Good, very good"),
                            ("utt2", "hap", "hap", "unknown", "unknown", "No")]


def test_tab_separated_file_named_csv_is_sniffed(wavs: Path) -> None:
    path = wavs / "m.csv"
    path.write_text("path\ttext\tlabel\nwavs/a.wav\tA, b\tneu\n")
    assert rows(read_manifest(path, FOUR)) == [("wavs/a", "neu", "neu", "unknown", "unknown", "A, b")]


def test_csv_and_tsv_give_the_same_records(wavs: Path) -> None:
    (wavs / "m.csv").write_text("path,text,label,speaker\nwavs/a.wav,Hi,ang,x\nwavs/b.wav,Yo,sad,y\n")
    (wavs / "m.tsv").write_text("path\ttext\tlabel\tspeaker\nwavs/a.wav\tHi\tang\tx\nwavs/b.wav\tYo\tsad\ty\n")
    assert read_manifest(wavs / "m.csv", FOUR).utterances == read_manifest(wavs / "m.tsv", FOUR).utterances


def test_bad_rows_are_skipped_with_their_line_number(wavs: Path) -> None:
    path = wavs / "m.csv"
    path.write_text("path,text,label\n"
                    "wavs/a.wav,ok,neu\n"
                    "wavs/missing.wav,x,neu\n"
                    "wavs/b.wav,x,bored\n"
                    "wavs/c.wav,x,neu,extra\n"
                    "\n"
                    "wavs/empty.wav,x,neu\n"
                    ",x,neu\n"
                    "wavs/a.wav,again,sad\n"
                    "wavs/d.wav,x,fru\n"
                    "wavs/e.wav,last,sad\n")
    report = read_manifest(path, FOUR)
    assert [u.utt_id for u in report.utterances] == ["wavs/a", "wavs/e"]
    assert report.skipped == {"bad manifest row": 6, "label fru dropped": 1}
    assert [p.split(": ", 1)[0] for p in report.problems] == [f"{path} line {n}" for n in (3, 4, 5, 7, 8, 9)]
    assert "audio file 'wavs/missing.wav' not found" in report.problems[0]
    assert "unknown label 'bored'; use one of ang (angry), hap (happy), sad (sad), neu (neutral)" in report.problems[1]
    assert "has 4 fields, the header has 3" in report.problems[2]
    assert "is empty (0 bytes)" in report.problems[3]
    assert "duplicate id 'wavs/a' (first on line 2)" in report.problems[5]


def test_exc_follows_the_label_set(wavs: Path) -> None:
    path = wavs / "m.csv"
    path.write_text("path,text,label\nwavs/a.wav,x,exc\nwavs/b.wav,y,hap\n")
    assert [u.label for u in read_manifest(path, FOUR).utterances] == ["hap", "hap"]
    report = read_manifest(path, NOEXC)
    assert [u.utt_id for u in report.utterances] == ["wavs/b"]
    assert report.skipped == {"label exc dropped": 1}


def test_absolute_paths_and_crlf(wavs: Path, tmp_path: Path) -> None:
    path = tmp_path / "elsewhere" / "m.csv"
    write_file(path, f"path,text,label\r\n{wavs / 'wavs/a.wav'},Hi,neu\r\n")
    report = read_manifest(path, FOUR)
    assert report.utterances[0].audio_path == wavs / "wavs/a.wav"
    assert report.utterances[0].utt_id == (wavs / "wavs/a").as_posix()


@pytest.mark.parametrize("content, message", [
    ("", "is empty; its first line must name the columns path,label"),
    ("\n\n  \n", "is empty"),
    ("path,text\nwavs/a.wav,hello\n", r"lacks column\(s\) label; its first line must name the columns path,label"),
    ("file;words;emotion\n", r"lacks column\(s\) path, label"),
    ("path,text,label\n", "no usable rows in manifest .*: it has no data rows"),
    ("path,text,label\nwavs/nope.wav,x,neu\n",
     r"no usable rows in manifest \S+: the first bad row is line 2: audio file 'wavs/nope.wav' not found; fix"),
    ("path,text,label\nwavs/a.wav,x,fru\n", r"every label was dropped \(label fru dropped: 1\)"),
])
def test_unusable_manifests_are_corpus_errors(wavs: Path, content: str, message: str) -> None:
    path = wavs / "m.csv"
    path.write_text(content)
    with pytest.raises(CorpusError, match=message):
        read_manifest(path, FOUR)


def test_unreadable_manifest(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"cannot read manifest .*nope\.csv"):
        read_manifest(tmp_path / "nope.csv", FOUR)


def test_unbalanced_quote_is_one_clear_error(wavs: Path) -> None:
    path = wavs / "m.csv"
    path.write_text('path,text,label\nwavs/a.wav,"unclosed,neu\n')
    with pytest.raises(CorpusError):
        read_manifest(path, FOUR)
