"""The shared preprocessing path: decoding any audio, the log-mel, tokenisation."""


from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from emocli.errors import AudioError
from emocli.features import FeatureConfig, audio_features, load_audio, log_mel, to_float16, tokenize

RATE = 16_000


def _tone(seconds: float, rate: int = RATE, freq: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_log_mel_equals_librosa():
    y = np.random.default_rng(0).standard_normal(RATE * 2).astype(np.float32) * 0.1
    cfg = FeatureConfig()
    ref = librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=RATE, n_fft=512, hop_length=160, win_length=400,
                                                             n_mels=128, fmin=0, fmax=8000), ref=1.0, amin=1e-10,
                              top_db=None)
    ours = log_mel(y, cfg)
    assert ours.shape == ref.shape == (128, 1 + len(y) // 160)
    np.testing.assert_allclose(ours, ref, atol=1e-3)


def test_loudness_is_kept(tmp_path):
    # Absolute dB, not per-file normalised: a louder copy must have a higher mean level.
    cfg = FeatureConfig()
    quiet, loud = log_mel(_tone(1.0) * 0.1, cfg), log_mel(_tone(1.0), cfg)
    assert loud.max() - quiet.max() == pytest.approx(20.0, abs=0.1)  # 10x amplitude = +20 dB


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_U8", "FLOAT"])
def test_any_pcm_subtype_decodes(tmp_path, subtype):
    path = tmp_path / "a.wav"
    sf.write(path, _tone(0.5), RATE, subtype=subtype)
    audio = load_audio(path)
    assert audio.dtype == np.float32 and len(audio) == RATE // 2
    assert np.abs(audio).max() == pytest.approx(0.3, abs=0.02)


def _wav_bytes(samples: np.ndarray, rate: int = RATE, channels: int = 1, bits: int = 16, fmt_tag: int = 1,
               extra_chunk: bytes = b"", data_bytes: int | None = None, trailing: bytes = b"") -> bytes:
    """A hand-made wav: the canonical 44-byte layout unless one field is bent."""
    import struct

    data = samples.astype("<i2").tobytes()
    declared = len(data) if data_bytes is None else data_bytes
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate, rate * channels * bits // 8, channels * bits // 8, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + extra_chunk + b"data" + struct.pack("<I", declared)
    return b"RIFF" + struct.pack("<I", len(body) + len(data) + len(trailing)) + body + data + trailing


def test_canonical_wavs_are_read_by_numpy_as_libsndfile_reads_them(tmp_path):
    """IEMOCAP's layout (and what soundfile and the generator write) takes the numpy path; the samples are the
    very floats libsndfile gives, full scale and truncation to max_seconds included."""
    from emocli.features import _read_canonical_wav

    raw = np.random.default_rng(0).integers(-32768, 32768, size=RATE, dtype=np.int16)
    raw[:2] = [-32768, 32767]
    handmade, written = tmp_path / "handmade.wav", tmp_path / "soundfile.wav"
    handmade.write_bytes(_wav_bytes(raw))
    sf.write(written, raw, RATE, subtype="PCM_16")
    for path in (handmade, written):
        assert _read_canonical_wav(path, path.stat().st_size, None) is not None, path.name
        reference = sf.read(path, dtype="float32")[0]
        np.testing.assert_array_equal(load_audio(path), reference)
        np.testing.assert_array_equal(load_audio(path, max_seconds=0.25), reference[: RATE // 4])
    other_rate = tmp_path / "8k.wav"  # canonical at another rate: read by numpy, resampled as any other file
    other_rate.write_bytes(_wav_bytes(raw, rate=8000))
    assert _read_canonical_wav(other_rate, other_rate.stat().st_size, None) is not None
    expected = librosa.resample(sf.read(other_rate, dtype="float32")[0], orig_sr=8000, target_sr=RATE, res_type="soxr_hq")
    np.testing.assert_array_equal(load_audio(other_rate), np.clip(expected, -1.0, 1.0))


@pytest.mark.parametrize("bent", ["extra chunk", "stereo", "24 bit", "extensible", "truncated", "trailing chunk"])
def test_other_wav_layouts_go_to_libsndfile_and_decode_as_before(tmp_path, bent):
    from emocli.features import _read_canonical_wav

    raw = np.random.default_rng(1).integers(-20000, 20000, size=RATE // 2, dtype=np.int16)
    variants = {
        "extra chunk": dict(extra_chunk=b"LIST" + (4).to_bytes(4, "little") + b"INFO"),
        "stereo": dict(channels=2),
        "24 bit": None,
        "extensible": None,
        "truncated": dict(data_bytes=raw.nbytes + 4000),
        "trailing chunk": dict(trailing=b"junk" + (4).to_bytes(4, "little") + b"abcd"),
    }
    path = tmp_path / "bent.wav"
    if bent == "24 bit":
        sf.write(path, raw, RATE, subtype="PCM_24")
    elif bent == "extensible":
        sf.write(path, np.stack([raw, raw], axis=1), RATE, subtype="PCM_16", format="WAVEX")
    else:
        path.write_bytes(_wav_bytes(raw, **variants[bent]))
    assert _read_canonical_wav(path, path.stat().st_size, None) is None
    reference = sf.read(path, dtype="float32", always_2d=True)[0]
    expected = reference[:, 0] if reference.shape[1] == 1 else np.clip(reference.mean(axis=1), -1.0, 1.0)
    np.testing.assert_array_equal(load_audio(path), expected)


@pytest.mark.parametrize("channels", [1, 2])
def test_pcm16_decodes_to_exactly_libsndfiles_floats(tmp_path, channels):
    """PCM_16 is converted by numpy, not libsndfile (2x faster): the samples must be the very same floats,
    full scale included."""
    rng = np.random.default_rng(channels)
    raw = rng.integers(-32768, 32768, size=(RATE // 2, channels), dtype=np.int16)
    raw[:2] = [[-32768] * channels, [32767] * channels]
    path = tmp_path / "a.wav"
    sf.write(path, raw, RATE, subtype="PCM_16")
    reference = sf.read(path, dtype="float32", always_2d=True)[0]
    expected = np.clip(reference[:, 0] if channels == 1 else reference.mean(axis=1), -1.0, 1.0)
    np.testing.assert_array_equal(load_audio(path), expected)


def test_stereo_44k_is_mixed_and_resampled(tmp_path):
    path = tmp_path / "s.wav"
    left = _tone(1.0, 44_100)
    sf.write(path, np.stack([left, left], axis=1), 44_100)
    audio = load_audio(path, RATE)
    assert audio.ndim == 1 and abs(len(audio) - RATE) <= 1
    assert np.abs(audio).max() == pytest.approx(0.3, abs=0.03)


def test_flac_renamed_wav_decodes(tmp_path):
    path = tmp_path / "really_flac.wav"
    sf.write(path, _tone(0.5), RATE, format="FLAC")
    assert len(load_audio(path)) == RATE // 2


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"this is not audio at all, just text\n" * 10, "not a readable audio file"),
])
def test_unusable_files_raise_audio_error_naming_file(tmp_path, content, message):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match=message) as info:
        load_audio(path)
    assert "bad.wav" in str(info.value)


def test_header_only_wav(tmp_path):
    path = tmp_path / "h.wav"
    sf.write(path, np.zeros(0, np.float32), RATE)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(path)


def test_nan_samples_refused(tmp_path):
    path = tmp_path / "n.wav"
    y = _tone(0.5)
    y[100] = np.nan
    sf.write(path, y, RATE, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(path)


def test_too_short_and_silent(tmp_path):
    cfg = FeatureConfig()
    short, silent = tmp_path / "short.wav", tmp_path / "silent.wav"
    sf.write(short, _tone(0.05), RATE)
    sf.write(silent, np.zeros(RATE, np.float32), RATE)
    with pytest.raises(AudioError, match="too short"):
        audio_features(short, cfg)
    with pytest.raises(AudioError, match="silent"):
        audio_features(silent, cfg)


def test_long_file_truncated_and_clipped(tmp_path):
    cfg = FeatureConfig(max_seconds=2.0)
    path = tmp_path / "long.wav"
    sf.write(path, np.clip(_tone(10.0) * 10, -1, 1), RATE)
    spec, seconds = audio_features(path, cfg)
    assert spec.shape == (cfg.n_mels, 1 + 2 * RATE // cfg.hop_length)
    assert seconds == pytest.approx(2.0)
    assert np.isfinite(spec).all()


def _float16_bits(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float16).view(np.uint16)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # 1e6 and inf, on purpose
def test_float16_cast_equals_numpys_bit_for_bit():
    """Every 97th float32 of the fast path's range and every exact tie in it, both signs, plus the values that
    must fall back: zero, subnormals, overflow, inf, NaN. The arrays are built to stay inside the fast path's
    range (asserted): one value outside it sends the whole array to numpy's cast, which would test nothing."""
    from emocli.features import _F16_ROUNDS_TO_INF, _F16_SMALLEST_NORMAL

    patterns = np.arange(_F16_SMALLEST_NORMAL, _F16_ROUNDS_TO_INF, 97, dtype=np.uint32)
    halves = np.arange(_F16_SMALLEST_NORMAL, _F16_ROUNDS_TO_INF - (1 << 13), 1 << 13, dtype=np.uint32)
    ties = halves | np.uint32(1 << 12)  # exactly half an ulp of float16 above a float16: ties to even
    for bits in (patterns, ties, ties - np.uint32(1), ties + np.uint32(1)):
        assert bits.min() >= _F16_SMALLEST_NORMAL and bits.max() < _F16_ROUNDS_TO_INF
        for sign in (0, 0x80000000):
            values = (bits | np.uint32(sign)).view(np.float32)
            np.testing.assert_array_equal(to_float16(values).view(np.uint16), _float16_bits(values))
    log_mel_like = np.random.default_rng(0).uniform(-100, 40, (7, 128)).astype(np.float32)
    np.testing.assert_array_equal(to_float16(log_mel_like).view(np.uint16), _float16_bits(log_mel_like))
    for special in (0.0, -0.0, 1e-6, 3e-8, 65519.0, 65520.0, 1e6, np.inf, -np.inf, np.nan):
        values = np.array([-50.0, special], np.float32)
        np.testing.assert_array_equal(to_float16(values).view(np.uint16), _float16_bits(values))
    transposed = log_mel_like.T  # not contiguous: same values, same shape
    assert to_float16(transposed).shape == transposed.shape
    np.testing.assert_array_equal(to_float16(transposed).view(np.uint16), _float16_bits(transposed))
    assert to_float16(np.zeros((0, 128), np.float32)).shape == (0, 128)
    assert to_float16(np.float32(-41.5)).shape == () and to_float16(np.float32(-41.5)) == np.float16(-41.5)


def test_tokenize_fixed_length(tiny_bert_dir):
    from emocli.text_model import load_tokenizer, resolve_text_model

    tok = load_tokenizer(resolve_text_model(tiny_bert_dir))
    ids, mask = tokenize(tok, ["I can't believe you did that!", "", "[LAUGHTER]"], 16)
    assert ids.shape == mask.shape == (3, 16) and ids.dtype == np.int32 and mask.dtype == np.int8
    assert mask[1].sum() == 2  # [CLS] [SEP] only
    # The real vocab, not [UNK] everywhere (the transformers 5 vocab_file gotcha).
    assert (ids[0][mask[0] == 1] != tok.unk_token_id).all()


def test_tokenize_in_blocks_equals_one_call(tiny_bert_dir):
    """Blocks bound prepare's memory; across block boundaries the rows are what one call gives, in order."""
    from emocli.features import _TOKENIZE_BLOCK
    from emocli.text_model import load_tokenizer, resolve_text_model

    tok = load_tokenizer(resolve_text_model(tiny_bert_dir))
    rng = np.random.default_rng(0)
    words = ["yes", "no", "[LAUGHTER]", "what", "happened", "I'm", "fine", "okay"]
    texts = [" ".join(rng.choice(words, size=rng.integers(0, 30))) for _ in range(2 * _TOKENIZE_BLOCK + 7)]
    ids, mask = tokenize(tok, texts, 16)
    whole = tok(texts, padding="max_length", truncation=True, max_length=16)
    np.testing.assert_array_equal(ids, np.asarray(whole["input_ids"], dtype=np.int32))
    np.testing.assert_array_equal(mask, np.asarray(whole["attention_mask"], dtype=np.int8))
    assert tokenize(tok, [], 16)[0].shape == (0, 16)


@pytest.mark.parametrize("n_mels, fmin, fmax", [(128, 0.0, 8000.0), (64, 50.0, 7600.0)])
def test_mel_filterbank_equals_librosa(n_mels, fmin, fmax):
    from emocli.features import mel_basis as _mel_basis

    ref = librosa.filters.mel(sr=RATE, n_fft=512, n_mels=n_mels, fmin=fmin, fmax=fmax)
    np.testing.assert_allclose(_mel_basis(RATE, 512, n_mels, fmin, fmax), ref, rtol=1e-5, atol=1e-7)


TRICKY_TEXTS = ["I can't believe you did that!", "", "[LAUGHTER]", "[garbage] um. oh-", "Café naïve résumé 東京",
                "word " * 200, "Excuse me.  We're all worried.\tReally"]


@pytest.mark.parametrize("which", ["tiny", "minilm"])
def test_rust_tokenizer_gives_transformers_ids(tiny_bert_dir, which):
    """prepare tokenises with the Rust library (no torch import); predict with transformers: the ids must agree."""
    from emocli.text_model import RustTokenizer, load_fast_tokenizer, load_tokenizer, resolve_text_model

    ref = resolve_text_model(tiny_bert_dir if which == "tiny" else "all-MiniLM-L6-v2")
    fast = load_fast_tokenizer(ref)
    assert isinstance(fast, RustTokenizer)
    for max_tokens in (8, 64):
        ids_fast, mask_fast = tokenize(fast, TRICKY_TEXTS, max_tokens)
        ids_hf, mask_hf = tokenize(load_tokenizer(ref), TRICKY_TEXTS, max_tokens)
        np.testing.assert_array_equal(ids_fast, ids_hf)
        np.testing.assert_array_equal(mask_fast, mask_hf)


# --------------------------------------------------------------------------------------------- the worker pool


def _array_result(i: int):
    """What a feature job returns: arrays of several layouts and sizes inside a tuple, beside plain values."""
    rng = np.random.default_rng(i)
    c_order = rng.standard_normal((3 + i, 5)).astype(np.float16)
    f_order = np.asfortranarray(rng.standard_normal((4, 2 + i)).astype(np.float32))
    huge = np.full(5 << 20 if i == 3 else 1, i, np.uint8)  # the one of i == 3 is larger than a slot
    return c_order, f_order, float(i), None if i % 2 else f"error {i}", huge


def _bare_array(i: int) -> np.ndarray:
    return np.arange(i * 10, dtype=np.int64).reshape(i, 10)


@pytest.mark.parametrize("fn", [_array_result, _bare_array], ids=["tuples", "arrays"])
def test_pool_hands_back_what_the_function_returns(fn):
    """Through the shared-memory slots: equal values, dtypes and memory layouts, in order; an array too large
    for a slot travels through the pipe instead."""
    from emocli.features import parallel_map

    jobs = list(range(1, 40))
    expected = [fn(i) for i in jobs]
    with parallel_map(len(jobs), workers=2, chunksize=3) as feature_map:
        got = list(feature_map(fn, jobs))
    assert len(got) == len(expected)
    for one, want in zip(got, expected):
        for a, b in zip(one if isinstance(one, tuple) else [one], want if isinstance(want, tuple) else [want]):
            if isinstance(b, np.ndarray):
                assert a.dtype == b.dtype and a.flags.f_contiguous == b.flags.f_contiguous
                np.testing.assert_array_equal(a, b)
            else:
                assert a == b


def test_pool_results_survive_the_next_chunks_and_a_second_map():
    """Results are copies, not views of a slot that later chunks overwrite; a second map started while the first
    is still running goes through the pipe and both stay correct; once the first is closed the slots serve again."""
    from emocli.features import parallel_map

    jobs = list(range(1, 60))
    with parallel_map(len(jobs), workers=2, chunksize=2) as feature_map:
        first = feature_map(_bare_array, jobs)
        head = [next(first) for _ in range(5)]
        second = list(feature_map(_bare_array, jobs))
        rest = list(first)
        third = list(feature_map(_bare_array, jobs))
    for got in (head + rest, second, third):
        assert all(np.array_equal(a, _bare_array(i)) for a, i in zip(got, jobs)) and len(got) == len(jobs)


def _touch(path: str) -> str:
    open(path, "w").close()
    return path


def test_pool_starts_working_before_the_first_result_is_asked_for(tmp_path):
    """prepare tokenises while the workers compute: the map must submit on the call, not on the first `next`."""
    import time

    from emocli.features import parallel_map

    jobs = [str(tmp_path / f"{i}.done") for i in range(16)]
    with parallel_map(len(jobs), workers=2) as feature_map:
        results = feature_map(_touch, jobs)
        deadline = time.monotonic() + 30
        while not all(Path(j).exists() for j in jobs[:8]) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all(Path(j).exists() for j in jobs[:8]), "no job ran before the first result was asked for"
        assert list(results) == jobs


def _worker_pid(_: int) -> int:
    import os

    return os.getpid()


def test_pool_workers_start_when_it_opens():
    """prepare reads the corpus while the workers fork and import their libraries: they must exist before the
    first map is called, and with the item count not yet known."""
    import multiprocessing
    import time

    from emocli.features import parallel_map

    before = {p.pid for p in multiprocessing.active_children()}
    with parallel_map(workers=2) as feature_map:
        deadline = time.monotonic() + 30
        while len({p.pid for p in multiprocessing.active_children()} - before) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = {p.pid for p in multiprocessing.active_children()} - before
        assert len(started) == 2, "the pool did not start its workers on opening"
        assert set(feature_map(_worker_pid, range(20))) <= started
