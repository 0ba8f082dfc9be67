"""The generator against the format spec (/work/shared/iemocap-format.md, section 10 and the quirks of section 8).

Everything is read straight from the archive bytes with tarfile/zipfile and regular expressions, never through
emocli's reader: the reader is tested against this generator elsewhere, so checking the generator through it
would prove nothing.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from emocli.errors import ConfigError
from emocli.synth import (BANKS, SynthConfig, SynthTruth, dialog_inventory, plan_corpus, render_speech,
                          speaker_voices, synthesize)

SMALL = {"per_class": 8, "seed": 11, "mean_seconds": 0.5}
ROOT = "IEMOCAP_full_release"
HEADER = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]"
SPECIAL = ("Ses03M_impro05a", "Ses03M_impro05b", "Ses03M_impro08a", "Ses03M_impro08b", "Ses05M_script01_1b")
ALL_CODES = {"neu", "hap", "exc", "ang", "sad", "fru", "sur", "fea", "dis", "oth", "xxx"}
KEPT = {"ang", "hap", "exc", "sad", "neu"}
NAME_CODE = {"Neutral": "neu", "Happiness": "hap", "Excited": "exc", "Anger": "ang", "Sadness": "sad",
             "Frustration": "fru", "Surprise": "sur", "Fear": "fea", "Disgust": "dis", "Other": "oth"}
# Strict versions of the spec's patterns: exact spacing, no trailing whitespace.
SUMMARY = re.compile(r"^\[(\d+\.\d{4}) - (\d+\.\d{4})\]\t(Ses0[1-5][FM]_\S+_([FM])(\d{3}))\t([a-z]{3})"
                     r"\t\[(\d\.\d{4}), (\d\.\d{4}), (\d\.\d{4})\]$")
C_LINE = re.compile(r"^C-(E[1-6]|[FM][1-5]):\t((?:[A-Z][a-z]+; )*[A-Z][a-z]+;)\t\(([^:()]*)\)$")
A_LINE = re.compile(r"^A-(E[1-6]|[FM][1-5]):\tval (\d); act (\d);(?: dom( {1,2})(\d);)?\t\(([^:()]*)\)$")
TRANS = re.compile(r"^(Ses0[1-5][FM]_\S+_[FM](?:\d{3}|XX\d)) \[(\d{3}\.\d{4})-(\d{3}\.\d{4})\]: (.*)$")
IDLESS = re.compile(r"^[MF]: \S")
UTT_ID = re.compile(r"^Ses0(?P<sess>[1-5])(?P<mocap>[FM])_(?P<type>impro|script)(?P<num>0[1-9])(?P<sub>[ab]?)"
                    r"(?:_(?P<part>[1-3])(?P<partsub>b?))?_(?P<spk>[FM])(?P<idx>\d{3})$")


def _ticks(text: str) -> int:
    return int(text.replace(".", ""))


def _tar_members(path: Path) -> tuple[dict[str, bytes], set[str]]:
    files, dirs = {}, set()
    with tarfile.open(path) as tar:
        for m in tar:
            if m.isdir():
                dirs.add(m.name.rstrip("/"))
            else:
                files[m.name] = tar.extractfile(m).read()
    return files, dirs


def _zip_members(path: Path) -> tuple[dict[str, bytes], set[str]]:
    files, dirs = {}, set()
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if info.is_dir():
                dirs.add(info.filename.rstrip("/"))
            else:
                files[info.filename] = z.read(info)
    return files, dirs


def _dir_members(out: Path) -> tuple[dict[str, bytes], set[str]]:
    files, dirs = {}, set()
    for p in out.rglob("*"):
        rel = p.relative_to(out).as_posix()
        if rel == "synth-truth.json":
            continue
        if p.is_dir():
            dirs.add(rel)
        else:
            files[rel] = p.read_bytes()
    return files, dirs


def _consensus(votes: list[list[str]]) -> str:
    tally = Counter(label for labels in votes for label in labels).most_common()
    if tally[0][1] >= 2 and (len(tally) == 1 or tally[1][1] < tally[0][1]):
        return NAME_CODE[tally[0][0]]
    return "xxx"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[SynthTruth, dict[str, bytes], set[str]]:
    truth = synthesize(tmp_path_factory.mktemp("synth"), SynthConfig(**SMALL))
    files, dirs = _tar_members(truth.archive)
    return truth, files, dirs


def _select(files: dict[str, bytes], pattern: str) -> dict[str, bytes]:
    rx = re.compile(pattern)
    return {k: v for k, v in files.items() if rx.fullmatch(k)}


def _emo_files(files):
    return _select(files, rf"{ROOT}/Session[1-5]/dialog/EmoEvaluation/(?!\._)[^/]+\.txt")


def _transcripts(files):
    return _select(files, rf"{ROOT}/Session[1-5]/dialog/transcriptions/(?!\._)[^/]+\.txt")


def _sentence_wavs(files):
    return _select(files, rf"{ROOT}/Session[1-5]/sentences/wav/[^/]+/(?!\._)[^/]+\.wav")


# --- determinism, formats, the truth file ------------------------------------------------------------------

def test_same_config_gives_identical_bytes(corpus, tmp_path):
    truth = corpus[0]
    again = synthesize(tmp_path / "again", SynthConfig(**SMALL))
    assert again.archive.read_bytes() == truth.archive.read_bytes()
    assert again.to_json() | {"archive": ""} == truth.to_json() | {"archive": ""}
    other = synthesize(tmp_path / "other", SynthConfig(**{**SMALL, "seed": 12}))
    assert other.archive.read_bytes() != truth.archive.read_bytes()
    # gzip's own header must not carry the clock or the temporary file name.
    head = truth.archive.read_bytes()[:10]
    assert head[:3] == b"\x1f\x8b\x08" and head[3] & 0x08 == 0 and struct.unpack("<I", head[4:8])[0] == 0
    with tarfile.open(truth.archive) as tar:
        meta = {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in tar}
    assert len(meta) == 1


def test_zip_is_deterministic(tmp_path):
    a = synthesize(tmp_path / "a", SynthConfig(**SMALL, fmt="zip")).archive.read_bytes()
    b = synthesize(tmp_path / "b", SynthConfig(**SMALL, fmt="zip")).archive.read_bytes()
    assert a == b


def test_all_formats_write_the_same_members(corpus, tmp_path):
    truth, files, dirs = corpus
    for fmt, name in (("tgz", f"{ROOT}.tgz"), ("tar", f"{ROOT}.tar"), ("zip", f"{ROOT}.zip"), ("dir", ROOT)):
        other = synthesize(tmp_path / fmt, SynthConfig(**SMALL, fmt=fmt))
        assert other.archive == tmp_path / fmt / name and other.archive.exists()
        reader = {"zip": _zip_members, "dir": lambda p: _dir_members(p.parent)}.get(fmt, _tar_members)
        got_files, got_dirs = reader(other.archive)
        assert got_files == files, fmt
        assert got_dirs == dirs, fmt
        assert other.codes == truth.codes and other.texts == truth.texts
        assert not [p for p in other.archive.parent.iterdir() if "tmp" in p.name]  # the rename happened


def test_truth_json_round_trips(corpus):
    truth = corpus[0]
    saved = json.loads((truth.archive.parent / "synth-truth.json").read_text())
    assert SynthTruth.from_json(saved) == truth
    assert saved["config"]["per_class"] == SMALL["per_class"]  # the file says how it was made


def test_bad_configs_are_refused(tmp_path):
    for bad in ({"fmt": "rar"}, {"per_class": 0}, {"mean_seconds": 0}, {"text_informative": 1.5},
                {"dropped_fraction": -0.1}, {"root_name": "a/b"}, {"root_name": ""}):
        with pytest.raises(ConfigError):
            synthesize(tmp_path, SynthConfig(**bad))
    assert not list(tmp_path.iterdir())


# --- layout ------------------------------------------------------------------------------------------------

def test_top_level_apple_double_and_documentation(corpus):
    _, files, dirs = corpus
    junk = files["._IEMOCAP_full_release"]
    assert junk[:4] == b"\x00\x05\x16\x07" and b"Mac OS X" in junk[:32]
    with pytest.raises(UnicodeDecodeError):  # binary: a reader must skip it, not parse it
        junk.decode("utf-8")
    assert f"{ROOT}/README.txt" in files
    for name in ("corpus.dic", "phonemes.txt", "timeinfo.txt", "HumaineInfo.txt", "FIVE_face_markers2.png"):
        assert files[f"{ROOT}/Documentation/{name}"]
    assert files[f"{ROOT}/Documentation/FIVE_face_markers2.png"].startswith(b"\x89PNG\r\n\x1a\n")
    assert {n.split("/")[0] for n in files} == {ROOT, "._IEMOCAP_full_release"}


def test_session_folders(corpus):
    _, files, dirs = corpus
    for s in range(1, 6):
        base = f"{ROOT}/Session{s}"
        for sub in ("dialog/EmoEvaluation", "dialog/transcriptions", "dialog/wav", "dialog/avi/DivX", "dialog/lab",
                    "dialog/MOCAP_hand", "dialog/MOCAP_head", "dialog/MOCAP_rotated", "sentences/wav",
                    "sentences/ForcedAlignment", "sentences/MOCAP_hand", "sentences/MOCAP_head",
                    "sentences/MOCAP_rotated"):
            assert f"{base}/{sub}" in dirs, f"{base}/{sub}"
        for sub in ("Categorical", "Attribute", "Self-evaluation"):
            rater_files = _select(files, rf"{base}/dialog/EmoEvaluation/{sub}/[^/]+\.txt")
            assert rater_files, f"{base} {sub}"
            # These hold per-rater labels in another format; a reader globbing recursively must not see labels.
            for text in rater_files.values():
                assert not any(SUMMARY.match(line) for line in text.decode().splitlines())
                assert "\t" not in text.decode()
        assert _select(files, rf"{base}/sentences/ForcedAlignment/[^/]+/[^/]+\.phseg")
    assert not _select(files, rf"{ROOT}/Session5/(dialog|sentences)/MOCAP_\w+/Ses05M_script01_1b.*")


def test_apple_double_siblings_everywhere_the_spec_names(corpus):
    _, files, _ = corpus
    ad = {n for n, data in files.items() if n.rsplit("/", 1)[-1].startswith("._")}
    assert all(files[n][:4] == b"\x00\x05\x16\x07" for n in ad)
    for folder in ("dialog/avi/DivX", "dialog/wav", "sentences/wav/[^/]+", "dialog/EmoEvaluation",
                   "dialog/transcriptions"):
        rx = re.compile(rf"{ROOT}/Session[1-5]/{folder}/\._[^/]+")
        assert any(rx.fullmatch(n) for n in ad), folder


def test_nested_renamed_root_without_junk(tmp_path):
    cfg = SynthConfig(per_class=2, mean_seconds=0.4, fmt="tar", nested_root=True, root_name="IEMOCAP")
    files, _ = _tar_members(synthesize(tmp_path / "n", cfg).archive)
    assert "IEMOCAP/._IEMOCAP_full_release" in files
    assert all(n.startswith("IEMOCAP/") for n in files)
    assert _select(files, rf"IEMOCAP/{ROOT}/Session1/dialog/EmoEvaluation/[^/]+\.txt")
    plain = synthesize(tmp_path / "p", SynthConfig(per_class=2, mean_seconds=0.4, fmt="dir", root_name="IEMOCAP",
                                                   apple_double=False))
    assert plain.archive == tmp_path / "p" / "IEMOCAP" and (plain.archive / "Session5").is_dir()
    assert not [p for p in (tmp_path / "p").rglob("._*")]


def test_dialog_inventory_and_selection(corpus):
    truth, files, _ = corpus
    inventory = dialog_inventory()
    per_session = Counter(d[:5] for d in inventory)
    assert [per_session[f"Ses0{s}"] for s in range(1, 6)] == [28, 30, 32, 30, 31]
    assert set(SPECIAL) <= set(inventory)
    assert not {"Ses03M_impro05", "Ses03M_impro08", "Ses01F_impro08", "Ses01M_impro08"} & set(inventory)
    assert set(SPECIAL) <= set(truth.dialogs) <= set(inventory)
    written = {n.rsplit("/", 1)[-1][:-4] for n in _emo_files(files)}
    assert written == set(truth.dialogs)
    assert {n.rsplit("/", 1)[-1][:-4] for n in _transcripts(files)} == written
    # every session, and both speakers of each, have utterances the 4-class set keeps
    kept_speakers = {truth.speakers[u] for u, c in truth.codes.items() if c in KEPT}
    assert kept_speakers == {f"Ses0{s}{g}" for s in range(1, 6) for g in "FM"}
    big = plan_corpus(SynthConfig(per_class=2500))
    assert len(big.dialogs) == 151


# --- EmoEvaluation ----------------------------------------------------------------------------------------

def _blocks(text: str) -> list[list[str]]:
    assert text.startswith(HEADER + "\n\n") and text.endswith("\n\n") and "\r" not in text
    body = text[len(HEADER) + 2:]
    blocks = body.split("\n\n")
    assert blocks[-1] == ""  # a blank line after the last block too
    return [b.split("\n") for b in blocks[:-1]]


def test_emo_evaluation_blocks(corpus):
    truth, files, _ = corpus
    seen: Counter = Counter()
    codes = {}
    for name, data in _emo_files(files).items():
        dialog = name.rsplit("/", 1)[-1][:-4]
        session = dialog[4]
        order = []
        for block in _blocks(data.decode("ascii")):
            m = SUMMARY.match(block[0])
            assert m, block[0]
            start, end, utt, letter, idx, code = m[1], m[2], m[3], m[4], int(m[5]), m[6]
            assert utt.rsplit("_", 1)[0] == dialog and UTT_ID.match(utt)
            assert not re.match(r"0\d", start)  # no zero padding, unlike the transcripts
            codes[utt] = code
            order.append((letter, idx))
            c_lines = [C_LINE.match(line) for line in block[1:] if line.startswith("C-")]
            a_lines = [A_LINE.match(line) for line in block[1:] if line.startswith("A-")]
            assert all(c_lines) and all(a_lines), block
            assert len(c_lines) + len(a_lines) == len(block) - 1
            evaluators = [c for c in c_lines if c[1].startswith("E")]
            selves = [c for c in c_lines if not c[1].startswith("E")]
            assert len(evaluators) == 3 and len(selves) <= 1
            assert all(c[1] == f"{letter}{session}" for c in selves)
            votes = [c[2].rstrip(";").split("; ") for c in evaluators]
            assert _consensus(votes) == code, block
            a_eval = [a for a in a_lines if a[1].startswith("E")]
            assert len(a_eval) == 2
            v, a, d = (float(m[7]), float(m[8]), float(m[9]))
            assert v == np.mean([int(x[2]) for x in a_eval]) and a == np.mean([int(x[3]) for x in a_eval])
            doms = [int(x[5]) for x in a_eval if x[5] is not None]
            assert d == np.mean(doms)
            seen["self"] += bool(selves)
            seen["multi"] += any(";" in c[2][:-1] for c in c_lines)
            seen["dom_one_space"] += sum(x[4] == " " for x in a_eval)
            seen["dom_missing"] += sum(x[5] is None for x in a_eval)
            seen["vad_0.5"] += "0.5000" in (m[7], m[8], m[9])
            seen["vad_5.5"] += "5.5000" in (m[7], m[8], m[9])
            seen["tie"] += code == "xxx" and Counter(l for vs in votes for l in vs).most_common(1)[0][1] == 2
        # all F blocks ascending, then all M blocks ascending
        assert order == sorted(order)
        for letter in "FM":
            assert [i for g, i in order if g == letter] == list(range(sum(g == letter for g, _ in order)))
    assert all(seen[k] for k in ("self", "multi", "dom_one_space", "dom_missing", "vad_0.5", "vad_5.5")), seen
    # two-spaced dom is the rule, the odd ones rare
    assert seen["dom_one_space"] + seen["dom_missing"] < 0.1 * 2 * len(codes)
    assert codes == truth.codes


def test_codes_and_counts(corpus):
    truth = corpus[0]
    assert set(truth.codes.values()) == ALL_CODES
    assert truth.four_class_counts() == {c: SMALL["per_class"] for c in ("ang", "hap", "sad", "neu")}
    no_exc = truth.four_class_counts(merge_exc=False)
    assert 0 < no_exc["hap"] < SMALL["per_class"]  # exc beside hap
    dropped = sum(c not in KEPT for c in truth.codes.values())
    assert dropped == round(0.25 * 4 * SMALL["per_class"])
    for utt in truth.codes:
        assert truth.sessions[utt] == utt[:5] and truth.speakers[utt] == utt[:5] + utt.rsplit("_", 1)[1][0]
    assert set(truth.codes) == set(truth.texts) == set(truth.durations) == set(truth.text_cue)


# --- transcriptions -----------------------------------------------------------------------------------------

def _transcript_rows(files) -> tuple[list[tuple[str, int, int, str]], list[str], dict[str, list[str]]]:
    rows, idless, order = [], [], {}
    for name, data in _transcripts(files).items():
        text = data.decode("ascii")
        assert text.endswith("\n") and "\r" not in text
        dialog = name.rsplit("/", 1)[-1][:-4]
        order[dialog] = []
        for line in text[:-1].split("\n"):
            m = TRANS.match(line)
            if m:
                rows.append((m[1], _ticks(m[2]), _ticks(m[3]), m[4]))
                order[dialog].append(m[1])
            else:
                assert IDLESS.match(line), line
                idless.append(line)
    return rows, idless, order


def test_transcript_lines(corpus):
    truth, files, _ = corpus
    rows, idless, _ = _transcript_rows(files)
    ids = Counter(r[0] for r in rows)
    labelled = [r for r in rows if "XX" not in r[0]]
    xx = [r[0] for r in rows if "XX" in r[0]]
    assert all(n == 1 for n in ids.values())
    assert {r[0] for r in labelled} == set(truth.codes)
    assert len(xx) == truth.xx_turns >= 2 and {x[-4] for x in xx} == {"F", "M"}
    assert len(idless) == truth.idless_lines >= 2 and {l[0] for l in idless} == {"M", "F"}
    texts = {r[0]: r[3] for r in labelled}
    assert texts == truth.texts
    every = "\n".join(r[3] for r in rows)
    assert every.isascii() and ":" not in every
    for tag in ("[LAUGHTER]", "[BREATHING]", "[GARBAGE]", "[garbage]", "[laughter]"):
        assert tag in every, tag
    assert any(re.fullmatch(r"\[\w+\]", t) for t in texts.values())  # tag-only utterances
    assert any(len(t.split()) == 1 and not t.startswith("[") for t in texts.values())
    assert any("  " in t for t in texts.values())
    assert sum(t.count("\t") for t in texts.values()) == 1


def test_transcript_times(corpus):
    truth, files, _ = corpus
    rows, _, order = _transcript_rows(files)
    emo = {}
    for data in _emo_files(files).values():
        for block in _blocks(data.decode()):
            m = SUMMARY.match(block[0])
            emo[m[3]] = (_ticks(m[1]), _ticks(m[2]))
    diffs = [(s - emo[u][0], e - emo[u][1]) for u, s, e, _ in rows if u in emo]
    mismatched = [d for d in diffs if d != (0, 0)]
    assert len(mismatched) == 6 and all(abs(a) + abs(b) == 1 for a, b in mismatched)
    for u, (s, e) in emo.items():
        assert abs(truth.durations[u] - (e - s) / 10_000) < 1e-9
    # per dialog: chronological overall, with overlaps and at least one inversion somewhere
    starts = {u: s for u, s, _, _ in rows}
    ends = {u: e for u, _, e, _ in rows}
    inversions = overlaps = pairs = 0
    for dialog, ids in order.items():
        inversions += sum(starts[a] > starts[b] for a, b in zip(ids, ids[1:]))
        by_start = sorted(ids, key=starts.get)
        overlaps += sum(ends[a] > starts[b] for a, b in zip(by_start, by_start[1:]))
        pairs += len(ids) - 1
        # per-speaker numbering is contiguous and follows time
        for letter in "FM":
            mine = [u for u in by_start if re.search(rf"_{letter}\d{{3}}$", u)]
            assert [int(u[-3:]) for u in mine] == list(range(len(mine)))
    assert inversions >= 1 and overlaps > 0.3 * pairs


def test_crlf_and_missing_final_newline(tmp_path):
    truth = synthesize(tmp_path, SynthConfig(per_class=2, mean_seconds=0.4, fmt="dir", crlf_transcripts=True,
                                             transcript_final_newline=False))
    crlf = 0
    for path in truth.archive.glob("Session*/dialog/transcriptions/Ses*.txt"):
        data = path.read_bytes()
        assert data.count(b"\n") == data.count(b"\r\n") and not data.endswith(b"\n")
        crlf += data.count(b"\r\n")
    assert crlf > 0
    for path in truth.archive.glob("Session*/dialog/EmoEvaluation/Ses*.txt"):
        assert b"\r" not in path.read_bytes()  # EmoEvaluation stays LF (spec 4.1)


# --- audio ----------------------------------------------------------------------------------------------------

def _wav_fields(data: bytes) -> tuple:
    return struct.unpack("<4sI4s4sIHHIIHH4sI", data[:44])


def test_sentence_wavs(corpus):
    truth, files, _ = corpus
    wavs = _sentence_wavs(files)
    by_id = {n.rsplit("/", 1)[-1][:-4]: (n, data) for n, data in wavs.items()}
    assert set(by_id) == set(truth.codes)  # one per labelled id, dropped labels included; none for XX turns
    for utt, (name, data) in by_id.items():
        assert name == f"{ROOT}/Session{utt[4]}/sentences/wav/{utt.rsplit('_', 1)[0]}/{utt}.wav"
        riff, size, wave, fmt, fmt_len, pcm, ch, rate, byte_rate, align, bits, tag, n_bytes = _wav_fields(data)
        assert (riff, wave, fmt, tag) == (b"RIFF", b"WAVE", b"fmt ", b"data")
        assert (fmt_len, pcm, ch, rate, byte_rate, align, bits) == (16, 1, 1, 16_000, 32_000, 2, 16)
        assert n_bytes == 2 * int(np.floor(truth.durations[utt] * 16_000)) == len(data) - 44 == size - 36
        samples = np.frombuffer(data[44:], dtype="<i2")
        assert np.abs(samples).max() > 300  # audible speech, not silence
    for name, data in _select(files, rf"{ROOT}/Session[1-5]/dialog/wav/(?!\._)[^/]+\.wav").items():
        assert _wav_fields(data)[6:8] == (2, 16_000)


def test_durations_follow_mean_seconds():
    plan = plan_corpus(SynthConfig(per_class=300, mean_seconds=4.5))
    seconds = np.array(list(plan.truth(Path()).durations.values()))
    assert 4.0 < seconds.mean() < 5.0 and np.median(seconds) < seconds.mean()  # right-skewed like IEMOCAP
    assert seconds.min() >= 0.25


# --- learnability ---------------------------------------------------------------------------------------------

def test_cue_fractions_match_config():
    truth = plan_corpus(SynthConfig(per_class=500, text_informative=0.6, audio_informative=0.3)).truth(Path())
    emotive = [u for u, c in truth.codes.items() if c in BANKS]
    text = np.array([truth.text_cue[u] for u in emotive])
    audio = np.array([truth.audio_cue[u] for u in emotive])
    assert abs(text.mean() - 0.6) < 0.04 and abs(audio.mean() - 0.3) < 0.04
    assert abs((text & audio).mean() - 0.18) < 0.04  # independent draws
    assert not any(truth.text_cue[u] or truth.audio_cue[u] for u, c in truth.codes.items() if c in ("oth", "xxx"))
    none = plan_corpus(SynthConfig(per_class=50, text_informative=0.0, audio_informative=0.0)).truth(Path())
    assert not any(none.text_cue.values()) and not any(none.audio_cue.values())


def test_wording_carries_the_label_only_when_informative(corpus):
    truth = corpus[0]
    bank_of = {c: [s.lower().rstrip(".!?") for s in BANKS[c]] for c in ("ang", "hap", "sad", "neu")}
    for utt, text in truth.texts.items():
        low = text.lower()
        hits = {c for c, bank in bank_of.items() if any(s in low for s in bank)}
        code = "hap" if truth.codes[utt] == "exc" else truth.codes[utt]
        if truth.text_cue[utt] and code in bank_of:
            assert hits == {code}, (utt, text)
        elif not truth.text_cue[utt]:
            assert not hits, (utt, text)


def test_prosody_carries_the_label_only_when_informative():
    voice = speaker_voices(0)["Ses02M"]
    rng = np.random.default_rng(0)

    def loudness(code):
        return np.mean([np.sqrt(np.mean(render_speech(16_000, voice, code, rng) ** 2)) for _ in range(12)])

    ang, hap, neu, sad = (loudness(c) for c in ("ang", "hap", "neu", "sad"))
    assert ang > hap > neu > 1.3 * sad
    # Without a cue the prosody comes from one neutral-ish distribution, whatever the label.
    assert 0.7 < loudness(None) / neu < 1.4


def test_rerun_with_same_config_keeps_the_archive_file(tmp_path):
    """`make demo` twice: an unchanged archive keeps its mtime, so the cache (fingerprinted on it) and runs stay valid."""
    config = SynthConfig(per_class=2, seed=1, mean_seconds=0.4)
    first = synthesize(tmp_path, config).archive
    stamp = first.stat().st_mtime_ns
    os.utime(first, ns=(stamp - 10**9, stamp - 10**9))
    synthesize(tmp_path, config)
    assert first.stat().st_mtime_ns == stamp - 10**9
    synthesize(tmp_path, SynthConfig(per_class=2, seed=2, mean_seconds=0.4))
    assert first.stat().st_mtime_ns != stamp - 10**9
