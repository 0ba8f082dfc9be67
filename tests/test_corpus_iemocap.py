"""The IEMOCAP reader against hand-written fixtures: every quirk of spec §8, the label sets, tags, counts."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corpus_fixtures import (EXPECTED, EXPECTED_DROPPED, EXPECTED_LINE_COUNTS, F000_BLOCK, F003_BLOCK, F019_BLOCK,
                             HEADER, block, build_corpus, wav_rel, write_file, write_wav)
from emocli.corpus.iemocap import (UTT_ID_RE, EmoEntry, ReaderConfig, parse_emo_evaluation, parse_transcription,
                                   read_iemocap, source_files)
from emocli.errors import ConfigError, CorpusError


def read(source: Path, tmp_path: Path, **config) -> object:
    return read_iemocap(source, ReaderConfig(**config), tmp_path / "work")


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return build_corpus(tmp_path / "data")


def records(report) -> list[tuple]:
    return [(u.utt_id, u.label, u.raw_label, u.speaker, u.session, u.text) for u in report.utterances]


def expected(tags: str = "keep", drop: tuple[str, ...] = ()) -> list[tuple]:
    text = 5 if tags == "keep" else 6
    return [row[:5] + (row[text],) for row in EXPECTED if row[2] not in drop]


# ---- the whole miniature corpus ---------------------------------------------------------------------------

def test_reads_the_expected_records_with_no_problems(corpus: Path, tmp_path: Path) -> None:
    report = read(corpus, tmp_path)
    assert records(report) == expected()
    assert report.problems == []
    assert dict(report.skipped) == {**EXPECTED_DROPPED, **EXPECTED_LINE_COUNTS}


def test_audio_paths_are_absolute_wavs_of_the_id(corpus: Path, tmp_path: Path) -> None:
    for u in read(corpus, tmp_path).utterances:
        assert u.audio_path.is_absolute()
        assert u.audio_path == (corpus / wav_rel(u.utt_id)).absolute()


def test_summary_counts(corpus: Path, tmp_path: Path) -> None:
    summary = read(corpus, tmp_path).summary()
    assert summary["utterances"] == 11
    assert summary["per_class"] == {"ang": 2, "hap": 4, "neu": 3, "sad": 2}
    assert summary["per_session"] == {"Ses01": {"ang": 1, "hap": 2, "neu": 1, "sad": 1},
                                      "Ses03": {"ang": 1, "hap": 1, "neu": 1},
                                      "Ses05": {"hap": 1, "neu": 1, "sad": 1}}
    assert summary["label_set"] == "4class"


def test_label_set_without_exc_drops_exc(corpus: Path, tmp_path: Path) -> None:
    report = read(corpus, tmp_path, label_set="4class-noexc")
    assert records(report) == expected(drop=("exc",))
    assert report.skipped["label exc dropped"] == 2
    assert report.label_set == "4class-noexc"


def test_tags_strip_removes_them_and_collapses_spaces(corpus: Path, tmp_path: Path) -> None:
    assert records(read(corpus, tmp_path, tags="strip")) == expected(tags="strip")


@pytest.mark.parametrize("config", [{"label_set": "7class"}, {"tags": "lower"}])
def test_unknown_config_values_are_config_errors(config: dict) -> None:
    with pytest.raises(ConfigError):
        ReaderConfig(**config)


# ---- spec §8, one test (or more) per quirk ----------------------------------------------------------------

def test_q1_apple_double_files_are_ignored(corpus: Path, tmp_path: Path) -> None:
    report = read(corpus, tmp_path)
    f000 = next(u for u in report.utterances if u.utt_id == "Ses01F_impro01_F000")
    assert (f000.label, f000.text) == ("neu", "Excuse me.")  # the ._ twins say "ang" / "Not this."
    assert "duplicate id" not in report.skipped
    assert not any("._" in p.name for p in source_files(corpus.parent))


def test_q2_emo_evaluation_subfolders_are_not_labels(corpus: Path, tmp_path: Path) -> None:
    ids = {u.utt_id for u in read(corpus, tmp_path).utterances}
    assert "Ses01F_impro01_F002" not in ids  # has a wav and a transcript; labelled only in Categorical/
    assert not any("Categorical" in str(p) for p in source_files(corpus))


def test_q3_header_line_is_not_a_label_or_a_problem() -> None:
    entries, problems = parse_emo_evaluation(HEADER + F000_BLOCK, "x.txt")
    assert [e.utt_id for e in entries] == ["Ses01F_impro01_F000"]
    assert problems == []


def test_q4_tab_separated_summary_with_spaced_times() -> None:
    entries, _ = parse_emo_evaluation(HEADER + F019_BLOCK, "x.txt")
    assert entries == [EmoEntry("Ses01F_impro05_F019", "ang", 140.225, 145.6, 1.5, 4.0, 4.5)]


def test_q5_both_timestamp_styles_parse() -> None:
    texts, problems = parse_transcription(
        "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.\n"
        "Ses01F_impro01_M000 [007.5712-010.4750]: Do you have your forms?\n", "t.txt")
    assert texts == {"Ses01F_impro01_F000": "Excuse me.", "Ses01F_impro01_M000": "Do you have your forms?"}
    entries, _ = parse_emo_evaluation(HEADER + F000_BLOCK, "x.txt")
    assert (entries[0].start, entries[0].end) == (6.2901, 8.2357)
    assert problems == []


def test_q6_transcripts_join_by_id_despite_time_mismatch(corpus: Path, tmp_path: Path) -> None:
    # The label file says 10.4750, the transcript 010.4751 for M000.
    texts = {u.utt_id: u.text for u in read(corpus, tmp_path).utterances}
    assert texts["Ses01F_impro01_M000"] == "Do you have your forms?"


def test_q7_f_then_m_label_order_is_joined_and_sorted(corpus: Path, tmp_path: Path) -> None:
    ids = [u.utt_id for u in read(corpus, tmp_path).utterances]
    assert ids == sorted(ids)
    assert {"Ses01F_impro01_F001", "Ses01F_impro01_M000"} <= set(ids)  # interleaved in the transcript


def test_q8_xx_turns_and_id_less_lines_are_left_out_and_counted() -> None:
    texts, problems = parse_transcription(
        "Ses03F_impro06_FXX0 [001.0000-002.0000]: Hmm.\nM: sorry\nF: what\n"
        "Ses03F_impro06_F000 [002.0000-003.0000]: Hi.\n", "t.txt")
    assert texts == {"Ses03F_impro06_F000": "Hi."}
    assert problems == []


def test_q8_counts_reach_the_report(corpus: Path, tmp_path: Path) -> None:
    report = read(corpus, tmp_path)
    assert report.skipped["transcript XX turn (no label)"] == 1
    assert report.skipped["transcript line without id"] == 2
    assert not any(u.utt_id.endswith("XX0") for u in report.utterances)


def test_q9_text_quirks() -> None:
    texts, _ = parse_transcription(
        "Ses05F_impro04_M018 [080.0000-083.0000]: Well\tI don't know.\n"
        "Ses05F_script01_2_M011 [001.0000-002.0000]: [LAUGHTER]\n"
        "Ses05F_script01_2_M012 [003.0000-004.0000]: worried.  We're all worried.  ", "t.txt")
    assert texts["Ses05F_impro04_M018"] == "Well\tI don't know."  # raw: normalising is the reader's job
    assert texts["Ses05F_script01_2_M011"] == "[LAUGHTER]"
    assert texts["Ses05F_script01_2_M012"] == "worried.  We're all worried."


@pytest.mark.parametrize("tags, raw, want", [
    ("keep", "Yeah.  [laughter] Sure.", "Yeah. [LAUGHTER] Sure."),
    ("keep", "[garbage]", "[GARBAGE]"),
    ("keep", "Well\tI  don't", "Well I don't"),
    ("strip", "Yeah.  [laughter] Sure.", "Yeah. Sure."),
    ("strip", "[BREATHING]", ""),
    ("strip", "so[LIPSMACK]well", "so well"),
])
def test_q9_tag_and_whitespace_normalisation(tags: str, raw: str, want: str) -> None:
    from emocli.corpus.iemocap import normalise_text

    assert normalise_text(raw, tags) == want


def test_q10_vad_outside_one_to_five_parses() -> None:
    text = HEADER + block("7.5712", "10.4750", "Ses01F_impro01_M000", "sad", "0.5000, 5.5000, 3.0000")
    entries, problems = parse_emo_evaluation(text, "x.txt")
    assert (entries[0].v, entries[0].a, entries[0].d) == (0.5, 5.5, 3.0)
    assert problems == []


def test_q11_xxx_oth_dis_are_parsed_then_dropped(corpus: Path, tmp_path: Path) -> None:
    entries, _ = parse_emo_evaluation(HEADER + F003_BLOCK, "x.txt")
    assert entries[0].code == "xxx"
    report = read(corpus, tmp_path)
    for code in ("xxx", "oth", "dis", "fru", "sur"):
        assert report.skipped[f"label {code} dropped"] == 1
        assert not any(u.raw_label == code for u in report.utterances)


def test_q12_dialog_suffixes_keep_dialog_and_speaker(corpus: Path, tmp_path: Path) -> None:
    by_id = {u.utt_id: u for u in read(corpus, tmp_path).utterances}
    a = by_id["Ses03M_impro05a_F000"]
    assert a.audio_path.parent.name == "Ses03M_impro05a" and a.speaker == "Ses03F"
    b = by_id["Ses05M_script01_1b_M000"]
    assert b.audio_path.parent.name == "Ses05M_script01_1b" and b.speaker == "Ses05M"


@pytest.mark.parametrize("utt", ["Ses03M_impro05a_F000", "Ses03M_impro08b_M012", "Ses05M_script01_1b_F039",
                                 "Ses01F_script03_2_M041", "Ses04F_impro07_M086"])
def test_q12_id_grammar_accepts_real_ids(utt: str) -> None:
    assert UTT_ID_RE.match(utt)


@pytest.mark.parametrize("utt", ["Ses06F_impro01_F000", "Ses01F_impro10_F000", "Ses01F_script01_4_F000",
                                 "Ses01F_impro01_X000", "Ses01F_impro01_F00", "Ses01F_impro05c_F000"])
def test_q12_id_grammar_rejects_others(utt: str) -> None:
    assert not UTT_ID_RE.match(utt)


def test_q13_speaker_is_the_turn_letter_not_the_mocap_letter(corpus: Path, tmp_path: Path) -> None:
    by_id = {u.utt_id: u for u in read(corpus, tmp_path).utterances}
    assert by_id["Ses01F_impro01_M000"].speaker == "Ses01M"
    assert by_id["Ses01F_impro01_M000"].session == "Ses01"
    assert by_id["Ses03M_impro05a_F000"].speaker == "Ses03F"
    assert by_id["Ses03M_impro05a_F000"].session == "Ses03"


@pytest.mark.parametrize("top", ["IEMOCAP_full_release/IEMOCAP_full_release", "my_iemocap", "x/IEMOCAP"])
def test_q14_doubled_or_renamed_root_folder(tmp_path: Path, top: str) -> None:
    build_corpus(tmp_path / "data", top)
    assert records(read(tmp_path / "data", tmp_path)) == expected()


def test_q14_passing_the_root_itself_works(corpus: Path, tmp_path: Path) -> None:
    assert records(read(corpus / "Session1" / "..", tmp_path)) == expected()


def test_q15_crlf_and_cr_line_endings(tmp_path: Path) -> None:
    crlf = (HEADER + F000_BLOCK).replace("\n", "\r\n")
    entries, problems = parse_emo_evaluation(crlf, "x.txt")
    assert [e.utt_id for e in entries] == ["Ses01F_impro01_F000"] and problems == []
    texts, _ = parse_transcription("Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.\r"
                                   "Ses01F_impro01_M000 [007.5712-010.4750]: Do you?", "t.txt")
    assert texts == {"Ses01F_impro01_F000": "Excuse me.", "Ses01F_impro01_M000": "Do you?"}


def test_q15_crlf_files_in_a_corpus(corpus: Path, tmp_path: Path) -> None:
    # Ses03M_impro05a's label file and transcript are CRLF, the transcript has no final newline.
    texts = {u.utt_id: u.text for u in read(corpus, tmp_path).utterances}
    assert texts["Ses03M_impro05a_F000"] == "I said [GARBAGE] no."
    assert texts["Ses03M_impro05a_M000"] == "Okay."


def test_latin1_fallback_keeps_the_rest_of_the_file(corpus: Path, tmp_path: Path) -> None:
    texts = {u.utt_id: u.text for u in read(corpus, tmp_path).utterances}
    assert texts["Ses05F_impro04_M018"] == "Well I don't know."  # its file holds a latin-1 byte


def test_utf8_bom_is_tolerated() -> None:
    texts, _ = parse_transcription("\ufeffSes01F_impro01_F000 [006.2901-008.2357]: Excuse me.\n", "t.txt")
    assert list(texts) == ["Ses01F_impro01_F000"]


# ---- q16: what the release never has, but a damaged copy may ----------------------------------------------

def test_missing_wav_is_skipped_and_named(corpus: Path, tmp_path: Path) -> None:
    (corpus / wav_rel("Ses01F_impro01_F000")).unlink()
    report = read(corpus, tmp_path)
    assert "Ses01F_impro01_F000" not in {u.utt_id for u in report.utterances}
    assert report.skipped["missing wav"] == 1
    assert report.problems == [f"{wav_rel('Ses01F_impro01_F000')}: no wav for labelled Ses01F_impro01_F000; skipped"]


def test_missing_wav_of_a_dropped_label_is_not_a_problem(corpus: Path, tmp_path: Path) -> None:
    (corpus / wav_rel("Ses01F_impro01_M001")).unlink()  # fru
    report = read(corpus, tmp_path)
    assert report.problems == [] and "missing wav" not in report.skipped


def test_empty_wav_is_skipped_and_named(corpus: Path, tmp_path: Path) -> None:
    (corpus / wav_rel("Ses01F_impro05_F019")).write_bytes(b"")
    report = read(corpus, tmp_path)
    assert "Ses01F_impro05_F019" not in {u.utt_id for u in report.utterances}
    assert report.skipped["empty wav"] == 1
    assert len(report.problems) == 1 and "Ses01F_impro05_F019" in report.problems[0]
    assert wav_rel("Ses01F_impro05_F019") in report.problems[0]


def test_missing_transcript_line_is_skipped_and_named(corpus: Path, tmp_path: Path) -> None:
    path = corpus / "Session5/dialog/transcriptions/Ses05M_script01_1b.txt"
    path.write_text("Ses05M_script01_1b_F000 [001.5000-002.5000]: Hello.\n")
    report = read(corpus, tmp_path)
    assert "Ses05M_script01_1b_M000" not in {u.utt_id for u in report.utterances}
    assert report.skipped["missing transcript"] == 1
    assert report.problems == ["Session5/dialog/transcriptions/Ses05M_script01_1b.txt: "
                               "no transcript line for Ses05M_script01_1b_M000; skipped"]


def test_missing_transcript_file_skips_its_utterances(corpus: Path, tmp_path: Path) -> None:
    (corpus / "Session3/dialog/transcriptions/Ses03M_impro05b.txt").unlink()
    report = read(corpus, tmp_path)
    assert "Ses03M_impro05b_M000" not in {u.utt_id for u in report.utterances}
    assert report.skipped["missing transcript"] == 1  # F000 is sur: dropped before the transcript matters


def test_duplicate_id_keeps_the_first_and_names_both_files(corpus: Path, tmp_path: Path) -> None:
    write_file(corpus / "Session1/dialog/EmoEvaluation/Ses01F_impro99.txt",
               HEADER + block("6.2901", "8.2357", "Ses01F_impro01_F000", "ang"))
    report = read(corpus, tmp_path)
    f000 = [u for u in report.utterances if u.utt_id == "Ses01F_impro01_F000"]
    assert [u.label for u in f000] == ["neu"]
    assert report.skipped["duplicate id"] == 1
    assert report.problems == ["Session1/dialog/EmoEvaluation/Ses01F_impro99.txt: Ses01F_impro01_F000 is a "
                               "duplicate id (first in Session1/dialog/EmoEvaluation/Ses01F_impro01.txt); "
                               "the first is kept"]


@pytest.mark.parametrize("bad", [
    "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000]",  # two VAD values
    "[6.2901 - 8.2357] Ses01F_impro01_F000 neu [2.5000, 2.5000, 2.5000]",  # spaces, not TABs
    "[6.2901 - 8.2357]\tSes01F_impro01_F000\tNEU\t[2.5000, 2.5000, 2.5000]",  # upper-case code
    "[6.2901 - ]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]",
    "6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]",  # lost its bracket
])
def test_malformed_summary_line_is_a_problem(corpus: Path, tmp_path: Path, bad: str) -> None:
    path = corpus / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt"
    path.write_text(path.read_text().replace(F000_BLOCK.split("\n")[0], bad))
    report = read(corpus, tmp_path)
    assert "Ses01F_impro01_F000" not in {u.utt_id for u in report.utterances}
    assert report.skipped["malformed label line"] == 1
    assert len(report.problems) == 1
    problem = report.problems[0]
    assert problem.startswith("Session1/dialog/EmoEvaluation/Ses01F_impro01.txt line 3: malformed label line")
    assert "Ses01F_impro01_F000" in problem


def test_bracket_line_without_id_is_a_problem() -> None:
    _, problems = parse_emo_evaluation(HEADER + "[garbage]\n", "x.txt")
    assert problems == ["x.txt line 3: malformed label line: '[garbage]'; skipped"]


def test_summary_id_outside_the_grammar_is_skipped(corpus: Path, tmp_path: Path) -> None:
    write_file(corpus / "Session1/dialog/EmoEvaluation/Ses01F_impro99.txt",
               HEADER + block("1.0000", "2.0000", "Ses01F_improv01_F000", "neu"))
    report = read(corpus, tmp_path)
    assert report.skipped["malformed utterance id"] == 1
    assert "Ses01F_improv01_F000" in report.problems[0]
    assert records(report) == expected()


def test_malformed_transcript_line_is_a_problem(corpus: Path, tmp_path: Path) -> None:
    path = corpus / "Session5/dialog/transcriptions/Ses05M_script01_1b.txt"
    path.write_text("Ses05M_script01_1b_F000 [001.5000-002.5000]: Hello.\n"
                    "Ses05M_script01_1b_M000 (002.0000-003.0000) Hi there.\n")
    report = read(corpus, tmp_path)
    assert report.skipped["malformed transcript line"] == 1
    assert report.skipped["missing transcript"] == 1
    assert any("line 2: malformed transcript line" in p for p in report.problems)


def test_duplicate_transcript_line_keeps_the_first() -> None:
    texts, problems = parse_transcription("Ses01F_impro01_F000 [006.2901-008.2357]: One.\n"
                                          "Ses01F_impro01_F000 [006.2901-008.2357]: Two.\n", "t.txt")
    assert texts == {"Ses01F_impro01_F000": "One."}
    assert problems == ["t.txt line 2: second transcript line for Ses01F_impro01_F000; the first is kept"]


# ---- nothing usable, or not IEMOCAP at all ----------------------------------------------------------------

def test_folder_that_is_not_iemocap(tmp_path: Path) -> None:
    write_file(tmp_path / "data/Session1/readme.txt", "hello")
    with pytest.raises(CorpusError, match="does not look like IEMOCAP_full_release: no Session1..5 folders"):
        read(tmp_path / "data", tmp_path)


def test_missing_source(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="does not exist"):
        read(tmp_path / "nope", tmp_path)


def test_nothing_usable_is_an_error_that_says_why(tmp_path: Path) -> None:
    root = tmp_path / "data/IEMOCAP_full_release"
    write_file(root / "Session1/dialog/EmoEvaluation/Ses01F_impro01.txt",
               HEADER + block("1.0000", "2.0000", "Ses01F_impro01_F000", "fru"))
    write_file(root / "Session1/dialog/transcriptions/Ses01F_impro01.txt",
               "Ses01F_impro01_F000 [001.0000-002.0000]: No.\n")
    write_wav(root / wav_rel("Ses01F_impro01_F000"))
    with pytest.raises(CorpusError, match=r"no usable utterances in .*label fru dropped: 1"):
        read(tmp_path / "data", tmp_path)


def test_two_copies_under_one_folder_is_ambiguous(tmp_path: Path) -> None:
    build_corpus(tmp_path / "data", "copy1")
    build_corpus(tmp_path / "data", "copy2")
    with pytest.raises(CorpusError, match="found 2 IEMOCAP copies"):
        read(tmp_path / "data", tmp_path)


def test_source_files_lists_what_the_reader_reads(corpus: Path) -> None:
    rels = {p.relative_to(corpus.parent).as_posix() for p in source_files(corpus.parent)}
    assert "IEMOCAP_full_release/Session1/dialog/EmoEvaluation/Ses01F_impro01.txt" in rels
    assert "IEMOCAP_full_release/Session1/dialog/transcriptions/Ses01F_impro01.txt" in rels
    assert f"IEMOCAP_full_release/{wav_rel('Ses01F_impro01_F000')}" in rels
    assert not any(part in r for r in rels for part in ("/avi/", "/MOCAP_", "/dialog/wav/", "/Categorical/", "/._"))


# ---- properties: any text on a transcript line comes back, right-trimmed --------------------------------

_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp"), blacklist_characters="\x85"),
                max_size=40)


@settings(max_examples=60, deadline=None)
@given(text=_TEXT, ending=st.sampled_from(["\n", "\r\n", ""]))
def test_transcript_text_round_trips(text: str, ending: str) -> None:
    texts, problems = parse_transcription(f"Ses02M_script02_2_F010 [001.0000-002.0000]: {text}{ending}", "t.txt")
    # Only the one space after the colon belongs to the format; leading text whitespace stays raw.
    assert texts == {"Ses02M_script02_2_F010": text.rstrip()} and problems == []


@settings(max_examples=60, deadline=None)
@given(start=st.floats(0, 999, allow_nan=False), length=st.floats(0.1, 40), vad=st.lists(
    st.sampled_from([0.5, 1.0, 1.3333, 2.25, 3.6667, 5.5]), min_size=3, max_size=3))
def test_summary_lines_round_trip(start: float, length: float, vad: list[float]) -> None:
    line = (f"[{start:.4f} - {start + length:.4f}]\tSes04F_impro07_M086\tneu\t"
            f"[{vad[0]:.4f}, {vad[1]:.4f}, {vad[2]:.4f}]")
    entries, problems = parse_emo_evaluation(HEADER + line + "\n", "x.txt")
    assert problems == []
    assert entries[0].start == float(f"{start:.4f}") and entries[0].v == float(f"{vad[0]:.4f}")
