"""Every kind of audio file a user may hand over, through `emocli prepare` (a manifest corpus) and `emocli predict`
(a folder), with the same verdict in both: decoded (resampled, mixed to mono, clipped, truncated) or skipped with
one line naming the file and why, while the rest goes on. Also: brackets and line breaks in names and transcripts
are printed as they are, on one line.

The table this pins down (prepare = `emocli prepare manifest.csv`, predict = `emocli predict RUN folder/`):

| file                                   | prepare and predict                                                  |
|----------------------------------------|----------------------------------------------------------------------|
| 16-bit, 8-bit, 24-bit, float, double    | decoded                                                              |
| mu-law wav                             | decoded                                                              |
| 44.1 kHz stereo, 48 kHz 6 channels     | decoded: channels averaged, resampled to 16 kHz                      |
| 8 kHz mono                             | decoded, resampled to 16 kHz                                         |
| clipped PCM (full-scale square)        | decoded as is                                                        |
| float beyond full scale (+-4.0)        | decoded, clipped to [-1, 1] per channel before mixing and resampling |
| FLAC, Ogg Vorbis or MP3 named .wav     | decoded (by content, not by name)                                    |
| 10 minutes long                        | decoded, only the first 15 s read (max_seconds)                      |
| empty (0 bytes)                        | skipped: "empty" (prepare: a bad manifest row; predict: "empty file")|
| header only / header claiming samples  | skipped: "no samples (header only)"                                  |
| all-zero samples                       | skipped: "silent (peak amplitude below 0.0001)"                      |
| NaN or inf samples                     | skipped: "contains NaN or infinite samples; re-export it as PCM"     |
| shorter than 0.1 s                     | skipped: "too short"                                                 |
| a text file named .wav                 | skipped: "not a readable audio file"                                 |
"""

from __future__ import annotations

import csv
import io
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from emocli import cache
from emocli.features import FeatureConfig, audio_features
from emocli.model import ModelConfig
from emocli.train import TrainConfig, train
from test_reliability_common import assert_refused, cli, lines, no_traceback, tone
from test_train import make_cache

RATE = 16_000
HOP = 160
SECOND_FRAMES = 1 + RATE // HOP  # frames of one second at 16 kHz
MP3 = "MP3" in sf.available_formats()


def _write(path: Path, samples: np.ndarray, rate: int = RATE, **kwargs) -> None:
    sf.write(path, samples, rate, **kwargs)


def _renamed(path: Path, samples: np.ndarray, fmt: str, subtype: str | None = None) -> None:
    buffer = io.BytesIO()
    sf.write(buffer, samples, RATE, format=fmt, subtype=subtype)
    path.write_bytes(buffer.getvalue())


def _header_claiming_a_second(path: Path) -> None:
    """A 16-bit mono header that announces 32,000 bytes of samples, and nothing after it."""
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, RATE, 2 * RATE, 2, 16)
    size = struct.pack("<I", 2 * RATE)
    path.write_bytes(b"RIFF" + struct.pack("<I", 36 + 2 * RATE) + b"WAVEfmt " + fmt + b"data" + size)


def _with(value: float) -> np.ndarray:
    y = tone(1.0)
    y[1000] = value
    return y


def _ten_minutes(path: Path) -> None:
    with sf.SoundFile(path, "w", RATE, 1, subtype="PCM_16") as handle:
        block = tone(10.0)
        for _ in range(60):
            handle.write(block)


# name -> (writer(path), expected frames if decoded (None: not exact) or the words of its skip line)
CASES: dict[str, tuple] = {
    "pcm16.wav": (lambda p: _write(p, tone(1.0), subtype="PCM_16"), SECOND_FRAMES),
    "pcm_u8.wav": (lambda p: _write(p, tone(1.0), subtype="PCM_U8"), SECOND_FRAMES),
    "pcm24.wav": (lambda p: _write(p, tone(1.0), subtype="PCM_24"), SECOND_FRAMES),
    "float32.wav": (lambda p: _write(p, tone(1.0), subtype="FLOAT"), SECOND_FRAMES),
    "float64.wav": (lambda p: _write(p, tone(1.0).astype(np.float64), subtype="DOUBLE"), SECOND_FRAMES),
    "ulaw.wav": (lambda p: _write(p, tone(1.0), subtype="ULAW"), SECOND_FRAMES),
    "stereo_44k.wav": (lambda p: _write(p, np.stack([tone(1.0, 44_100), tone(1.0, 44_100, 330.0)], 1), 44_100,
                                        subtype="PCM_16"), SECOND_FRAMES),
    "six_channels_48k_24bit.wav": (lambda p: _write(p, np.stack([tone(1.0, 48_000, 100.0 + 50 * k)
                                                                 for k in range(6)], 1), 48_000, subtype="PCM_24"),
                                   SECOND_FRAMES),
    "mono_8k.wav": (lambda p: _write(p, tone(1.0, 8_000), 8_000, subtype="PCM_16"), SECOND_FRAMES),
    "clipped_pcm.wav": (lambda p: _write(p, np.sign(tone(1.0)), subtype="PCM_16"), SECOND_FRAMES),
    "float_beyond_full_scale.wav": (lambda p: _write(p, 4.0 * np.stack([tone(1.0, 44_100)] * 2, 1) / 0.3, 44_100,
                                                     subtype="FLOAT"), SECOND_FRAMES),
    "flac_named.wav": (lambda p: _renamed(p, tone(1.0), "FLAC"), SECOND_FRAMES),
    "ogg_named.wav": (lambda p: _renamed(p, tone(1.0), "OGG", "VORBIS"), None),
    "ten_minutes.wav": (_ten_minutes, 1 + 15 * RATE // HOP),
    "empty.wav": (lambda p: p.write_bytes(b""), "empty"),
    "header_only.wav": (lambda p: _write(p, np.zeros(0, np.float32), subtype="PCM_16"), "no samples (header only)"),
    "header_claiming_samples.wav": (_header_claiming_a_second, "no samples (header only)"),
    "all_zero.wav": (lambda p: _write(p, np.zeros(RATE, np.float32), subtype="PCM_16"), "silent"),
    "nan.wav": (lambda p: _write(p, _with(np.nan), subtype="FLOAT"), "contains NaN or infinite samples"),
    "inf.wav": (lambda p: _write(p, _with(np.inf), subtype="FLOAT"), "contains NaN or infinite samples"),
    "too_short.wav": (lambda p: _write(p, tone(0.05), subtype="PCM_16"), "too short"),
    "text_named.wav": (lambda p: p.write_text("this is a text file, not audio\n" * 20), "not a readable audio file"),
}
if MP3:  # libsndfile >= 1.1 encodes MPEG; on an older build the mp3 case is left out
    CASES["mp3_named.wav"] = (lambda p: _renamed(p, tone(1.0), "MP3", "MPEG_LAYER_III"), None)
DECODED = sorted(name for name, (_, want) in CASES.items() if not isinstance(want, str))
SKIPPED = sorted(name for name, (_, want) in CASES.items() if isinstance(want, str))


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("audio") / "files"
    folder.mkdir()
    for name, (write, _) in CASES.items():
        write(folder / name)
    return folder


@pytest.fixture(scope="module")
def run(tiny_bert_dir, tmp_path_factory) -> Path:
    """A tiny trained fusion run (64 mel bands, as the cache of tests/test_train.py)."""
    folder = tmp_path_factory.mktemp("audio-run")
    config = ModelConfig(n_mels=64, modality="both", audio_width=0.0625, text_model=str(tiny_bert_dir),
                         text_hidden=32, fusion_hidden=16, freeze_text=True)
    train(make_cache(folder / "cache.h5", tiny_bert_dir), folder / "run", config,
          TrainConfig(repeats=1, epochs=1, batch_size=8, device="cpu"))
    return folder / "run"


def _skip_lines(stderr: str, prefix: str) -> dict[str, str]:
    out = {}
    for line in lines(stderr):
        for name in CASES:
            if name in line and line.startswith(prefix):
                assert name not in out, f"two lines for {name}"
                out[name] = line
    return out


def test_prepare_decodes_or_skips_each_file_with_one_line(audio, tiny_bert_dir, tmp_path):
    classes = ("ang", "hap", "sad", "neu")
    manifest = tmp_path / "corpus.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        rows = [(str(audio / name), f"the words of {name}", classes[k % 4]) for k, name in enumerate(sorted(CASES))]
        csv.writer(handle).writerows([("path", "text", "label"), *rows])
    result = cli("prepare", manifest, "--cache", tmp_path / "c.h5", "--text-model", tiny_bert_dir, "--n-mels", 64,
                 "--workers", 1)
    assert result.exit_code == 0, result.stderr
    no_traceback(result)
    skipped = _skip_lines(result.stderr, "skipped ")
    assert sorted(skipped) == SKIPPED and len(lines(result.stderr)) == len(SKIPPED), result.stderr
    for name in SKIPPED:
        assert CASES[name][1] in skipped[name], skipped[name]

    data = cache.read_cache(tmp_path / "c.h5")
    ids = [Path(p).name for p in data.audio_paths]
    assert sorted(ids) == DECODED
    features = FeatureConfig(n_mels=64)
    for i, name in enumerate(ids):
        spec = data.spectrogram(i)  # (n_mels, T)
        assert np.isfinite(spec).all() and spec.shape[0] == 64
        want = CASES[name][1]
        if want is not None:
            assert abs(spec.shape[1] - want) <= 1, (name, spec.shape)
        else:
            assert 0.9 * SECOND_FRAMES <= spec.shape[1] <= 1.3 * SECOND_FRAMES, (name, spec.shape)
        assert 0.1 <= data.durations[i] <= 15.0
        # The very features predict computes for this file (predict's test checks the model sees them).
        again = audio_features(audio / name, features)[0]
        np.testing.assert_array_equal(spec, again.astype(np.float16).astype(np.float32))


def test_predict_decodes_or_skips_each_file_with_one_line(audio, run, tmp_path):
    out = tmp_path / "predictions.csv"
    # Whole files only (the ten-minute tone would otherwise be searched for speech): each file decoded or refused.
    result = cli("predict", run, audio, "--output", out, "--segment", "never", "--asr", "off")
    assert result.exit_code == 1  # some files failed
    no_traceback(result)
    skipped = _skip_lines(result.stderr, "skipped ")
    assert sorted(skipped) == SKIPPED, result.stderr
    for name in SKIPPED:
        want = "empty file" if name == "empty.wav" else CASES[name][1]
        assert skipped[name].startswith(f"skipped {name}: ") and want in skipped[name], skipped[name]
    assert lines(result.stderr)[-1] == f"{len(SKIPPED)} of {len(CASES)} file(s) could not be predicted"
    # and the one truncated file is said so, on a line of its own
    assert [line for line in lines(result.stderr) if "only its first 15 s were classified" in line] == \
        ["ten_minutes.wav: 600.0 s long: only its first 15 s were classified (--segment auto classifies every "
         "utterance of it)"]
    assert len(lines(result.stderr)) == len(SKIPPED) + 2
    with open(out, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(row["id"] for row in rows) == DECODED
    for row in rows:
        probs = np.array([float(row[f"p_{c}"]) for c in ("angry", "happy", "sad", "neutral")])
        assert np.isfinite(probs).all() and probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_a_single_bad_file_is_refused_by_predict_in_one_line(audio, run):
    result = cli("predict", run, audio / "nan.wav", "--text", "hello", "--asr", "off")
    assert result.exit_code == 1
    no_traceback(result)
    assert lines(result.stderr) == ["skipped nan.wav: contains NaN or infinite samples; re-export it as PCM",
                                    "1 of 1 file(s) could not be predicted"]


# --------------------------------------------------------------------------------------------- names and transcripts


def test_brackets_in_a_path_or_transcript_are_text_not_markup(audio, run, tmp_path):
    missing = tmp_path / "[/]odd [bold]name.tar.gz"
    line = assert_refused(cli("prepare", missing, "--cache", tmp_path / "c.h5"), "does not exist")
    assert str(missing) in line  # shown as typed: rich neither eats "[bold]" nor fails on "[/]"
    result = cli("predict", run, audio / "pcm16.wav", "--text", "[/] so [bold]angry[/bold] [LAUGHTER]")
    assert result.exit_code == 0, result.stderr
    no_traceback(result)
    assert "[/] so [bold]angry[/bold]" in result.stdout


def test_line_breaks_in_file_names_and_ids_stay_on_one_line(audio, run, tiny_bert_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.wav").write_bytes((audio / "pcm16.wav").read_bytes())
    (folder / "bad\nname.wav").write_bytes((audio / "text_named.wav").read_bytes())
    (folder / "[bold]bad.wav").write_bytes((audio / "nan.wav").read_bytes())
    result = cli("predict", run, folder)
    assert result.exit_code == 1
    no_traceback(result)
    count, bracketed, broken = sorted(lines(result.stderr))
    assert count == "2 of 3 file(s) could not be predicted"
    assert bracketed == "skipped [bold]bad.wav: contains NaN or infinite samples; re-export it as PCM"
    assert broken.startswith("skipped bad\\nname.wav: not a readable audio file (")

    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("id", "path", "text", "label"), ("ok", audio / "pcm16.wav", "fine", "neu"),
                                      ("two\nlines", audio / "text_named.wav", "bad", "ang")])
    result = cli("prepare", manifest, "--cache", tmp_path / "c.h5", "--text-model", tiny_bert_dir, "--n-mels", 64,
                 "--workers", 1)
    assert result.exit_code == 0, result.stderr
    assert len(lines(result.stderr)) == 1 and lines(result.stderr)[0].startswith("skipped two\\nlines: ")


# --------------------------------------------------------------------------------------------- a manifest's audio


def test_a_manifest_cache_is_rebuilt_when_a_listed_wav_changes_or_appears(audio, tiny_bert_dir, tmp_path):
    """The manifest's own bytes unchanged: a replaced wav, or one that was missing and now exists, still rebuilds."""
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.wav").write_bytes((audio / "pcm16.wav").read_bytes())
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,text,label\na.wav,x,ang\nb.wav,y,sad\nc.wav,z,neu\nlater.wav,w,hap\n")
    args = ["prepare", manifest, "--cache", tmp_path / "c.h5", "--text-model", tiny_bert_dir, "--n-mels", 64,
            "--workers", 1, "--json"]

    def run_once() -> dict:
        result = cli(*args)
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    first = run_once()
    assert first["utterances"] == 3 and run_once()["cache_hit"]
    _write(tmp_path / "b.wav", tone(1.0, freq=440.0), subtype="PCM_16")  # same name, other sound
    second = run_once()
    assert not second["cache_hit"] and second["fingerprint"] != first["fingerprint"]
    assert run_once()["cache_hit"]
    (tmp_path / "later.wav").write_bytes((audio / "flac_named.wav").read_bytes())
    third = run_once()
    assert not third["cache_hit"] and third["utterances"] == 4
