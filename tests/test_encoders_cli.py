"""Encoders plug in: a toy audio encoder defined here, and the packaged Whisper, through the real CLI.

The toy proves the shape: one module and one registration line, and `train`, `eval` and `predict` run it with no
other change. The Whisper runs prove the embedding stage: computed once, reused, keyed by the encoder, refused when
its weights change, and the same frames at predict time as in training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from emocli import cache
from emocli.cli import app
from emocli.encoders import AUDIO_ENCODERS, register_audio_encoder
from emocli.encoders.branch import AudioEncoder
from emocli.synth import SynthConfig, synthesize

runner = CliRunner()
TRAIN = ["--epochs", "2", "--batch-size", "8", "--lr", "3e-3", "--repeats", "1", "--freeze-text", "--device", "cpu",
         "--val-fraction", "0.2"]


class MeanBands(AudioEncoder):
    """A toy audio branch: each normalised log-mel frame through one linear layer, averaged over time."""

    feature = "logmel"

    def __init__(self, n_mels: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))
        self.linear = torch.nn.Linear(n_mels, 8)
        self.seq_features = self.out_features = 8

    @classmethod
    def from_config(cls, config) -> "MeanBands":
        return cls(config.n_mels)

    def encode(self, audio, lengths):
        mask = torch.arange(audio.size(1))[None, :] < lengths[:, None]  # (B, T)
        return self.linear((audio - self.mean) / self.std), mask  # (B, T, 8)

    def pool(self, seq, mask):
        kept = torch.where(mask[:, :, None], seq, 0.0).sum(1)
        return kept / mask.sum(1, keepdim=True)

    def set_input_stats(self, mean, std):
        self.mean.copy_(torch.as_tensor(mean))
        self.std.copy_(torch.as_tensor(std))


@pytest.fixture
def toy_registered():
    register_audio_encoder("toy-mean-bands", MeanBands)  # the one line a new encoder needs
    yield "toy-mean-bands"
    AUDIO_ENCODERS.pop("toy-mean-bands")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return synthesize(tmp_path_factory.mktemp("synth"), SynthConfig(per_class=8, seed=3, fmt="dir", mean_seconds=0.8))


@pytest.fixture(scope="module")
def prepared(corpus, tiny_bert_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cache") / "cache.h5"
    result = runner.invoke(app, ["prepare", str(corpus.archive), "--cache", str(path), "--text-model",
                                 str(tiny_bert_dir), "--n-mels", "64", "--workers", "1", "--json"])
    assert result.exit_code == 0, result.output
    return path


def wav_folder(corpus, tmp_path: Path, n: int = 6) -> Path:
    folder = tmp_path / "inputs"
    folder.mkdir()
    wavs = sorted(p for p in Path(corpus.archive).glob("Session*/sentences/wav/*/*.wav") if not p.name.startswith("._"))
    for wav in wavs[:n]:  # (the generator plants macOS `._` shadow files among them, as real archives hold)
        shutil.copy(wav, folder / wav.name)
    return folder


def invoke(*args) -> "object":
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *words: str) -> None:
    # (the random protocol's caveat is a warning printed before any work, not part of the failure)
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("warning:")]
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert all(w in lines[0] for w in words), lines


def test_a_toy_encoder_from_the_tests_trains_evaluates_and_predicts_through_the_cli(toy_registered, prepared,
                                                                                    corpus, tmp_path):
    run = tmp_path / "run"
    result = invoke("train", prepared, "--run", run, "--audio-encoder", toy_registered, "--modality", "both",
                    *TRAIN, "--json")
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["audio_encoder"] == toy_registered and config["model"]["audio_upstream"] == {}
    assert invoke("eval", run, "--json").exit_code == 0
    out = tmp_path / "p.jsonl"
    folder = wav_folder(corpus, tmp_path)
    result = invoke("predict", run, folder, "--output", out)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == len(list(folder.glob("*.wav"))) >= 3, (result.stdout, result.stderr)
    assert all(r["label"] in ("angry", "happy", "sad", "neutral") for r in rows)
    # The toy really ran: its weights are in the fold's model.
    from safetensors.torch import load_file

    weights = load_file(str(run / "folds/random-0/model.safetensors"))
    assert "audio.linear.weight" in weights and weights["audio.linear.weight"].shape == (8, 64)


def test_unknown_or_wrong_audio_encoder_is_one_line(prepared, tiny_bert_dir, tmp_path):
    assert_one_line_error(invoke("train", prepared, "--run", tmp_path / "a", "--audio-encoder", "no-such-encoder"),
                          "no-such-encoder", "neither a known name")
    assert_one_line_error(invoke("train", prepared, "--run", tmp_path / "b", "--audio-encoder", tiny_bert_dir),
                          "not a speech encoder")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# --------------------------------------------------------------------------------------------- Whisper and the stage


def stages(cache_path: Path) -> list[Path]:
    return sorted(cache_path.with_name(cache_path.name + cache.STAGES_SUFFIX).glob("*.h5"))


def test_whisper_stage_is_computed_once_reused_and_keyed_by_the_encoder(prepared, corpus, tmp_path):
    spec_before = prepared.stat().st_mtime_ns
    for stage in stages(prepared):
        stage.unlink()
    run = tmp_path / "run"
    result = invoke("train", prepared, "--run", run, "--audio-encoder", "whisper", "--modality", "audio", *TRAIN,
                    "--json")
    assert result.exit_code == 0, result.output
    (stage,) = stages(prepared)
    made = stage.stat().st_mtime_ns
    data = cache.read_cache(prepared)
    frames = cache.read_stage(stage, data.utt_ids)
    assert frames.values.dtype == np.float16 and frames.values.shape[1:] == (1, 384)  # tiny.en: 1 layer of 384
    # ~50 frames per second of the audio the cache kept
    np.testing.assert_allclose(frames.lengths, data.durations * 50, atol=2)
    # Another head on the same encoder reads the stage back; the cache itself is never rewritten.
    result = invoke("train", prepared, "--run", tmp_path / "run2", "--audio-encoder", "whisper", "--modality",
                    "both", "--fusion", "xattn", *TRAIN, "--json")
    assert result.exit_code == 0, result.output
    assert stages(prepared) == [stage] and stage.stat().st_mtime_ns == made
    assert prepared.stat().st_mtime_ns == spec_before
    # Another compute type is another stage; the first stays.
    result = invoke("prepare", corpus.archive, "--cache", prepared, "--text-model",
                    json.loads((run / "config.json").read_text())["tokenizer"]["name"], "--n-mels", "64",
                    "--workers", "1", "--audio-encoder", "whisper", "--compute-type", "float32", "--json")
    assert result.exit_code == 0, result.output
    assert len(stages(prepared)) == 2 and stage.stat().st_mtime_ns == made
    assert prepared.stat().st_mtime_ns == spec_before


def test_predict_computes_the_frames_training_saw(prepared, corpus, tmp_path):
    """predict's frames of a training file equal the stage's, so its probabilities equal the fold's own."""
    from emocli.predict import PredictItem, Predictor

    run = tmp_path / "run"
    assert invoke("train", prepared, "--run", run, "--audio-encoder", "whisper", "--modality", "audio", *TRAIN,
                  "--json").exit_code == 0
    from emocli.embed import ensure_stage

    data = cache.read_cache(prepared)
    frames = ensure_stage(prepared, json.loads((run / "config.json").read_text())["model"]["audio_upstream"], data)
    predictor = Predictor.from_run(run, device="cpu")
    saved = [json.loads(line) for line in (run / "folds/random-0/predictions.jsonl").read_text().splitlines()]
    index = {u: i for i, u in enumerate(data.utt_ids)}
    for row in saved[:3]:
        i = index[row["utt_id"]]
        item = PredictItem(row["utt_id"], Path(data.audio_paths[i]), None)
        np.testing.assert_array_equal(predictor.features(item), frames.values[frames.offsets[i]:frames.offsets[i + 1]])
        (prediction,) = predictor.predict([item])
        np.testing.assert_allclose(list(prediction.probs.values()), row["probs"], atol=1e-5)


def test_a_run_refuses_whisper_weights_that_changed(prepared, corpus, tmp_path):
    from emocli.encoders.whisper import resolve_whisper

    folder = tmp_path / "whisper-copy"
    shutil.copytree(resolve_whisper("whisper").path, folder)
    run = tmp_path / "run"
    result = invoke("train", prepared, "--run", run, "--audio-encoder", folder, "--modality", "audio", *TRAIN,
                    "--json")
    assert result.exit_code == 0, result.output
    with open(folder / "model.bin", "r+b") as handle:  # one byte of the weights changes after training
        handle.seek(4096)
        byte = handle.read(1)
        handle.seek(4096)
        handle.write(bytes([byte[0] ^ 0xFF]))
    out = tmp_path / "p.csv"
    assert_one_line_error(invoke("predict", run, wav_folder(corpus, tmp_path, 2), "--output", out), "model.bin")
    assert not out.exists()


# --------------------------------------------------------------------------------------------- Hugging Face folders


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory) -> dict:
    from test_encoder_hf_speech import _build

    built = {}
    for name in ("wav2vec2-stable", "wav2vec2-group"):  # padding exact (layer-norm CNN) and not (group norm)
        built[name] = tmp_path_factory.mktemp(name)
        _build(name, built[name])
    return built


def test_a_frozen_hugging_face_encoder_trains_with_a_weighted_sum_of_its_layers(prepared, hf_folders, tmp_path):
    run = tmp_path / "run"
    result = invoke("train", prepared, "--run", run, "--audio-encoder", hf_folders["wav2vec2-stable"], "--modality",
                    "audio", *TRAIN, "--json")
    assert result.exit_code == 0, result.output
    upstream = json.loads((run / "config.json").read_text())["model"]["audio_upstream"]
    assert upstream["kind"] == "hf" and upstream["n_layers"] == 3  # two layers and the CNN's output
    from safetensors.torch import load_file

    weights = load_file(str(run / "folds/random-0/model.safetensors"))
    assert weights["audio.layer_logits"].shape == (3,) and weights["audio.layer_logits"].abs().sum() > 0  # learned


@pytest.mark.parametrize("name", ["wav2vec2-stable", "wav2vec2-group"])
def test_finetune_audio_trains_the_encoder_and_predicts_what_one_by_one_predicts(name, prepared, hf_folders, corpus,
                                                                                  tmp_path):
    from safetensors.torch import load_file

    from emocli.predict import Predictor, collect_inputs

    run = tmp_path / "run"
    result = invoke("train", prepared, "--run", run, "--audio-encoder", hf_folders[name], "--finetune-audio",
                    "--audio-lr", "1e-3", "--modality", "audio", *TRAIN, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "config.json").read_text())["model"]["audio_encoder"] == "finetune"
    tuned = load_file(str(run / "folds/random-0/model.safetensors"))
    before = load_file(str(hf_folders[name] / "model.safetensors"))
    moved = [k for k in before if f"audio.encoder.model.{k}" in tuned
             and not torch.equal(tuned[f"audio.encoder.model.{k}"], before[k])]
    frozen_cnn = [k for k in before if k.startswith("feature_extractor.")]
    assert moved and not set(moved) & set(frozen_cnn)  # the transformer moved, the CNN front end did not
    # The run predicts by itself (architecture from the folder's config, weights from the run), batch-invariant.
    predictor = Predictor.from_run(run, device="cpu")
    items = collect_inputs(wav_folder(corpus, tmp_path, 5))
    alone = [list(r.probs.values()) for i in items for r in predictor.predict([i], batch_size=1)]
    batched = [list(r.probs.values()) for r in predictor.predict(items, batch_size=5)]
    np.testing.assert_allclose(batched, alone, atol=1e-5)


def test_finetune_audio_is_refused_for_ctranslate2_and_alexnet(prepared, tmp_path):
    assert_one_line_error(invoke("train", prepared, "--run", tmp_path / "a", "--audio-encoder", "whisper",
                                 "--finetune-audio"), "--finetune-audio", "CTranslate2")
    assert_one_line_error(invoke("train", prepared, "--run", tmp_path / "b", "--finetune-audio"), "--finetune-audio")


def test_torchrun_ranks_embed_their_shares_and_rank_0_merges_the_same_stage(prepared, tmp_path):
    import subprocess
    import sys

    from emocli.embed import ensure_stage
    from emocli.encoders import audio_branch

    sharded, single = tmp_path / "sharded" / "cache.h5", tmp_path / "single" / "cache.h5"
    for copy in (sharded, single):
        copy.parent.mkdir()
        shutil.copy(prepared, copy)
    repo = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "emocli",
               "train", str(sharded), "--run-dir", str(tmp_path / "ddp"), "--audio-encoder", "whisper",
               "--modality", "audio", *TRAIN, "--json"]
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, env=env, timeout=300)
    if done.returncode != 0 and "Address already in use" in done.stderr:  # torchrun's own port race: once more
        done = subprocess.run(command, cwd=repo, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"{done.stdout[-1000:]}\n{done.stderr[-3000:]}"
    assert [p.name for p in stages(sharded)] and not list(sharded.parent.rglob("*.part*"))  # parts merged, removed
    upstream = audio_branch("whisper")[1]
    data = cache.read_cache(single)
    merged, alone = ensure_stage(sharded, upstream, data), ensure_stage(single, upstream, data)
    np.testing.assert_array_equal(merged.offsets, alone.offsets)
    np.testing.assert_array_equal(merged.values, alone.values)


def test_options_that_would_be_ignored_are_refused(prepared, tmp_path):
    assert_one_line_error(invoke("train", prepared, "--run", tmp_path / "a", "--modality", "text", "--audio-encoder",
                                 "whisper"), "--modality text")
    assert_one_line_error(invoke("train", prepared, "--run", tmp_path / "b", "--audio-lr", "1e-5"), "--finetune-audio")


def test_a_stage_that_cannot_be_written_is_one_line_and_the_cache_untouched(prepared, tmp_path):
    copy = tmp_path / "cache.h5"
    shutil.copy(prepared, copy)
    copy.with_name(copy.name + cache.STAGES_SUFFIX).write_text("a file where the stage folder goes")
    before = copy.read_bytes()
    assert_one_line_error(invoke("prepare", prepared.parent / "nothing-here", "--cache", copy), "does not exist")
    result = invoke("train", copy, "--run", tmp_path / "run", "--audio-encoder", "whisper", "--modality", "audio",
                    *TRAIN)
    assert_one_line_error(result, "embedding stage")
    assert copy.read_bytes() == before and not (tmp_path / "run").exists()
