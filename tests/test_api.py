"""The Python API: `emocli.load(run).predict(...)`, the README's example run as it is written, batched equal to
one-by-one, waveforms equal to their files, and the library calls behind the commands."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import emocli
from emocli.errors import AudioError, ConfigError
from test_train import REPO, make_cache, model_config, subprocess_env

TEXTS = ["furious shouting angry", None, "sad tears cry", "okay fine table", None]


@pytest.fixture(scope="module")
def run(tiny_bert_dir, tmp_path_factory) -> Path:
    from emocli.train import TrainConfig, train

    folder = tmp_path_factory.mktemp("api")
    cache = make_cache(folder / "cache.h5", tiny_bert_dir, sessions=2, per_class=3)
    train(cache, folder / "run", model_config(tiny_bert_dir, n_mels=64), TrainConfig(repeats=1, epochs=2, batch_size=8, test_fraction=0.25, val_fraction=0.25))
    return folder / "run"


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(0)
    paths = []
    for k, seconds in enumerate((0.6, 1.3, 0.9, 2.0, 0.7)):
        rate = (16_000, 22_050, 16_000, 44_100, 8_000)[k]
        t = np.arange(int(seconds * rate)) / rate
        wave = 0.3 * np.sin(2 * np.pi * (150 + 40 * k) * t) + 0.02 * rng.standard_normal(t.size)
        paths.append(folder / f"clip{k}.wav")
        sf.write(paths[-1], wave.astype(np.float32), rate, subtype="PCM_16")
    return paths


def test_the_readme_example_runs_as_written(run, wavs, tmp_path, monkeypatch):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- api-example[^>]*-->\s*```python\n(.*?)```", readme, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "final").symlink_to(run)
    (tmp_path / "clip.wav").write_bytes(wavs[1].read_bytes())
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(block, "README.md", "exec"), {})
    lines = printed.getvalue().splitlines()
    assert lines[0] == "('angry', 'happy', 'sad', 'neutral') random-0"
    assert lines[1].split()[0] in ("angry", "happy", "sad", "neutral")
    labels = eval(lines[2])  # [(label, audio_only), ...]
    assert [audio_only for _, audio_only in labels] == [True, False]


def test_batched_equals_one_by_one(run, wavs):
    model = emocli.load(run)
    one = [model.predict(path, text=text) for path, text in zip(wavs, TEXTS)]
    many = model.predict(wavs, text=TEXTS, batch_size=2)
    assert [p.label for p in many] == [p.label for p in one]
    for a, b in zip(one, many):
        assert a.audio_only == b.audio_only and a.text == b.text
        np.testing.assert_allclose(list(a.probs.values()), list(b.probs.values()), atol=1e-5)
        assert sum(a.probs.values()) == pytest.approx(1.0, abs=1e-5)


def test_a_waveform_predicts_as_its_file(run, wavs):
    model = emocli.load(run)
    for path in (wavs[0], wavs[3]):  # 16 kHz, and 44.1 kHz resampled as a file is
        wave, rate = sf.read(path)
        from_file = model.predict(path)
        from_array = model.predict(wave, sample_rate=rate)
        np.testing.assert_allclose(list(from_array.probs.values()), list(from_file.probs.values()), atol=1e-4)
    stereo, rate = sf.read(wavs[0])
    both = model.predict(np.stack([stereo, stereo], axis=1), sample_rate=rate)  # (samples, channels)
    np.testing.assert_allclose(list(both.probs.values()), list(model.predict(wavs[0]).probs.values()), atol=1e-4)


def test_api_errors_are_clear(run, wavs):
    model = emocli.load(run)
    with pytest.raises(ConfigError, match="sample_rate"):
        model.predict(np.zeros(16000, np.float32))
    with pytest.raises(ConfigError, match="2 audio inputs but 1 transcripts"):
        model.predict(wavs[:2], text=["one"])
    with pytest.raises(AudioError, match="missing.wav"):
        model.predict(wavs[0].parent / "missing.wav")
    with pytest.raises(AudioError, match=r"array\[0\].*silent"):
        model.predict(np.zeros(16000, np.float32), sample_rate=16000)


def test_import_emocli_loads_no_torch():
    code = "import sys, emocli; print('torch' in sys.modules, callable(emocli.load))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                         check=True).stdout.split()
    assert out == ["False", "True"]


def test_the_readme_library_calls_exist():
    """The README's second block names the functions behind the commands: each import must work."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    library = next(b for b in blocks if "from emocli.prepare import" in b)
    imports = "\n".join(line for line in library.splitlines() if line.startswith("from emocli"))
    namespace: dict = {}
    exec(imports, namespace)
    assert {"prepare", "train", "evaluate_run", "save_report", "model_config_for", "PrepareConfig",
            "TrainConfig"} <= set(namespace)
    assert "PrepareConfig(label_set=" in library  # the field's real name
