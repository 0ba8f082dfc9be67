"""Run directories from elsewhere (downloaded, hand-edited, half-copied) through `emocli eval`, `eval --cache`,
`predict` and `compare`: missing files, wrong shapes, configs of other versions, pickles where safetensors belong,
damaged logs. Each is refused with one clear line (exit 1, no traceback), or, where the damaged file is not needed
(held-out scores come from saved predictions, not weights), the command succeeds.

Nothing is ever unpickled: every pickle planted here would create a marker file when loaded, and none ever does.
tests/test_bundle.py checks the loader's own refusals; this is what a user sees through the CLI.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest

from emocli.model import ModelConfig
from emocli.train import TrainConfig, train
from test_reliability_common import assert_refused, cli, no_traceback, tone
from test_train import make_cache

F = "folds/random-0/"
OK = None  # the command succeeds: the damaged file is not one it reads


class Unpickled:
    """Loading this pickle creates `path`: the proof that something unpickled it."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def trained(tiny_bert_dir, tmp_path_factory) -> tuple[Path, Path]:
    """(a tiny finished fusion run with a frozen encoder, its cache)."""
    folder = tmp_path_factory.mktemp("rundir")
    cache_path = make_cache(folder / "cache.h5", tiny_bert_dir)
    config = ModelConfig(n_mels=64, modality="both", audio_width=0.0625, text_model=str(tiny_bert_dir),
                         text_hidden=32, fusion_hidden=16, freeze_text=True)
    train(cache_path, folder / "run", config, TrainConfig(repeats=1, epochs=1, batch_size=8, device="cpu"))
    return folder / "run", cache_path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    import soundfile as sf

    path = tmp_path_factory.mktemp("clip") / "clip.wav"
    sf.write(path, tone(1.0), 16_000, subtype="PCM_16")
    return path


def _pickle(marker: Path) -> bytes:
    return pickle.dumps({"weights": Unpickled(marker)})


def _torch_pickle(marker: Path) -> bytes:
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(2), "payload": Unpickled(marker)}, buffer)  # a zip holding data.pkl
    return buffer.getvalue()


def _write(relative: str, content):
    def damage(run: Path, marker: Path) -> None:
        data = content(marker) if callable(content) else content
        (run / relative).parent.mkdir(parents=True, exist_ok=True)
        (run / relative).write_bytes(data if isinstance(data, bytes) else data.encode())
    return damage


def _remove(*relatives: str):
    def damage(run: Path, marker: Path) -> None:
        for relative in relatives:
            path = run / relative
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return damage


def _both(*damages):
    def damage(run: Path, marker: Path) -> None:
        for d in damages:
            d(run, marker)
    return damage


def _config(edit):
    def damage(run: Path, marker: Path) -> None:
        data = json.loads((run / "config.json").read_text())
        edit(data)
        (run / "config.json").write_text(json.dumps(data))
    return damage


def _tensors(edit, relative: str = F + "model.safetensors"):
    def damage(run: Path, marker: Path) -> None:
        from safetensors.torch import load_file, save_file

        state = load_file(str(run / relative))
        edit(state)
        save_file(state, str(run / relative))
    return damage


def _truncate(relative: str, keep: int):
    def damage(run: Path, marker: Path) -> None:
        (run / relative).write_bytes((run / relative).read_bytes()[:keep])
    return damage


def _bigger_vocab(run: Path, marker: Path) -> None:
    (run / "text_model/tokenizer.json").unlink(missing_ok=True)
    with open(run / "text_model/vocab.txt", "a", encoding="utf-8") as handle:
        handle.writelines(f"emocliextra{k}\n" for k in range(10))


def _set(path: str, value):
    def edit(data: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            data = data[key]
        if value is _DELETE:
            del data[last]
        else:
            data[last] = value
    return edit


_DELETE = object()
EVAL, EVAL_CACHE, PREDICT, COMPARE = "eval", "eval --cache", "predict", "compare"


def _expect(default):
    return {command: default for command in (EVAL, EVAL_CACHE, PREDICT, COMPARE)}


def _model_only(words):
    """Damage to what only a model load reads: eval and compare score the saved predictions without it."""
    return {EVAL: OK, EVAL_CACHE: words, PREDICT: words, COMPARE: OK}


DAMAGES: dict[str, tuple] = {
    # ---- missing files
    "no-config": (_remove("config.json"), _expect("config.json is missing")),
    "no-weights": (_remove(F + "model.safetensors"), _model_only("model.safetensors is missing")),
    "no-result": (_remove(F + "result.json"), {EVAL: "has no finished fold", EVAL_CACHE: "has no finished fold",
                                               PREDICT: "has not finished training", COMPARE: "has no finished fold"}),
    "no-predictions": (_remove(F + "predictions.jsonl"), {EVAL: "predictions.jsonl is missing", EVAL_CACHE: OK,
                                                          PREDICT: OK, COMPARE: "predictions.jsonl is missing"}),
    "no-folds-folder": (_remove("folds"), {EVAL: "has no finished fold", EVAL_CACHE: "has no finished fold",
                                           PREDICT: "has not finished training", COMPARE: "has no finished fold"}),
    "no-shared-encoder": (_remove("text_model/model.safetensors"),
                          _model_only("text_model/model.safetensors is missing")),
    "no-encoder-config": (_remove("text_model/config.json"), _model_only("text_model/config.json is missing")),
    "no-vocabulary": (_remove("text_model/vocab.txt", "text_model/tokenizer.json"),
                      _model_only("has no tokenizer vocabulary")),
    # ---- wrong shapes
    "weights-of-another-shape": (_tensors(lambda s: s.__setitem__("head.4.weight", s["head.4.weight"][:3])),
                                 _model_only("does not fit this model (wrong shape head.4.weight")),
    "weights-missing-a-tensor": (_tensors(lambda s: s.pop("head.4.bias")),
                                 _model_only("does not fit this model (missing head.4.bias")),
    "weights-with-a-stranger": (_tensors(lambda s: s.__setitem__("backdoor", s["head.4.bias"].clone())),
                                _model_only("does not fit this model (unexpected backdoor")),
    "config-says-80-mel-bands": (_config(lambda d: (_set("model.n_mels", 80)(d), _set("features.n_mels", 80)(d))),
                                 {EVAL: OK, EVAL_CACHE: "feature mismatch", PREDICT: "does not fit this model",
                                  COMPARE: OK}),
    "config-says-3-classes": (_config(_set("model.n_classes", 3)), _model_only("does not fit this model")),
    "encoder-config-wider": (_write("text_model/config.json", lambda m: json.dumps(
        {"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
         "intermediate_size": 64, "vocab_size": 30522, "max_position_embeddings": 128})),
        _model_only("hidden size 64")),
    "tokenizer-larger-than-encoder": (_bigger_vocab, _model_only("tokens, its encoder only")),
    # ---- other versions
    "format-99": (_config(_set("format_version", 99)), _expect("has run format 99, this emocli reads 2")),
    "format-missing": (_config(_set("format_version", _DELETE)), _expect("has run format None")),
    "model-field-from-a-newer-emocli": (_config(_set("model.mixture_of_experts", 8)),
                                        _expect("written by a newer emocli")),
    "older-emocli-same-format": (_config(_set("emocli_version", "0.0.1")), _expect(OK)),
    "config-not-json": (_write("config.json", "{not json"), _expect("config.json is not readable JSON")),
    "config-a-list": (_write("config.json", "[1, 2]"), _expect("is not an emocli run config")),
    "config-nested-absurdly": (_write("config.json", "[" * 100_000), _expect("config.json is not readable JSON")),
    "config-no-folds": (_config(_set("folds", [])), {EVAL: "has no finished fold", EVAL_CACHE: "has no finished fold",
                                                     PREDICT: "lists no folds", COMPARE: "has no finished fold"}),
    "config-fold-not-a-name": (_config(_set("folds", [7])), _expect("fold and class names must be strings")),
    # ---- pickles where safetensors or JSON belong: refused, never loaded
    "weights-are-a-pickle": (_write(F + "model.safetensors", _pickle), _model_only("is not a safetensors file")),
    "weights-are-a-torch-zip": (_write(F + "model.safetensors", _torch_pickle),
                                _model_only("is not a safetensors file")),
    "only-a-model.pt": (_both(_remove(F + "model.safetensors"), _write(F + "model.pt", _torch_pickle)),
                        _model_only("holds pickled weights (model.pt) instead of model.safetensors")),
    "encoder-is-a-pickle": (_write("text_model/model.safetensors", _pickle), _model_only("is not a safetensors file")),
    "only-a-pytorch_model.bin": (_both(_remove("text_model/model.safetensors"),
                                       _write("text_model/pytorch_model.bin", _torch_pickle)),
                                 _model_only("holds pickled weights (pytorch_model.bin)")),
    "config-is-a-pickle": (_write("config.json", _pickle), _expect("config.json is not readable JSON")),
    "predictions-are-a-pickle": (_write(F + "predictions.jsonl", _pickle),
                                 {EVAL: "is not readable JSON lines", EVAL_CACHE: OK, PREDICT: OK,
                                  COMPARE: "is not readable JSON lines"}),
    "unfinished-fold-with-a-pickled-checkpoint": (
        _both(_remove(F + "result.json"), _write(F + "checkpoint/checkpoint.safetensors", _pickle)),
        {EVAL: "has no finished fold", EVAL_CACHE: "has no finished fold", PREDICT: "has not finished training",
         COMPARE: "has no finished fold"}),
    "stray-pickles-beside-good-files": (_both(_write("text_model/tokenizer.pkl", _pickle),
                                              _write("text_model/training_args.bin", _torch_pickle),
                                              _write(F + "optimizer.pt", _torch_pickle)), _expect(OK)),
    # ---- damaged files
    "weights-truncated": (_truncate(F + "model.safetensors", 1000), _model_only("is not a safetensors file")),
    "weights-empty": (_write(F + "model.safetensors", b""), _model_only("is not a safetensors file")),
    "weights-header-claims-a-terabyte": (_write(F + "model.safetensors", (1 << 40).to_bytes(8, "little") + b"{}"),
                                         _model_only("is not a safetensors file")),
    "predictions-garbage": (_write(F + "predictions.jsonl", "garbage\n"),
                            {EVAL: "is not readable JSON lines", EVAL_CACHE: OK, PREDICT: OK,
                             COMPARE: "is not readable JSON lines"}),
    "predictions-empty": (_write(F + "predictions.jsonl", ""), {EVAL: "predictions.jsonl is empty", EVAL_CACHE: OK,
                                                               PREDICT: OK, COMPARE: "predictions.jsonl is empty"}),
    "predictions-without-labels": (_write(F + "predictions.jsonl", '{"utt_id": "u"}\n[1]\n'),
                                   {EVAL: "holds a record without true, pred", EVAL_CACHE: OK, PREDICT: OK,
                                    COMPARE: "holds a record without true, pred"}),
    "predictions-name-another-class": (_write(F + "predictions.jsonl", '{"true": "zzz", "pred": "ang"}\n'),
                                       {EVAL: "names 'zzz', which is not a class", EVAL_CACHE: OK, PREDICT: OK,
                                        COMPARE: "names 'zzz', which is not a class"}),
    "epoch-log-garbage": (_write(F + "metrics.jsonl", b"\xff\xfe garbage\n"),
                          {EVAL: "metrics.jsonl is not readable JSON lines",
                           EVAL_CACHE: "metrics.jsonl is not readable JSON lines", PREDICT: OK, COMPARE: OK}),
}


def _invoke(command: str, run: Path, cache_path: Path, clip: Path):
    if command == EVAL:
        return cli("eval", run)
    if command == EVAL_CACHE:
        return cli("eval", run, "--cache", cache_path, "--device", "cpu")
    if command == PREDICT:
        return cli("predict", run, clip, "--text", "I am so happy", "--device", "cpu")
    return cli("compare", run)


# Where eval's success is also run (it draws its plots: half a second each); elsewhere only its refusals are.
EVAL_SUCCESS_CHECKED = {"no-weights", "no-predictions", "older-emocli-same-format", "stray-pickles-beside-good-files"}


@pytest.mark.parametrize("case", list(DAMAGES))
def test_damaged_run_is_refused_in_one_line_or_not_needed(trained, clip, tmp_path, case):
    source, cache_path = trained
    damage, expected = DAMAGES[case]
    marker = tmp_path / "UNPICKLED"
    run = Path(shutil.copytree(source, tmp_path / "run"))
    damage(run, marker)
    for command, words in expected.items():
        if words is OK and command in (EVAL, EVAL_CACHE) and case not in EVAL_SUCCESS_CHECKED:
            continue
        result = _invoke(command, run, cache_path, clip)
        if words is OK:
            assert result.exit_code == 0, (command, result.stderr)
            no_traceback(result)
        else:
            assert_refused(result, words)
    assert not marker.exists(), "something unpickled a file from the run directory"


def test_run_path_that_is_a_file_or_missing(clip, trained, tmp_path):
    (tmp_path / "run").write_text("not a folder")
    for target, words in ((tmp_path / "run", "is a file, not a run folder"), (tmp_path / "nowhere", "no run at")):
        assert_refused(cli("eval", target), words)
        assert_refused(cli("predict", target, clip), words)


def test_a_pickle_given_as_the_cache_to_eval_is_refused_unloaded(trained, tmp_path):
    run, _ = trained
    marker = tmp_path / "UNPICKLED"
    other = tmp_path / "other.h5"
    other.write_bytes(_pickle(marker))
    assert_refused(cli("eval", run, "--cache", other, "--device", "cpu"), "is not a readable emocli cache")
    assert not marker.exists()


def test_a_parent_folder_or_a_file_is_said_to_be_no_run(tmp_path):
    from test_reliability_common import assert_refused, cli

    import json

    from emocli.bundle import _MARKER

    runs = tmp_path / "runs"
    for name in ("a", "b"):
        (runs / name).mkdir(parents=True)
        (runs / name / "config.json").write_text(json.dumps({_MARKER: True}))
    (runs / "tensorboard").mkdir()
    (runs / "tensorboard" / "config.json").write_text("{}")  # not a run: not listed
    assert_refused(cli("eval", runs), "is not a run but a folder of runs (a, b)", "pass one of them")
    (tmp_path / "notes.txt").write_text("x")
    assert_refused(cli("eval", tmp_path / "notes.txt"), "is a file, not a run folder")
