"""The run directory: config check, atomic checkpoints without pickle, and loading a model back offline."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from emocli import bundle
from emocli.corpus.records import LABEL_SETS
from emocli.errors import CheckpointError
from emocli.features import FeatureConfig
from emocli.model import EmotionModel, ModelConfig

N_MELS = 64


def run_config(bert_dir: Path | None = None, folds=("random-0", "random-1"), **model) -> bundle.RunConfig:
    base = dict(n_mels=N_MELS, modality="audio", audio_width=0.0625, fusion_hidden=16, dropout=0.0)
    if bert_dir is not None:
        base.update(modality="both", text_model=str(bert_dir), text_hidden=32, freeze_text=True)
    return bundle.RunConfig(model=ModelConfig(**{**base, **model}), train={"epochs": 3, "seed": 0, "device": "auto"},
                            features=FeatureConfig(n_mels=N_MELS), label_set=LABEL_SETS["4class"],
                            tokenizer={"name": "x", "identity": "abc"}, cache_fingerprint="f00", folds=tuple(folds))


def finished_run(run_dir: Path, config: bundle.RunConfig, text_dir: Path | None = None, seed: int = 0) -> EmotionModel:
    """A run whose folds hold the weights of one freshly initialised model, as train() leaves them."""
    torch.manual_seed(seed)
    model = EmotionModel(config.model)
    model.set_input_stats(torch.linspace(-60, -20, N_MELS), torch.full((N_MELS,), 7.0))
    run = bundle.create_or_open_run(run_dir, config, text_dir)
    freeze = config.model.uses_text and config.model.freeze_text
    if freeze:
        run.save_text_encoder({k: v for k, v in model.state_dict().items() if k in bundle.text_encoder_keys(model)})
    for name in config.folds:
        run.fold(name).save_final(bundle.model_state(model, freeze), [{"utt_id": "u1", "true": "ang", "pred": "sad",
                                                                       "probs": [0.1, 0.2, 0.6, 0.1]}],
                                  {"name": name, "wa": 0.0})
    return model.eval()


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------------------------- config


def test_config_round_trip_and_settings():
    config = run_config()
    again = bundle.RunConfig.from_json(json.loads(json.dumps(config.to_json())), Path("x"))
    assert again == config
    moved = dataclasses.replace(config, train={**config.train, "device": "cuda"})
    assert moved.settings() == config.settings()  # where a run executes is not what it computes
    assert dataclasses.replace(config, cache_fingerprint="other").settings() != config.settings()


def test_check_run_refuses_other_settings_foreign_folders_and_versions(tmp_path):
    config = run_config()
    assert bundle.check_run(tmp_path / "new", config) is None
    assert bundle.check_run(tmp_path, config) is None  # empty folder: fine
    bundle.create_or_open_run(tmp_path / "run", config)
    assert bundle.check_run(tmp_path / "run", config).config == config
    other = dataclasses.replace(config, train={**config.train, "epochs": 5})
    with pytest.raises(CheckpointError, match=r"different settings \(train.epochs 3 -> 5\); use a new --run"):
        bundle.create_or_open_run(tmp_path / "run", other)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "data.csv").write_text("a,b")
    with pytest.raises(CheckpointError, match="is not an emocli run"):
        bundle.create_or_open_run(tmp_path / "mine", config)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["data.csv"]
    data = json.loads((tmp_path / "run/config.json").read_text())
    (tmp_path / "run/config.json").write_text(json.dumps({**data, "format_version": 99}))
    with pytest.raises(CheckpointError, match="run format 99, this emocli reads 2"):
        bundle.open_run(tmp_path / "run")
    (tmp_path / "run/config.json").write_text(json.dumps({"model": {}}))
    with pytest.raises(CheckpointError, match="not an emocli run config"):
        bundle.open_run(tmp_path / "run")


# --------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_resumes_adam_exactly(tmp_path):
    run = bundle.create_or_open_run(tmp_path / "run", run_config())
    fold = run.fold("random-0")
    torch.manual_seed(0)
    net = torch.nn.Linear(5, 3)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x = torch.randn(8, 5)

    def step(n, o):
        o.zero_grad()
        n(x).pow(2).sum().backward()
        o.step()

    step(net, opt)
    sched.step()
    tensors, index = bundle.flatten_optimizer(opt.state_dict())
    fold.save_checkpoint({**{f"model.{k}": v for k, v in net.state_dict().items()}, **tensors},
                         {"epoch": 1, "optimizer": index, "scheduler": sched.state_dict()})
    assert fold.load_checkpoint() is not None and not list(fold.path.rglob(".*tmp-*"))

    loaded_tensors, state = fold.load_checkpoint()
    net2 = torch.nn.Linear(5, 3)
    net2.load_state_dict({k[len("model."):]: v for k, v in loaded_tensors.items() if k.startswith("model.")})
    opt2 = torch.optim.Adam(net2.parameters(), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=1, gamma=0.5)
    opt2.load_state_dict(bundle.unflatten_optimizer(loaded_tensors, state["optimizer"]))
    sched2.load_state_dict(state["scheduler"])
    assert state["epoch"] == 1 and opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 5e-3
    step(net, opt)
    step(net2, opt2)
    assert same_weights(net, net2)


def test_no_checkpoint_is_none_and_a_pickle_is_refused_never_loaded(tmp_path):
    run = bundle.create_or_open_run(tmp_path / "run", run_config())
    fold = run.fold("random-0")
    assert fold.load_checkpoint() is None
    marker = tmp_path / "unpickled"

    class Payload:  # unpickling this would create `marker`
        def __reduce__(self):
            return (Path.touch, (marker,))

    (fold.path / "checkpoint").mkdir(parents=True)
    (fold.path / "checkpoint" / "checkpoint.pt").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match=r"pickled weights \(checkpoint.pt\).*never unpickles"):
        fold.load_checkpoint()
    (fold.path / "checkpoint" / "checkpoint.safetensors").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="is not a safetensors file"):
        fold.load_checkpoint()
    assert not marker.exists()


# --------------------------------------------------------------------------------------------- loading a model


def test_load_model_rebuilds_the_fold_and_validates(tmp_path):
    config = run_config()
    model = finished_run(tmp_path / "run", config)
    loaded, loaded_config, tokenizer = bundle.load_model(tmp_path / "run")
    assert same_weights(model, loaded) and loaded_config == config and tokenizer is None and not loaded.training
    assert float(loaded.audio.spec_std[0]) == 7.0  # the spec stats travel inside the weights
    with pytest.raises(CheckpointError, match="has no fold 'random-7'; it has: random-0, random-1"):
        bundle.load_model(tmp_path / "run", fold="random-7")

    weights = tmp_path / "run/folds/random-1/model.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    state["head.4.weight"] = torch.zeros(5, 16)
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=r"does not fit this model \(wrong shape head.4.weight\)"):
        bundle.load_model(tmp_path / "run", fold="random-1")
    weights.unlink()
    torch.save(model.state_dict(), weights.with_suffix(".pt"))
    with pytest.raises(CheckpointError, match=r"pickled weights \(model.pt\)"):
        bundle.load_model(tmp_path / "run", fold="random-1")
    (tmp_path / "run/folds/random-0/result.json").unlink()
    with pytest.raises(CheckpointError, match="fold random-0 .* has not finished training"):
        bundle.load_model(tmp_path / "run")
    with pytest.raises(CheckpointError, match="no run at"):
        bundle.load_model(tmp_path / "nowhere")


def test_load_model_needs_neither_the_text_model_folder_nor_the_cache(tiny_bert_dir, tmp_path):
    bert = tmp_path / "bert"
    shutil.copytree(tiny_bert_dir, bert)
    config = run_config(bert)
    model = finished_run(tmp_path / "run", config, text_dir=bert)
    shutil.rmtree(bert)  # the original folder is gone
    loaded, _, tokenizer = bundle.load_model(tmp_path / "run", fold="random-1")
    assert same_weights(model, loaded)
    from transformers import AutoTokenizer

    from emocli.features import tokenize

    reference = AutoTokenizer.from_pretrained(str(tmp_path / "run/text_model"), local_files_only=True)
    texts = ["happy", "I can't believe it [LAUGHTER]"]
    assert tokenize(tokenizer, texts, 12)[0].tolist() == tokenize(reference, texts, 12)[0].tolist()
    assert tokenize(tokenizer, texts, 12)[0][0, 0] == reference.cls_token_id
    own = json.loads((tmp_path / "run/text_model/config.json").read_text())
    assert own["hidden_size"] == 32 and (tmp_path / "run/text_model/vocab.txt").is_file()
    fold_weights, _ = bundle.load_tensors(tmp_path / "run/folds/random-0/model.safetensors")
    assert "missing_text" in fold_weights and not any(k.startswith("text.") for k in fold_weights)
    (tmp_path / "run/text_model/model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="text_model/model.safetensors is missing"):
        bundle.load_model(tmp_path / "run")


def test_predictions_and_metrics_logs_round_trip(tmp_path):
    config = run_config()
    finished_run(tmp_path / "run", config)
    fold = bundle.open_run(tmp_path / "run").fold("random-0")
    assert fold.read_predictions() == [{"utt_id": "u1", "true": "ang", "pred": "sad", "probs": [0.1, 0.2, 0.6, 0.1]}]
    fold.write_metrics([{"epoch": 1, "train_loss": 1.5}, {"epoch": 2, "train_loss": 1.0}])
    assert [r["epoch"] for r in fold.read_metrics()] == [1, 2]
    assert not (fold.path / "checkpoint").exists()  # the final weights supersede the last checkpoint


def test_lock_refuses_a_second_trainer_and_clears_stale_temporaries(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "folds" / "random-0").mkdir(parents=True)
    stale = run_dir / "folds" / "random-0" / ".metrics.jsonl.tmp-12345"
    stale.write_text("half")
    with bundle.lock_run(run_dir):
        assert not stale.exists()
        with pytest.raises(CheckpointError, match="in use by another"):
            with bundle.lock_run(run_dir):
                pass
    with bundle.lock_run(run_dir):  # released on exit
        pass
