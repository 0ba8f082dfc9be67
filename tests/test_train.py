"""The trainer on a tiny synthetic cache: splits, learning, determinism, resume (exception and kill -9), refusal
of a foreign run dir, the run dir's contents, the frozen encoder, and two-process DDP on CPU."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emocli import bundle, cache, metrics
from emocli.corpus.records import LABEL_SETS, Utterance
from emocli.errors import CheckpointError, ConfigError
from emocli.features import FeatureConfig, tokenize
from emocli.model import ModelConfig
from emocli.text_model import load_tokenizer, resolve_text_model, tokenizer_identity
from emocli.train import TrainConfig, make_splits, train

REPO = Path(__file__).resolve().parents[1]
N_MELS = 64  # ModifiedAlexNet's pools need at least 63 mel bins
MAX_TOKENS = 16
WORDS = {"ang": "furious shouting angry", "hap": "happy glad smile", "sad": "sad tears cry", "neu": "okay fine table"}
TIMING = ("seconds", "utt_per_s")  # the only fields of a run that may differ between identical runs


# --------------------------------------------------------------------------------------------- the tiny cache


# Valence, arousal, dominance per class (IEMOCAP's 1..5 scale) for caches made with dimensions=True.
VAD = {"ang": (1.6, 4.0, 4.0), "hap": (4.2, 3.4, 3.2), "sad": (1.8, 2.0, 2.2), "neu": (3.0, 2.5, 2.8)}


def make_cache(path: Path, bert_dir: Path, sessions: int = 3, per_class: int = 5, seed: int = 0,
               classes_in: dict[int, tuple[str, ...]] | None = None, dimensions: bool = False) -> Path:
    """A cache of `sessions` x 4 classes x `per_class` utterances of 0.4-0.7 s, written with CacheWriter.

    Each class raises its own quarter of the mel bands by 12 dB over -50 dB noise, and its transcript carries
    its own words, so both views are learnable. `classes_in` restricts a session (1-based) to some classes.
    `dimensions`: each utterance gets its class's valence/arousal/dominance plus noise (sd 0.3).
    """
    label_set = LABEL_SETS["4class"]
    ref = resolve_text_model(bert_dir)
    features = FeatureConfig(n_mels=N_MELS, max_tokens=MAX_TOKENS)
    rng = np.random.default_rng(seed)
    utts, specs, labels = [], [], []
    band = N_MELS // len(label_set.classes)
    for s in range(1, sessions + 1):
        for c, name in enumerate(label_set.classes):
            if classes_in and s in classes_in and name not in classes_in[s]:
                continue
            for k in range(per_class):
                gender = "FM"[k % 2]
                uid = f"Ses{s:02d}{gender}_impro01_{gender}{c}{k:02d}"
                vad = tuple(float(v) for v in np.asarray(VAD[name]) + 0.3 * rng.standard_normal(3)) \
                    if dimensions else None
                utts.append(Utterance(uid, Path(f"/synthetic/{uid}.wav"), f"{WORDS[name]} number {k}", name, name,
                                      f"Ses{s:02d}{gender}", f"Ses{s:02d}", vad))
                spec = -50.0 + 5.0 * rng.standard_normal((N_MELS, int(rng.integers(40, 70))))  # (F, T) dB
                spec[c * band:(c + 1) * band] += 12.0
                specs.append(spec.astype(np.float32))
                labels.append(c)
    ids, mask = tokenize(load_tokenizer(ref), [u.text for u in utts], MAX_TOKENS)
    writer = cache.CacheWriter(path, N_MELS, MAX_TOKENS)
    for i, utt in enumerate(utts):
        writer.append(utt, labels[i], specs[i], ids[i], mask[i], specs[i].shape[1] / 100)
    inputs = {"feature_config": features.to_json(), "label_set": label_set.to_json(),
              "tokenizer": {"name": str(bert_dir), "identity": tokenizer_identity(ref), "model_type": ref.model_type},
              "reader": {"kind": "synthetic"}, "source": {"seed": seed, "sessions": sessions, "per_class": per_class,
                                                          "classes_in": str(classes_in), "dimensions": dimensions}}
    writer.commit(inputs, {"utterances": len(utts)})
    return path


def model_config(bert_dir: Path, **overrides) -> ModelConfig:
    base = dict(n_classes=4, n_mels=N_MELS, modality="both", audio_width=0.0625, text_model=str(bert_dir),
                text_hidden=32, fusion_hidden=16, dropout=0.1, freeze_text=True)
    return ModelConfig(**{**base, **overrides})


# Two folds of four epochs: enough to interrupt one fold mid-way after another has finished.
REF_TRAIN = TrainConfig(repeats=2, epochs=4, batch_size=8, lr=3e-3, step_size=3, gamma=0.5)


@pytest.fixture(scope="module")
def tiny_cache(tiny_bert_dir, tmp_path_factory) -> Path:
    return make_cache(tmp_path_factory.mktemp("cache") / "cache.h5", tiny_bert_dir)


@pytest.fixture(scope="module")
def reference_run(tiny_cache, tiny_bert_dir, tmp_path_factory) -> Path:
    """One uninterrupted run every resume and determinism test compares against."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    train(tiny_cache, run_dir, model_config(tiny_bert_dir), REF_TRAIN)
    return run_dir


def numbers(run_dir: Path) -> dict:
    """Everything a run computed, timing aside: epoch logs, results, predictions and final weights."""
    from safetensors.torch import load_file

    out = {}
    for fold in sorted((run_dir / "folds").iterdir()):
        log = [{k: v for k, v in json.loads(line).items() if k not in TIMING}
               for line in (fold / "metrics.jsonl").read_text().splitlines()]
        weights = {k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in
                   load_file(str(fold / "model.safetensors")).items()}
        out[fold.name] = {"metrics": log, "result": json.loads((fold / "result.json").read_text()),
                          "predictions": (fold / "predictions.jsonl").read_text(), "weights": weights}
    return out


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def script_command(cache_path: Path, run_dir: Path, mc: ModelConfig, tc: TrainConfig) -> list[str]:
    return ["-m", "emocli.train", "--cache", str(cache_path), "--run-dir", str(run_dir), "--model",
            json.dumps(mc.to_json()), "--train", json.dumps(tc.to_json())]


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


# --------------------------------------------------------------------------------------------- splits


def _labels_sessions(n_sessions=3, per=10):
    labels = np.tile(np.repeat(np.arange(4), per), n_sessions)  # (n_sessions * 4 * per,)
    sessions = [f"Ses{s:02d}" for s in range(1, n_sessions + 1) for _ in range(4 * per)]
    return labels, sessions


def test_random_splits_are_stratified_disjoint_and_seeded():
    labels, sessions = _labels_sessions()
    classes = LABEL_SETS["4class"].classes
    splits = make_splits(labels, sessions, classes, TrainConfig(repeats=3, seed=5))
    assert [s.name for s in splits] == ["random-0", "random-1", "random-2"]
    for s in splits:
        parts = [set(s.train), set(s.val), set(s.test)]
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        assert set().union(*parts) == set(range(len(labels)))
        assert len(s.test) == 12 and np.all(np.bincount(labels[s.test], minlength=4) == 3)  # 10 %, stratified
        assert np.all(np.bincount(labels[s.val], minlength=4) >= 2)  # val carved stratified from the train part
    assert not np.array_equal(splits[0].test, splits[1].test)  # each repeat its own seed
    again = make_splits(labels, sessions, classes, TrainConfig(repeats=3, seed=5))
    assert all(np.array_equal(a.test, b.test) and np.array_equal(a.val, b.val) for a, b in zip(splits, again))


def test_loso_holds_out_whole_sessions():
    labels, sessions = _labels_sessions()
    session_of = np.asarray(sessions)
    splits = make_splits(labels, sessions, LABEL_SETS["4class"].classes, TrainConfig(protocol="loso"))
    assert [s.name for s in splits] == ["loso-Ses01", "loso-Ses02", "loso-Ses03"]
    for s in splits:
        held = set(session_of[s.test])
        assert len(held) == 1 and held.isdisjoint(session_of[s.train]) and held.isdisjoint(session_of[s.val])
        assert len(s.test) == 40 and len(s.train) + len(s.val) == 80


def test_split_errors_are_one_clear_line():
    labels, sessions = _labels_sessions(n_sessions=1)
    classes = LABEL_SETS["4class"].classes
    with pytest.raises(ConfigError, match="at least 2 sessions"):
        make_splits(labels, sessions, classes, TrainConfig(protocol="loso"))
    labels, sessions = _labels_sessions(n_sessions=2)
    labels[(np.asarray(sessions) == "Ses02") & (labels == 3)] = 0  # "neu" only in Ses01
    with pytest.raises(ConfigError, match="fold loso-Ses01: class.*neu.*no utterance in the training part"):
        make_splits(labels, sessions, classes, TrainConfig(protocol="loso"))


def test_bad_train_settings_refused(tiny_cache, tiny_bert_dir, tmp_path):
    with pytest.raises(ConfigError, match="protocol 'kfold'"):
        TrainConfig(protocol="kfold").validate()
    with pytest.raises(ConfigError, match="select_best needs a validation part"):
        TrainConfig(val_fraction=0.0).validate()
    with pytest.raises(ConfigError, match="unknown train setting"):
        TrainConfig.from_json({"epochz": 3})
    with pytest.raises(ConfigError, match="the cache .* has 64"):
        train(tiny_cache, tmp_path / "run", model_config(tiny_bert_dir, n_mels=80), REF_TRAIN)
    other_vocab = tmp_path / "bert"
    shutil.copytree(tiny_bert_dir, other_vocab)
    with open(other_vocab / "vocab.txt", "a", encoding="utf-8") as handle:
        handle.write("emoclitoken\n")
    with pytest.raises(ConfigError, match="was tokenised with .* which differs from the text model"):
        train(tiny_cache, tmp_path / "run", model_config(other_vocab), REF_TRAIN)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------- learning


def test_training_reduces_loss(tiny_cache, tiny_bert_dir, tmp_path):
    tc = TrainConfig(repeats=1, epochs=12, batch_size=8, lr=3e-3)
    seen = []
    summary = train(tiny_cache, tmp_path / "run", model_config(tiny_bert_dir, modality="audio"), tc,
                    progress=lambda *args: seen.append(args))
    log = [json.loads(line) for line in (tmp_path / "run/folds/random-0/metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, 13))
    assert log[-1]["train_loss"] < 0.6 * log[0]["train_loss"]
    assert max(r["train_acc"] for r in log) >= 0.7 and summary.folds[0].ua >= 0.5  # chance is 0.25
    assert [(fold, epoch, epochs) for fold, epoch, epochs, *_ in seen] == [("random-0", e, 12) for e in range(1, 13)]
    assert summary.warnings and "shares speakers" in summary.warnings[0]


def test_same_seed_same_numbers(tiny_cache, tiny_bert_dir, reference_run, tmp_path):
    train(tiny_cache, tmp_path / "run", model_config(tiny_bert_dir), REF_TRAIN)
    assert numbers(tmp_path / "run") == numbers(reference_run)


# --------------------------------------------------------------------------------------------- resume


class Interrupt(Exception):
    pass


def test_resume_after_interruption_gives_identical_numbers(tiny_cache, tiny_bert_dir, reference_run, tmp_path):
    run_dir = tmp_path / "run"

    def stop_at(fold, epoch, *_):
        if (fold, epoch) == ("random-1", 2):
            raise Interrupt

    with pytest.raises(Interrupt):
        train(tiny_cache, run_dir, model_config(tiny_bert_dir), REF_TRAIN, progress=stop_at)
    assert (run_dir / "folds/random-0/result.json").is_file() and not (run_dir / "folds/random-1/result.json").exists()
    assert len((run_dir / "folds/random-1/metrics.jsonl").read_text().splitlines()) == 2
    epochs = []
    summary = train(tiny_cache, run_dir, model_config(tiny_bert_dir), REF_TRAIN,
                    progress=lambda fold, epoch, *_: epochs.append((fold, epoch)))
    assert epochs == [("random-1", 3), ("random-1", 4)]  # the finished fold skipped, the other resumed
    assert summary.resumed == ["fold random-0 already finished", "fold random-1 from epoch 3"]
    assert numbers(run_dir) == numbers(reference_run)
    assert json.loads((run_dir / "summary.json").read_text())["aggregate"] == \
        json.loads((reference_run / "summary.json").read_text())["aggregate"]


def test_kill_9_then_rerun_gives_identical_numbers(tiny_cache, tiny_bert_dir, reference_run, tmp_path):
    run_dir = tmp_path / "run"
    mc = model_config(tiny_bert_dir)
    proc = subprocess.Popen([sys.executable, *script_command(tiny_cache, run_dir, mc, REF_TRAIN)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=subprocess_env())
    try:
        for line in proc.stdout:  # the script prints one line per finished epoch
            if line.startswith("epoch random-0 2/4"):
                os.kill(proc.pid, signal.SIGKILL)  # mid-run: six epochs to go
                break
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists()
    # Resumed as a user resumes, in a fresh process, and compared with an uninterrupted run in a fresh process:
    # this test process has run other tests, whose allocator settings (keep_freed_memory) can move buffers and
    # with them oneDNN's summation order in the last bits.
    command = [sys.executable, *script_command(tiny_cache, run_dir, mc, REF_TRAIN)]
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=subprocess_env())
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "fold random-0 from epoch" in resumed.stdout + resumed.stderr
    fresh = tmp_path / "fresh"
    assert subprocess.run([sys.executable, *script_command(tiny_cache, fresh, mc, REF_TRAIN)], cwd=REPO,
                          capture_output=True, env=subprocess_env()).returncode == 0
    assert numbers(run_dir) == numbers(fresh)
    assert not list(run_dir.rglob(".*.tmp-*"))  # nothing half-written is left behind


# --------------------------------------------------------------------------------------------- the run dir


def test_run_made_with_other_settings_is_refused_untouched(tiny_cache, tiny_bert_dir, tmp_path):
    run_dir = tmp_path / "run"
    mc = model_config(tiny_bert_dir, modality="audio")
    tc = TrainConfig(protocol="loso", epochs=1, batch_size=16)
    summary = train(tiny_cache, run_dir, mc, tc)
    assert [f.name for f in summary.folds] == ["loso-Ses01", "loso-Ses02", "loso-Ses03"]
    assert summary.warnings == []  # leave-one-session-out is speaker independent
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match=rf"run dir {run_dir} was made with different settings "
                                              r"\(train.epochs 1 -> 2\); use a new --run or delete it"):
        train(tiny_cache, run_dir, mc, dataclasses.replace(tc, epochs=2))
    with pytest.raises(CheckpointError, match=r"model.dropout 0.1 -> 0.2"):
        train(tiny_cache, run_dir, dataclasses.replace(mc, dropout=0.2), tc)
    other_cache = make_cache(tmp_path / "other.h5", tiny_bert_dir, seed=1)
    with pytest.raises(CheckpointError, match=r"cache_fingerprint"):
        train(other_cache, run_dir, mc, tc)
    assert snapshot(run_dir) == before
    with bundle.lock_run(run_dir):  # another trainer holds it
        with pytest.raises(CheckpointError, match="is in use by another `emocli train`"):
            train(tiny_cache, run_dir, mc, tc)
    # The same settings on another device are the same run: nothing to do, nothing rewritten but the summary.
    again = train(tiny_cache, run_dir, mc, dataclasses.replace(tc, device="cpu"))
    assert again.resumed == [f"fold {f} already finished" for f in ("loso-Ses01", "loso-Ses02", "loso-Ses03")]
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="is not an emocli run"):
        train(tiny_cache, tmp_path / "stuff", mc, tc)


def test_run_dir_is_complete_self_contained_and_pickle_free(tiny_cache, tiny_bert_dir, reference_run):
    import torch

    files = {str(p.relative_to(reference_run)) for p in reference_run.rglob("*") if p.is_file()}
    expected = {"config.json", "summary.json", "text_model/config.json", "text_model/vocab.txt",
                "text_model/model.safetensors"}
    for fold in ("random-0", "random-1"):
        expected |= {f"folds/{fold}/{name}" for name in ("split.json", "metrics.jsonl", "predictions.jsonl",
                                                          "model.safetensors", "result.json")}
    assert expected <= files
    assert any(f.startswith("tensorboard/random-0/events.out.tfevents") for f in files)
    for name in files:
        head = (reference_run / name).read_bytes()[:2]
        assert not name.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt")) and head[:1] != b"\x80", name  # no pickle
    config = json.loads((reference_run / "config.json").read_text())
    assert config["format_version"] == bundle.FORMAT_VERSION and config["folds"] == ["random-0", "random-1"]
    assert config["model"]["freeze_text"] and config["train"]["epochs"] == 4
    assert config["cache_fingerprint"] == cache.read_meta(tiny_cache).fingerprint
    split = json.loads((reference_run / "folds/random-0/split.json").read_text())
    assert len(split["test"]) == 6 and not set(split["train"]) & (set(split["test"]) | set(split["val"]))

    # predict's path: the model rebuilt from the run alone reproduces the saved probabilities
    model, run_config, tokenizer = bundle.load_model(reference_run)
    assert run_config.classes == ("ang", "hap", "sad", "neu") and tokenizer is not None
    data = cache.read_cache(tiny_cache)
    saved = [json.loads(line) for line in (reference_run / "folds/random-0/predictions.jsonl").read_text().splitlines()]
    index = {u: i for i, u in enumerate(data.utt_ids)}
    with torch.no_grad():
        for row in saved[:3]:
            i = index[row["utt_id"]]
            n = int(data.attention_mask[i].sum())
            logits = model(audio=torch.from_numpy(data.spectrogram(i).T)[None],
                           audio_lengths=torch.tensor([data.spec_lengths[i]]),
                           input_ids=torch.from_numpy(data.input_ids[i:i + 1, :n]).long(),
                           attention_mask=torch.from_numpy(data.attention_mask[i:i + 1, :n]).long()).logits
            np.testing.assert_allclose(torch.softmax(logits, 1)[0].numpy(), row["probs"], atol=1e-5)
            assert row["true"] == run_config.classes[data.labels[i]]
    # eval's path: every score recomputed from the saved predictions, without the model
    result = json.loads((reference_run / "folds/random-0/result.json").read_text())
    assert metrics.scores_from_predictions(saved, run_config.classes) == result["scores"]


def test_frozen_text_encoder_is_untouched(tiny_bert_dir, reference_run):
    from safetensors.torch import load_file

    original = load_file(str(tiny_bert_dir / "model.safetensors"))  # BertModel's own names
    shared = load_file(str(reference_run / "text_model/model.safetensors"))
    assert shared and all(k.startswith("text.encoder.") for k in shared)
    for key, value in shared.items():
        name = key[len("text.encoder."):]
        if name in original:
            assert np.array_equal(value.numpy(), original[name].numpy()), key
    assert sum(k[len("text.encoder."):] in original for k in shared) == len(original)
    for fold in ("random-0", "random-1"):
        own = load_file(str(reference_run / f"folds/{fold}/model.safetensors"))
        assert not any(k.startswith("text.") for k in own) and "missing_text" in own
    model, _, _ = bundle.load_model(reference_run, fold="random-1")
    for name, value in model.text.encoder.state_dict().items():
        if name in original:
            assert np.array_equal(value.numpy(), original[name].numpy()), name


# --------------------------------------------------------------------------------------------- DDP and GPU


def test_torchrun_two_processes_on_cpu(tiny_cache, tiny_bert_dir, reference_run, tmp_path):
    """gloo, a trainable encoder (DDP must find BERT's unused pooler), the same files as one process."""
    run_dir = tmp_path / "run"
    tc = dataclasses.replace(REF_TRAIN, repeats=1, epochs=2)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               *script_command(tiny_cache, run_dir, model_config(tiny_bert_dir, freeze_text=False), tc)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=subprocess_env(),
                          timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("epoch random-0") == 2  # only rank 0 reports
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert [f["name"] for f in summary["folds"]] == ["random-0"]
    log = [json.loads(line) for line in (run_dir / "folds/random-0/metrics.jsonl").read_text().splitlines()]
    reference = json.loads((reference_run / "folds/random-0/metrics.jsonl").read_text().splitlines()[0])
    assert [r["epoch"] for r in log] == [1, 2] and all(set(r) == set(reference) for r in log)
    assert len((run_dir / "folds/random-0/predictions.jsonl").read_text().splitlines()) == 6
    assert (run_dir / "summary.json").is_file() and len(list((run_dir / "tensorboard").rglob("events.*"))) == 1


@pytest.mark.gpu
def test_trains_on_cuda_with_bf16(tiny_cache, tiny_bert_dir, tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    tc = dataclasses.replace(REF_TRAIN, repeats=1, epochs=2, device="cuda")
    summary = train(tiny_cache, tmp_path / "run", model_config(tiny_bert_dir, freeze_text=False), tc)
    log = [json.loads(line) for line in (tmp_path / "run/folds/random-0/metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["train_loss"]) for r in log) and 0.0 <= summary.folds[0].wa <= 1.0
    model, _, _ = bundle.load_model(tmp_path / "run")
    assert next(model.parameters()).dtype == torch.float32  # bf16 only inside autocast; weights stay fp32
