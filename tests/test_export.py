"""`emocli.export.export_onnx` and the torch-free runner on tiny runs trained once from a generated corpus: ONNX
probabilities equal emocli's own predictor's, batches equal one by one, the folder describes itself, foreign
folders are never replaced, and a run that cannot become one graph is one clear error."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from emocli.errors import ConfigError, EmocliError
from emocli.export import TOLERANCE, check_export_folder, export_onnx, frontend_arrays
from emocli.features import FeatureConfig, audio_features, to_float16
from emocli.model import ModelConfig
from emocli.onnx_runner import FrontEnd, OnnxEmotionModel
from emocli.predict import PredictItem, Predictor
from emocli.prepare import PrepareConfig, prepare
from emocli.synth import SynthConfig, synthesize
from emocli.text_model import file_sha256
from emocli.train import TrainConfig, train

FEATURES = FeatureConfig(n_mels=64, max_tokens=16)  # not the defaults: the export must carry the run's own
TINY_TRAIN = TrainConfig(repeats=1, epochs=1, batch_size=8, lr=3e-3, device="cpu")
N_FILES, N_WITH_TEXT = 8, 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth"), SynthConfig(per_class=10, seed=3, fmt="dir", mean_seconds=0.8))


@pytest.fixture(scope="module")
def cache_file(corpus, tiny_bert_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache") / "cache.h5"
    prepare(corpus.archive, path, PrepareConfig(text_model=str(tiny_bert_dir), features=FEATURES, workers=1))
    return path


def _train(cache_file: Path, bert_dir: Path, folder: Path, modality: str = "both", fusion: str = "concat",
           task: str = "classes") -> Path:
    config = ModelConfig(n_mels=FEATURES.n_mels, modality=modality, fusion=fusion, audio_width=0.0625,
                         text_model=str(bert_dir), text_hidden=32, fusion_hidden=16, freeze_text=True,
                         modality_dropout=0.5 if modality == "both" else 0.0, task=task)
    train(cache_file, folder / "run", config, TINY_TRAIN)
    return folder / "run"


@pytest.fixture(scope="module")
def run(cache_file, tiny_bert_dir, tmp_path_factory) -> Path:
    """The paper's model: ModifiedAlexNet on log-mel + BERT, concatenated."""
    return _train(cache_file, tiny_bert_dir, tmp_path_factory.mktemp("both"))


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory) -> Path:
    """The run exported over an earlier export of ours, which it must replace."""
    out = tmp_path_factory.mktemp("exports") / "paper"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"emocli_export": True}), encoding="utf-8")
    (out / "model.onnx").write_bytes(b"an earlier export")
    report = export_onnx(run, out)
    assert report.folder == out and report.max_abs_diff <= TOLERANCE
    assert report.inputs == ("features", "feature_lengths", "input_ids", "attention_mask", "text_present")
    assert report.outputs == ("probs",)
    return out


@pytest.fixture(scope="module")
def items(corpus) -> list[PredictItem]:
    """Recordings of the corpus, the first N_WITH_TEXT with their transcript, the rest without."""
    wavs = sorted(p for p in Path(corpus.archive).glob("Session*/sentences/wav/*/*.wav")
                  if not p.name.startswith("._"))[:N_FILES]
    return [PredictItem(wav.name, wav, " ".join(corpus.texts[wav.stem].split()) if k < N_WITH_TEXT else None)
            for k, wav in enumerate(wavs)]


def torch_probs(run: Path, items: list[PredictItem]) -> np.ndarray:
    predictor = Predictor.from_run(run, device="cpu")
    predictions = list(predictor.predict(items, batch_size=3))
    return np.array([list(p.probs.values()) for p in predictions])


def onnx_probs(model: OnnxEmotionModel, items: list[PredictItem]) -> np.ndarray:
    return np.array([list(model.predict_file(item.path, item.text).values()) for item in items])


def assert_same_as_torch(run: Path, folder: Path, items: list[PredictItem]) -> None:
    model = OnnxEmotionModel(folder, threads=1)
    want, got = torch_probs(run, items), onnx_probs(model, items)
    assert want.shape == got.shape == (len(items), 4)
    assert np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()


# --------------------------------------------------------------------------------------------- equal to torch


def test_onnx_probabilities_equal_emocli_predictor(run, exported, items):
    assert_same_as_torch(run, exported, items)


@pytest.mark.parametrize("n_mels", [64, 128, 256])
def test_front_end_equals_emocli_features(items, tmp_path, n_mels):
    """The runner's numpy log-mel against emocli's, on a corpus file and a 44.1 kHz stereo file (resampled):
    equal up to float32 summation order, which at most flips the float16 rounding of a rare value by one step."""
    features = FeatureConfig(n_mels=n_mels)
    front_end = FrontEnd(features.to_json(), **frontend_arrays(features))
    audio, rate = sf.read(items[1].path, dtype="float32")
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.stack([soxr.resample(audio, rate, 44_100), 0.5 * soxr.resample(audio, rate, 44_100)], 1),
             44_100, subtype="PCM_16")
    for path in (items[0].path, stereo):
        spec, _ = audio_features(path, features)
        want = to_float16(spec.T).astype(np.float32)  # (T, F), as emocli's predictor feeds its model
        with sf.SoundFile(str(path)) as handle:
            got = front_end.log_mel(handle.read(dtype="float32", always_2d=True), handle.samplerate)
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 0.07 and np.mean(got != want) < 1e-3


def test_batched_equals_one_by_one(exported, items):
    model = OnnxEmotionModel(exported, threads=1)
    audio = [model.read_audio(item.path) for item in items]
    texts = [item.text for item in items]
    # A short clip (under AlexNet's 63 frames, padded inside the graph) and a 44.1 kHz stereo copy (resampled).
    short, rate = audio[0][0][: int(0.3 * audio[0][1])], audio[0][1]
    stereo = np.repeat(soxr.resample(audio[1][0], rate, 44_100), 2, axis=1)  # (N, 2)
    waves, rates = [a for a, _ in audio] + [short, stereo], [r for _, r in audio] + [rate, 44_100]
    texts += ["too short to say much", None]
    alone = np.array([list(model.predict(w, r, t).values()) for w, r, t in zip(waves, rates, texts)])
    together = np.array([list(p.values()) for p in model.predict_batch(waves, rates, texts, batch_size=4)])
    assert np.abs(alone - together).max() <= 1e-6
    assert np.allclose(alone.sum(axis=1), 1.0, atol=1e-5)


# --------------------------------------------------------------------------------------------- the folder


def test_folder_carries_config_labels_and_checksums(run, exported):
    config = json.loads((exported / "config.json").read_text(encoding="utf-8"))
    run_config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    assert config["emocli_export"] is True and config["run"]["fold"] == "random-0"
    assert config["labels"]["classes"] == run_config["label_set"]["classes"] == ["ang", "hap", "sad", "neu"]
    assert config["labels"]["names"] == ["angry", "happy", "sad", "neutral"]
    assert config["features"] == FEATURES.to_json() and config["model"] == run_config["model"]
    assert [i["name"] for i in config["onnx"]["inputs"]][:2] == ["features", "feature_lengths"]
    assert config["onnx"]["inputs"][0]["shape"] == ["batch", "frames", 64]
    assert config["onnx"]["outputs"] == [{"name": "probs", "dtype": "float32", "shape": ["batch", 4]}]
    assert config["onnx"]["sha256"] == file_sha256(exported / "model.onnx")
    for name, digest in config["sha256"].items():
        assert file_sha256(exported / name) == digest
    assert config["tokenizer"]["max_tokens"] == 16 and (exported / "tokenizer.json").is_file()
    assert not list(exported.parent.glob(".*")), "no temporary or set-aside folder is left behind"
    assert OnnxEmotionModel(exported).label({"angry": 0.1, "happy": 0.7, "sad": 0.1, "neutral": 0.1}) == "happy"


def test_runner_copied_beside_the_folder_needs_neither_torch_nor_emocli(exported, items, tmp_path):
    """Only numpy and onnxruntime (and soundfile to read the file): not torch, emocli, transformers, nor the
    tokenizers library (a BERT WordPiece tokenizer runs in the runner's own Python)."""
    assert json.loads((exported / "config.json").read_text())["tokenizer"]["engine"] == "wordpiece"
    script = ("import sys, json; sys.path.insert(0, sys.argv[1]); import onnx_runner; "
              "m = onnx_runner.OnnxEmotionModel(sys.argv[1]); p = m.predict_file(sys.argv[2], sys.argv[3]); "
              "assert not [k for k in sys.modules if k.split('.')[0] in "
              "('torch', 'emocli', 'transformers', 'tokenizers')], sorted(sys.modules); "
              "print(json.dumps(p))")
    done = subprocess.run([sys.executable, "-c", script, str(exported), str(items[0].path), items[0].text],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    in_process = OnnxEmotionModel(exported).predict_file(items[0].path, items[0].text)
    assert json.loads(done.stdout) == pytest.approx(in_process, abs=1e-7)


def test_a_changed_graph_is_refused(exported, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    with open(copy / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ValueError, match="sha256"):
        OnnxEmotionModel(copy)


# --------------------------------------------------------------------------------------------- refusals


def test_never_replaces_a_folder_emocli_did_not_write(run, exported, tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a folder emocli export wrote") as refused:
        export_onnx(run, foreign)
    assert "\n" not in str(refused.value)
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1
    a_file = tmp_path / "file.onnx"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        export_onnx(run, a_file)
    # An earlier export into which someone put a file of their own: that file is not ours to delete.
    mixed = tmp_path / "mixed"
    shutil.copytree(exported, mixed)
    (mixed / "results.csv").write_text("mine")
    with pytest.raises(ConfigError, match="results.csv"):
        check_export_folder(mixed)
    check_export_folder(exported)  # an export of ours, and nothing else: may be replaced
    check_export_folder(tmp_path / "new" / "folder")


def test_an_encoder_outside_the_graph_is_one_clear_error(run, tmp_path):
    """A head over frozen Whisper frames: its upstream runs in CTranslate2, outside any ONNX graph."""
    frames_run = tmp_path / "frames-run"
    shutil.copytree(run, frames_run)
    config = json.loads((frames_run / "config.json").read_text(encoding="utf-8"))
    config["model"].update(audio_encoder="frames", audio_upstream={"name": "whisper-tiny.en", "n_layers": 5,
                                                                   "hidden_size": 384})
    (frames_run / "config.json").write_text(json.dumps(config), encoding="utf-8")
    out = tmp_path / "out"
    with pytest.raises(EmocliError) as refused:
        export_onnx(frames_run, out)
    message = str(refused.value)
    assert "\n" not in message and "'frames'" in message and "alexnet" in message
    assert not out.exists()


# --------------------------------------------------------------------------------------------- outputs, modalities


@pytest.mark.parametrize("task", ["both", pytest.param("dimensions", marks=pytest.mark.slow)])
def test_dimensions_are_an_output_of_their_own(cache_file, tiny_bert_dir, tmp_path_factory, task):
    """A model that predicts valence/arousal/dominance (here text-only, trained on the corpus's own values) exports
    them as `dimensions`, and the runner returns them beside the class probabilities, as emocli's predictor does."""
    text_run = _train(cache_file, tiny_bert_dir, tmp_path_factory.mktemp(f"text-{task}"), modality="text", task=task)
    out = tmp_path_factory.mktemp("exports") / f"text-{task}"
    report = export_onnx(text_run, out)
    assert report.inputs == ("input_ids", "attention_mask", "text_present")
    assert report.outputs == (("probs",) if task == "both" else ()) + ("dimensions",)
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    assert config["dimensions"] == ["valence", "arousal", "dominance"] and config["frontend"] is None
    texts = ["I am so angry with you", "what a lovely day", "fine"]
    model = OnnxEmotionModel(out, threads=1)
    results = model.predict_batch([None] * 3, 16_000, texts)
    # The text-only predictor never opens the audio files.
    predictions = list(Predictor.from_run(text_run, device="cpu").predict(
        [PredictItem(str(k), Path(f"{k}.wav"), t) for k, t in enumerate(texts)]))
    for result, prediction in zip(results, predictions):
        assert set(result) == set(prediction.probs) | set(prediction.dimensions)
        for name, value in {**prediction.probs, **prediction.dimensions}.items():
            assert result[name] == pytest.approx(value, abs=1e-4)
    with pytest.raises(ValueError, match="transcripts only"):
        model.predict(None, 16_000, None)


@pytest.mark.slow
@pytest.mark.parametrize("modality, fusion", [("both", "gated"), ("both", "xattn"), ("audio", "concat")])
def test_other_fusions_and_audio_only_export(cache_file, tiny_bert_dir, tmp_path_factory, items, modality, fusion):
    variant = _train(cache_file, tiny_bert_dir, tmp_path_factory.mktemp(f"{modality}-{fusion}"), modality, fusion)
    out = tmp_path_factory.mktemp("exports") / f"{modality}-{fusion}"
    export_onnx(variant, out)
    assert_same_as_torch(variant, out, items)


def test_the_runners_wordpiece_gives_the_tokenizers_librarys_ids():
    """The runner tokenises BERT models in plain Python (no tokenizers library needed): the same ids as the library
    on hand-picked texts and on 3000 random strings over Latin, punctuation, CJK, kana, controls and unassigned
    code points."""
    import json
    import random

    from tokenizers import Tokenizer

    from emocli.onnx_runner import WordPiece
    from emocli.text_model import resolve_text_model

    path = resolve_text_model("all-MiniLM-L6-v2").path / "tokenizer.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    assert WordPiece.reads(data)
    mine = WordPiece(data, 64, 0)
    library = Tokenizer.from_file(str(path))
    library.enable_truncation(max_length=64)
    library.enable_padding(length=64, pad_id=0, pad_token="[PAD]")
    rng = random.Random(0)
    pool = [chr(c) for c in [*range(32, 0x250), *range(0x2000, 0x2070), *range(0x3000, 0x3100), *range(0x4E00, 0x4E40),
                             0x1F642, 0xFFFD, 0x85, 0x1C, 0x9, 0xA0]]
    texts = ["", "[CLS] inside [SEP]", "x" * 150, " ".join(["word"] * 600),
             *("".join(rng.choice(pool) for _ in range(rng.randint(0, 40))) for _ in range(3000))]
    for text in texts:
        want, got = library.encode(text), mine.encode(text)
        assert (got.ids, got.attention_mask) == (want.ids, want.attention_mask), repr(text)
