"""Hugging Face model ids found in a local hub cache, offline: a fake cache laid out as huggingface_hub lays it out
(refs/main, snapshots/<commit>/ of symlinks into blobs/), holding tiny real models."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from emocli.errors import EncoderError, TextModelError
from emocli.hf_cache import cache_root, cached_snapshot, is_model_id, repo_folder

COMMIT_A, COMMIT_B = "a" * 40, "b" * 40
SR = 16_000
CACHE_VARS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")


def cache_model(hub: Path, model_id: str, source: Path, commit: str = COMMIT_A, ref: bool = True,
                big_as_links: bool = False) -> Path:
    """`source`'s files as `hf download model_id` leaves them in `hub`: content in blobs/, symlinks in the snapshot.
    `big_as_links`: blobs are links to `source`'s files, named by their path (a packaged 73 MB model, not copied)."""
    repo = hub / f"models--{model_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for file in sorted(source.iterdir()):
        if big_as_links:
            blob = repo / "blobs" / hashlib.sha256(str(file).encode()).hexdigest()
            if not blob.is_symlink():
                blob.symlink_to(file)
        else:
            data = file.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", blob.name))
    if ref:
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "hub"
    root.mkdir()
    for var in CACHE_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    return root


@pytest.fixture
def config_only(tmp_path) -> Path:
    folder = tmp_path / "config-only"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "bert"}')
    return folder


# ------------------------------------------------------------------------------------------------------- the layout

def test_an_id_is_found_through_refs_main_even_when_a_newer_snapshot_exists(hub, config_only):
    chosen = cache_model(hub, "google-bert/bert-base-uncased", config_only, COMMIT_A)
    newer = cache_model(hub, "google-bert/bert-base-uncased", config_only, COMMIT_B, ref=False)
    os.utime(newer, ns=(chosen.stat().st_mtime_ns + 10**9,) * 2)
    assert cached_snapshot("google-bert/bert-base-uncased") == chosen
    assert (chosen / "config.json").is_symlink() and json.loads((chosen / "config.json").read_text())


def test_without_refs_main_the_newest_snapshot_is_taken(hub, config_only):
    first = cache_model(hub, "org/model", config_only, COMMIT_A, ref=False)
    assert cached_snapshot("org/model") == first  # one snapshot, no refs/: copied without it
    second = cache_model(hub, "org/model", config_only, COMMIT_B, ref=False)
    os.utime(first, ns=(second.stat().st_mtime_ns + 10**9,) * 2)
    assert cached_snapshot("org/model") == first
    (repo_folder("org/model") / "refs").mkdir()
    (repo_folder("org/model") / "refs" / "main").write_text("c" * 40)  # names a snapshot that was pruned
    assert cached_snapshot("org/model") == first


def test_an_id_is_looked_up_exactly_as_given(hub, config_only):
    snapshot = cache_model(hub, "bert-base-uncased", config_only)
    assert cached_snapshot("bert-base-uncased") == snapshot
    assert repo_folder("google-bert/bert-base-uncased") == hub / "models--google-bert--bert-base-uncased"
    assert cached_snapshot("google-bert/bert-base-uncased") is None  # no guessing of organisations
    for path in ("./bert-base-uncased", str(hub), "a/b/c", "~/x", "org--x", "", "x" * 97):
        assert not is_model_id(path) and cached_snapshot(path) is None, path


ENVS = [  # each with the cache root huggingface_hub makes of it
    ({"HF_HUB_CACHE": "/h/hub-cache", "HUGGINGFACE_HUB_CACHE": "/h/legacy", "HF_HOME": "/h/home"}, "/h/hub-cache"),
    ({"HUGGINGFACE_HUB_CACHE": "/h/legacy", "HF_HOME": "/h/home"}, "/h/legacy"),
    ({"HF_HOME": "/h/home", "XDG_CACHE_HOME": "/h/xdg"}, "/h/home/hub"),
    ({"XDG_CACHE_HOME": "/h/xdg"}, "/h/xdg/huggingface/hub"),
    ({"HOME": "/h/user"}, "/h/user/.cache/huggingface/hub"),
]
# huggingface_hub itself reads the environment at import: one fresh process reloads its constants for each
HUB_SAYS = """import importlib, json, os, sys
import huggingface_hub.constants as constants
roots = []
for env in json.loads(sys.argv[1]):
    for var in json.loads(sys.argv[2]):
        os.environ.pop(var, None)
    os.environ.update(env)
    roots.append(importlib.reload(constants).HF_HUB_CACHE)
print(json.dumps(roots))
"""


def test_the_cache_root_follows_huggingface_hubs_precedence(monkeypatch):
    envs = [env for env, _ in ENVS]
    theirs = json.loads(subprocess.run([sys.executable, "-c", HUB_SAYS, json.dumps(envs), json.dumps(CACHE_VARS)],
                                       check=True, capture_output=True, text=True).stdout)
    ours = []
    for env in envs:
        with monkeypatch.context() as patch:
            for var in CACHE_VARS:
                patch.delenv(var, raising=False)
            for key, value in env.items():
                patch.setenv(key, value)
            ours.append(str(cache_root()))
    assert ours == theirs == [root for _, root in ENVS]


def test_hf_hub_cache_wins_over_hf_home(tmp_path, monkeypatch, config_only):
    home_snapshot = cache_model(tmp_path / "home" / "hub", "org/model", config_only, COMMIT_A)
    cache_snapshot = cache_model(tmp_path / "elsewhere", "org/model", config_only, COMMIT_B)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    assert cached_snapshot("org/model") == home_snapshot
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert cached_snapshot("org/model") == cache_snapshot


# ------------------------------------------------------------------------------------------------------ text model

def test_a_missing_id_is_one_line_naming_the_folder_searched(hub):
    from emocli.encoders import resolve_upstream
    from emocli.text_model import resolve_text_model

    for resolve, error in ((resolve_text_model, TextModelError), (resolve_upstream, EncoderError)):
        with pytest.raises(error) as caught:
            resolve("google-bert/bert-base-uncased")
        message = str(caught.value)
        assert "\n" not in message and "neither" in message and "nor in the local Hugging Face cache" in message
        assert str(hub / "models--google-bert--bert-base-uncased") in message
        assert "`hf download google-bert/bert-base-uncased`" in message and "Nothing is downloaded" in message
    with pytest.raises(TextModelError, match="nor a local folder") as caught:
        resolve_text_model(str(hub / "missing-folder"))  # a path is not an id: no cache in the message
    assert "cache" not in str(caught.value)


def test_a_cached_text_model_resolves_by_its_id_and_encodes_as_its_folder_does(hub, tiny_bert_dir):
    from emocli.encoders.text import TextEncoder
    from emocli.text_model import (file_sha256, load_fast_tokenizer, resolve_text_model, tokenizer_identity,
                                   verify_weights, weights_file)

    snapshot = cache_model(hub, "org/tiny-bert", tiny_bert_dir)
    ref, folder_ref = resolve_text_model("org/tiny-bert"), resolve_text_model(str(tiny_bert_dir))
    assert ref.name == "org/tiny-bert" and ref.path == snapshot.resolve() and ref.model_type == "bert"
    assert weights_file(ref).is_symlink()
    assert tokenizer_identity(ref) == tokenizer_identity(folder_ref)  # the content is hashed, not the link
    content_sha = file_sha256(tiny_bert_dir / "model.safetensors")
    verify_weights(ref.__class__(**{**ref.__dict__, "expected_sha256": content_sha}))
    with pytest.raises(TextModelError, match="corrupt or replaced"):
        verify_weights(ref.__class__(**{**ref.__dict__, "expected_sha256": "0" * 64}))
    tokens = load_fast_tokenizer(ref)(["the cache holds it", "offline"], max_length=12)
    ids, mask = torch.tensor(tokens["input_ids"]), torch.tensor(tokens["attention_mask"])
    with torch.no_grad():
        cached = TextEncoder.from_pretrained("org/tiny-bert").eval()(ids, mask)
        local = TextEncoder.from_pretrained(str(tiny_bert_dir)).eval()(ids, mask)
    assert cached.shape == (2, 32)
    torch.testing.assert_close(cached, local, rtol=0, atol=0)


def test_a_partly_cached_text_model_is_refused_at_resolution(hub, tiny_bert_dir, tmp_path):
    from emocli.text_model import resolve_text_model

    tokenizer_only = tmp_path / "tokenizer-only"  # what AutoTokenizer.from_pretrained leaves in a cache
    tokenizer_only.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_bert_dir / name, tokenizer_only / name)
    cache_model(hub, "org/tiny-bert", tokenizer_only)
    with pytest.raises(TextModelError, match=r"lacks model.safetensors; fetch all its files with `hf download"):
        resolve_text_model("org/tiny-bert")


def test_a_local_folder_wins_over_the_cache(hub, tiny_bert_dir, tmp_path, monkeypatch, config_only):
    from emocli.text_model import resolve_text_model

    cache_model(hub, "tiny", config_only)  # a config-only cached "tiny": would be refused if it were taken
    shutil.copytree(tiny_bert_dir, tmp_path / "tiny")
    monkeypatch.chdir(tmp_path)
    assert resolve_text_model("tiny").path == (tmp_path / "tiny").resolve()


# ---------------------------------------------------------------------------------------------------- audio encoder

@pytest.fixture(scope="module")
def tiny_wav2vec2(tmp_path_factory) -> Path:
    from test_encoder_hf_speech import _build

    folder = tmp_path_factory.mktemp("wav2vec2")
    _build("wav2vec2-group", folder)
    return folder


def _audio(seconds: float = 0.5) -> np.ndarray:
    return np.random.default_rng(0).standard_normal(int(seconds * SR)).astype(np.float32) * 0.1


def test_a_cached_speech_encoder_resolves_by_its_id_and_embeds_as_its_folder_does(hub, tiny_wav2vec2):
    from emocli.encoders import audio_branch, load_upstream, resolve_upstream

    snapshot = cache_model(hub, "facebook/tiny-wav2vec2", tiny_wav2vec2)
    info, folder_info = resolve_upstream("facebook/tiny-wav2vec2"), resolve_upstream(str(tiny_wav2vec2))
    assert info.kind == "hf" and info.name == "facebook/tiny-wav2vec2" and info.path == str(snapshot.resolve())
    assert info.identity() == folder_info.identity()  # the same stage fingerprint: the content decides
    assert audio_branch("facebook/tiny-wav2vec2") == ("frames", info.to_json())
    np.testing.assert_array_equal(load_upstream(info).embed(_audio()), load_upstream(folder_info).embed(_audio()))


def test_a_recorded_snapshot_that_is_gone_is_found_again_by_id_and_must_hold_the_same_weights(hub, tiny_wav2vec2,
                                                                                              tmp_path):
    from emocli.encoders import load_upstream, resolve_upstream

    old = cache_model(hub, "facebook/tiny-wav2vec2", tiny_wav2vec2, COMMIT_A)
    info = resolve_upstream("facebook/tiny-wav2vec2")
    expected = load_upstream(info).embed(_audio())
    shutil.rmtree(old)  # the cache was moved, or pruned after an update to the same weights
    cache_model(hub, "facebook/tiny-wav2vec2", tiny_wav2vec2, COMMIT_B)
    np.testing.assert_array_equal(load_upstream(info).embed(_audio()), expected)
    # An update to other weights: refused, with the revision the run was made with.
    shutil.rmtree(hub)
    retrained = tmp_path / "retrained"
    shutil.copytree(tiny_wav2vec2, retrained)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(retrained / "model.safetensors"))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + 1
    save_file(tensors, str(retrained / "model.safetensors"), metadata={"format": "pt"})
    cache_model(hub, "facebook/tiny-wav2vec2", retrained, COMMIT_B)
    with pytest.raises(EncoderError, match=f"is not the copy this was made with .*--revision {COMMIT_A}"):
        load_upstream(info)


def test_a_cached_ctranslate2_whisper_resolves_by_its_id_and_is_found_again_when_its_snapshot_is_gone(hub):
    from emocli.encoders import _relocated, resolve_upstream
    from emocli.encoders.whisper import resolve_whisper

    packaged = resolve_whisper("whisper")
    old = cache_model(hub, "Systran/faster-whisper-tiny.en", Path(packaged.path), COMMIT_A, big_as_links=True)
    info = resolve_upstream("Systran/faster-whisper-tiny.en")
    assert info.kind == "whisper-ct2" and info.name == "Systran/faster-whisper-tiny.en"
    assert info.path == str(old.resolve()) and info.identity() == packaged.identity()
    shutil.rmtree(old)
    new = cache_model(hub, "Systran/faster-whisper-tiny.en", Path(packaged.path), COMMIT_B, big_as_links=True)
    assert _relocated(info).path == str(new.resolve())
    with pytest.raises(EncoderError, match=f"--revision {COMMIT_A}"):
        _relocated(info.__class__(**{**info.to_json(), "weights_sha256": "0" * 64}))


# ------------------------------------------------------------------------------------------------ through the CLI

def test_a_run_made_with_ids_records_them_and_predicts_from_the_cache_again(hub, tiny_bert_dir, tiny_wav2vec2,
                                                                            tmp_path):
    from test_encoders_cli import TRAIN, assert_one_line_error, invoke, wav_folder

    from emocli.synth import SynthConfig, synthesize

    cache_model(hub, "org/tiny-bert", tiny_bert_dir)
    cache_model(hub, "facebook/tiny-wav2vec2", tiny_wav2vec2)
    corpus = synthesize(tmp_path / "synth", SynthConfig(per_class=8, seed=3, fmt="dir", mean_seconds=0.6))
    prepared = tmp_path / "cache.h5"
    result = invoke("prepare", corpus.archive, "--cache", prepared, "--text-model", "org/tiny-bert", "--n-mels", "64",
                    "--workers", "1", "--json")
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    result = invoke("train", prepared, "--run", run, "--audio-encoder", "facebook/tiny-wav2vec2", "--modality", "both",
                    *TRAIN, "--json")
    assert result.exit_code == 0, result.output
    model = json.loads((run / "config.json").read_text())["model"]
    assert model["text_model"] == "org/tiny-bert" and model["audio_upstream"]["name"] == "facebook/tiny-wav2vec2"
    out = tmp_path / "p.jsonl"
    result = invoke("predict", run, wav_folder(corpus, tmp_path, 3), "--output", out)
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 3
    assert_one_line_error(invoke("train", prepared, "--run", tmp_path / "b", "--text-model", "org/missing"),
                          "org/missing", str(hub / "models--org--missing"), "hf download org/missing")
