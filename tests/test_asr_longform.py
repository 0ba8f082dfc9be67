"""Real recordings: the generated corpus speaks (eSpeak NG), the offline recogniser transcribes it, long recordings
are cut into utterances by voice-activity detection and come back as a timeline. Everything runs the real packaged
models (Whisper tiny.en, Silero VAD, eSpeak NG) on a few seconds of speech."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emocli.asr import Recogniser, corpus_wer, normalise_for_wer, word_errors
from emocli.corpus.iemocap import ReaderConfig, read_iemocap
from emocli.features import load_audio
from emocli.longform import SegmentConfig, speech_segments, stream_audio, time_shares
from emocli.synth import SynthConfig, synthesize
from test_reliability_common import cli, lines, no_traceback

RATE = 16_000


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("spoken"), SynthConfig(per_class=3, seed=11, fmt="dir",
                                                                     speech="espeak"))


def wav_of(truth, utt_id: str) -> Path:
    return Path(truth.archive) / f"Session{int(utt_id[4])}" / "sentences" / "wav" / utt_id.rsplit("_", 1)[0] / \
        f"{utt_id}.wav"


@pytest.fixture(scope="module")
def long_recording(spoken, tmp_path_factory) -> tuple[Path, list[tuple[float, float, str]]]:
    """Eight spoken utterances with 1-2 s pauses between them, and where each one's audio lies."""
    rng = np.random.default_rng(0)
    parts, truth, at = [], [], 0.0
    for utt_id in sorted(spoken.codes)[:8]:
        gap = np.zeros(int(rng.uniform(1.0, 2.0) * RATE), np.float32)
        audio = load_audio(wav_of(spoken, utt_id), RATE)
        parts += [gap, audio]
        at += gap.size / RATE
        truth.append((at, at + audio.size / RATE, utt_id))
        at += audio.size / RATE
    parts.append(np.zeros(RATE, np.float32))
    path = tmp_path_factory.mktemp("long") / "session.wav"
    sf.write(path, np.concatenate(parts), RATE, subtype="PCM_16")
    return path, truth


@pytest.fixture(scope="module")
def run(tiny_bert_dir, tmp_path_factory) -> Path:
    from test_train import make_cache

    folder = tmp_path_factory.mktemp("run")
    path = make_cache(folder / "cache.h5", tiny_bert_dir)
    assert cli("train", path, "--run", folder / "run", "--protocol", "loso", "--epochs", "1", "--audio-width",
               "0.0625", "--freeze-text", "--json").exit_code == 0
    return folder / "run"


# --------------------------------------------------------------------------------------------- the spoken corpus


def test_the_spoken_corpus_is_deterministic_and_keeps_the_layout(spoken, tmp_path):
    again = synthesize(tmp_path, SynthConfig(per_class=3, seed=11, fmt="dir", speech="espeak"))
    for utt_id in sorted(spoken.codes):
        assert wav_of(spoken, utt_id).read_bytes() == wav_of(again, utt_id).read_bytes()
        # the checklist's invariant: the wav holds floor(duration * 16000) samples
        assert sf.info(wav_of(spoken, utt_id)).frames == int(spoken.durations[utt_id] * RATE)
    report = read_iemocap(spoken.archive, ReaderConfig(), tmp_path / "work")
    assert {u.utt_id for u in report.utterances} == {u for u, c in spoken.codes.items()
                                                     if c in ("ang", "hap", "exc", "sad", "neu")}


def test_generated_speech_is_transcribed_well_enough_to_measure(spoken):
    recogniser = Recogniser.load()
    ids = sorted(spoken.codes)[:10]
    hyps = [recogniser.transcribe(load_audio(wav_of(spoken, u), RATE)).text for u in ids]
    wer = corpus_wer([spoken.texts[u] for u in ids], hyps)
    assert wer is not None and wer < 0.35, list(zip(ids, hyps))  # 15.5 % measured on 100 utterances


def test_silence_gives_no_words_and_no_confidence():
    heard = Recogniser.load().transcribe(np.zeros(RATE, np.float32))
    assert heard.text == "" and heard.confidence is None


def test_word_error_rate_counts_edits_over_reference_words():
    assert word_errors("the cat sat", "the cat sat") == (0, 3)
    assert word_errors("the cat sat", "a cat sat down") == (2, 3)  # one substitution, one insertion
    assert word_errors("Don't! [LAUGHTER] stop", "don't stop") == (0, 2)  # case, punctuation, tags ignored
    assert corpus_wer(["a b", "c d e"], ["a b", ""]) == pytest.approx(3 / 5)  # errors over all words, not a mean
    assert normalise_for_wer("It’s  OK.") == ["it's", "ok"]


# --------------------------------------------------------------------------------------------- segmentation


def test_vad_finds_each_utterance_of_a_long_recording(long_recording):
    path, truth = long_recording
    segments = list(speech_segments(path))
    assert len(segments) == len(truth)
    for segment, (start, end, _) in zip(segments, truth):
        assert abs(segment.start - start) < 0.35 and abs(segment.end - end) < 0.35
        assert segment.audio.size == pytest.approx((segment.end - segment.start) * RATE, abs=2)


def test_streaming_in_small_blocks_gives_what_large_blocks_give(long_recording, monkeypatch):
    from emocli import longform

    path, _ = long_recording
    whole = np.concatenate(list(stream_audio(path, block_s=1000)))
    assert np.array_equal(np.concatenate(list(stream_audio(path, block_s=0.7))), whole)
    big = [(s.start, s.end) for s in speech_segments(path)]
    monkeypatch.setattr(longform, "READ_BLOCK_S", 0.37)
    original = longform.stream_audio
    monkeypatch.setattr(longform, "stream_audio", lambda p, block_s=0.37, on_damage=None: original(p, block_s, on_damage))
    assert [(s.start, s.end) for s in speech_segments(path)] == big


def test_a_long_utterance_is_cut_near_the_window(long_recording, tmp_path):
    path, truth = long_recording
    audio, _ = sf.read(path, dtype="float32")
    glued = np.concatenate([audio[int(s * RATE):int(e * RATE)] for s, e, _ in truth])  # no pauses at all
    sf.write(tmp_path / "glued.wav", glued, RATE)
    segments = list(speech_segments(tmp_path / "glued.wav", SegmentConfig(max_segment_s=6.0)))
    assert len(segments) >= 2 and all(s.end - s.start <= 6.0 + 1e-6 for s in segments)
    assert segments[0].start < 0.5 and segments[-1].end > glued.size / RATE - 0.5  # nothing lost at the ends


def test_time_shares_are_by_duration():
    shares = time_shares([(0, 1, "ang"), (1, 4, "sad")], ("ang", "sad", "neu"))
    assert shares == {"ang": 0.25, "sad": 0.75, "neu": 0.0}


# --------------------------------------------------------------------------------------------- predict


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_predict_transcribes_what_has_no_transcript_and_says_so(run, spoken, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    a, b = sorted(spoken.codes)[:2]
    (folder / "given.wav").write_bytes(wav_of(spoken, a).read_bytes())
    (folder / "given.txt").write_text("a transcript I wrote\n")
    (folder / "heard.wav").write_bytes(wav_of(spoken, b).read_bytes())
    result = cli("predict", run, folder, "--output", tmp_path / "p.csv")
    assert result.exit_code == 0, result.stderr
    rows = {r["id"]: r for r in read_csv(tmp_path / "p.csv")}
    assert rows["given.wav"]["text_source"] == "given" and rows["given.wav"]["asr_confidence"] == ""
    heard = rows["heard.wav"]
    assert heard["text_source"] == "asr" and 0 < float(heard["asr_confidence"]) <= 1
    assert word_errors(spoken.texts[b], heard["text"])[0] <= 3 and heard["audio_only"] == "False"
    off = cli("predict", run, folder, "--output", tmp_path / "off.jsonl", "--asr", "off")
    assert off.exit_code == 0
    rows = {json.loads(line)["id"]: json.loads(line) for line in (tmp_path / "off.jsonl").read_text().splitlines()}
    assert rows["heard.wav"]["text_source"] == "none" and rows["heard.wav"]["audio_only"] is True


def test_a_long_recording_becomes_a_timeline(run, long_recording, tmp_path):
    path, truth = long_recording
    result = cli("predict", run, path, "--output", tmp_path / "t.csv", "--plot", tmp_path / "plots",
                 "--max-seconds", 5)
    assert result.exit_code == 0, result.stderr
    rows = read_csv(tmp_path / "t.csv")
    assert len(rows) == len(truth)
    for row, (start, end, _) in zip(rows, truth):
        assert abs(float(row["start"]) - start) < 0.35 and abs(float(row["end"]) - end) < 0.35
        assert row["text_source"] == "asr" and row["text"]
        assert sum(float(row[f"p_{c}"]) for c in ("angry", "happy", "sad", "neutral")) == pytest.approx(1, abs=1e-4)
    png = tmp_path / "plots" / "session.wav.timeline.png"
    assert png.read_bytes().startswith(b"\x89PNG")
    assert "share of speech time per emotion" in result.stdout


def test_never_segmenting_says_what_was_truncated(run, long_recording, tmp_path):
    path, _ = long_recording
    result = cli("predict", run, path, "--segment", "never", "--max-seconds", 5, "--asr", "off")
    assert result.exit_code == 0
    (line,) = lines(result.stderr)
    assert line.startswith("session.wav: ") and "only its first 5 s were classified" in line


def test_a_recording_without_speech_is_one_line_and_the_rest_goes_on(run, long_recording, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    path, truth = long_recording
    (folder / "talk.wav").write_bytes(path.read_bytes())
    t = np.arange(40 * RATE) / RATE
    sf.write(folder / "hum.wav", (0.2 * np.sin(2 * np.pi * 110 * t)).astype(np.float32), RATE)  # 40 s, no speech
    sf.write(folder / "quiet.wav", np.zeros(40 * RATE, np.float32), RATE)
    result = cli("predict", run, folder, "--output", tmp_path / "p.csv", "--max-seconds", 5, "--asr", "off")
    assert result.exit_code == 1
    no_traceback(result)
    skipped = sorted(line for line in lines(result.stderr) if line.startswith("skipped "))
    assert [s.split(":")[0] for s in skipped] == ["skipped hum.wav", "skipped quiet.wav"]
    assert all("no speech found" in s for s in skipped)
    assert {r["id"] for r in read_csv(tmp_path / "p.csv")} == {"talk.wav"}


def test_a_recording_damaged_part_way_keeps_the_utterances_before(run, long_recording, tmp_path):
    path, truth = long_recording
    audio, _ = sf.read(path, dtype="float32")
    flac = tmp_path / "damaged.flac"
    sf.write(flac, audio, RATE, format="FLAC")
    data = bytearray(flac.read_bytes())
    middle = len(data) * 3 // 4
    data[middle:middle + 4000] = bytes(4000)  # zeroed frames three quarters in
    flac.write_bytes(bytes(data))
    result = cli("predict", run, flac, "--output", tmp_path / "p.csv", "--max-seconds", 5, "--asr", "off")
    assert result.exit_code == 1
    no_traceback(result)
    (line,) = [x for x in lines(result.stderr) if x.startswith("skipped ")]
    assert line.startswith("skipped damaged.flac: cannot decode ") and "the rest of the recording was predicted" in line
    span = line.split("cannot decode ")[1].split(" s (")[0]
    bad_from, bad_to = map(float, span.split("-"))
    rows = read_csv(tmp_path / "p.csv")
    # every utterance that does not touch the damaged stretch is there, at its place
    clear = [(s, e) for s, e, _ in truth if e < bad_from - 0.3 or s > bad_to + 0.3]
    found = [(float(r["start"]), float(r["end"])) for r in rows]
    for s, e in clear:
        assert any(abs(s - fs) < 0.35 and abs(e - fe) < 0.35 for fs, fe in found), (s, e, found)
    assert any(s > bad_to for s, _ in clear)  # the test damages the middle, not the end


def test_a_timeline_never_replaces_a_png_emocli_did_not_write(run, long_recording, tmp_path):
    path, _ = long_recording
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "session.wav.timeline.png").write_bytes(b"\x89PNG\r\n\x1a\nsomeone else's picture")
    result = cli("predict", run, path, "--plot", plots, "--max-seconds", 5, "--asr", "off")
    assert result.exit_code == 1 and "not a timeline emocli wrote" in result.stderr
    assert (plots / "session.wav.timeline.png").read_bytes().endswith(b"someone else's picture")


# --------------------------------------------------------------------------------------------- gold against recognised


def test_a_cache_of_recognised_transcripts_keeps_the_gold_and_eval_compares_them(run, spoken, tiny_bert_dir, tmp_path):
    from emocli import cache
    from emocli.features import FeatureConfig
    from emocli.prepare import PrepareConfig, prepare
    from test_train import MAX_TOKENS, N_MELS

    features = FeatureConfig(n_mels=N_MELS, max_tokens=MAX_TOKENS)
    gold = prepare(spoken.archive, tmp_path / "gold.h5", PrepareConfig(text_model=str(tiny_bert_dir),
                                                                        features=features, workers=1))
    asr = prepare(spoken.archive, tmp_path / "asr.h5", PrepareConfig(text_model=str(tiny_bert_dir), features=features,
                                                                      workers=1, transcripts="asr"))
    assert asr.fingerprint != gold.fingerprint
    gold_data, asr_data = cache.read_cache(tmp_path / "gold.h5"), cache.read_cache(tmp_path / "asr.h5")
    assert gold_data.gold_texts is None and "transcripts" not in gold_data.meta.inputs  # gold caches unchanged
    assert asr_data.gold_texts == gold_data.texts and asr_data.utt_ids == gold_data.utt_ids
    assert asr_data.texts != gold_data.texts and corpus_wer(asr_data.gold_texts, asr_data.texts) < 0.5
    assert asr_data.meta.inputs["transcripts"]["source"] == "asr"

    result = cli("eval", run, "--cache", tmp_path / "asr.h5", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    transcripts = report["transcripts"]
    assert transcripts["wer"] == pytest.approx(corpus_wer(asr_data.gold_texts, asr_data.texts))
    with_gold = cli("eval", run, "--cache", tmp_path / "gold.h5", "--json")
    gold_report = json.loads(with_gold.stdout)
    # the gold-text scores of the recognised cache are exactly the gold cache's scores
    assert transcripts["with_gold"]["ua"]["mean"] == pytest.approx(gold_report["mean"]["ua"])
    assert gold_report["transcripts"] is None
    shown = cli("eval", run, "--cache", tmp_path / "asr.h5")
    assert "word error rate" in shown.stdout and "with the gold text" in shown.stdout


def test_a_manifest_without_transcripts_is_prepared_with_recognised_text(spoken, tiny_bert_dir, tmp_path):
    from emocli import cache

    manifest = tmp_path / "m.csv"
    ids = sorted(spoken.codes)[:8]
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        writer.writerows([(wav_of(spoken, u), {"exc": "hap"}.get(spoken.codes[u], spoken.codes[u])) for u in ids
                          if spoken.codes[u] in ("ang", "hap", "exc", "sad", "neu")])
    result = cli("prepare", manifest, "--cache", tmp_path / "c.h5", "--text-model", tiny_bert_dir, "--n-mels", 64,
                 "--workers", 1, "--transcripts", "asr")
    assert result.exit_code == 0, result.stderr
    data = cache.read_cache(tmp_path / "c.h5")
    assert all(data.texts) and data.gold_texts == [""] * len(data)
    assert cli("prepare", manifest, "--cache", tmp_path / "d.h5", "--transcripts", "ocr").exit_code == 1
