"""emocli.bert: the native BERT computes what transformers' BertModel computes, from the same files."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from emocli.bert import NativeBert, load_native_bert, native_support
from emocli.errors import TextModelError
from emocli.model import TextEncoder
from emocli.text_model import load_encoder, resolve_text_model

TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=40)


def _batch(vocab: int = 120) -> tuple[torch.Tensor, torch.Tensor]:
    """Three sentences of different lengths, padded to 12: the padding must not change the real tokens' states."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (3, 12), generator=g)
    mask = torch.zeros(3, 12, dtype=torch.long)
    for row, n in enumerate((12, 7, 2)):
        mask[row, :n] = 1
    ids[mask == 0] = 0
    return ids, mask


def _hf_bert(tmp_path, **overrides):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(**{**TINY, **overrides})).eval()
    folder = tmp_path / "bert"
    model.save_pretrained(folder, safe_serialization=True)
    return model, folder


def _load(folder) -> NativeBert:
    return load_native_bert(json.loads((folder / "config.json").read_text()), folder / "model.safetensors")


def _max_difference(native: NativeBert, hf, ids: torch.Tensor, mask: torch.Tensor) -> float:
    """Largest difference of the two encoders' last hidden states, over real (unpadded) tokens."""
    with torch.no_grad():
        got = native(ids, mask).last_hidden_state
        expected = hf(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    return float((got[real] - expected[real]).abs().max())


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
def test_native_bert_equals_transformers_on_the_same_weights(tmp_path, act):
    hf, folder = _hf_bert(tmp_path, hidden_act=act)
    native = _load(folder).eval()
    assert set(native.state_dict()) == set(hf.state_dict())  # checkpoints stay interchangeable
    ids, mask = _batch()
    assert _max_difference(native, hf, ids, mask) < 1e-5


def test_packaged_minilm_natively_equals_transformers():
    from transformers import AutoModel

    ref = resolve_text_model("all-MiniLM-L6-v2")
    native = load_encoder(ref).eval()
    assert isinstance(native, NativeBert)
    hf = AutoModel.from_pretrained(str(ref.path), local_files_only=True).eval()
    ids, mask = _batch(vocab=30000)
    assert _max_difference(native, hf, ids, mask) < 1e-4


def test_original_google_checkpoint_names_load(tmp_path):
    """bert-base-uncased's own file: `bert.` prefix, LayerNorm gamma/beta, pre-training heads, position_ids."""
    hf, folder = _hf_bert(tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    renamed = {}
    for key, value in tensors.items():
        key = "bert." + key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        renamed[key] = value.contiguous()
    renamed["cls.predictions.bias"] = torch.zeros(TINY["vocab_size"])
    renamed["bert.embeddings.position_ids"] = torch.arange(TINY["max_position_embeddings"])[None]
    save_file(renamed, str(folder / "model.safetensors"))
    native = _load(folder).eval()
    ids, mask = _batch()
    assert _max_difference(native, hf, ids, mask) < 1e-5


def test_missing_or_misshapen_weights_are_refused(tmp_path):
    _, folder = _hf_bert(tmp_path)
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["encoder.layer.1.output.dense.weight"]
    save_file(tensors, str(folder / "model.safetensors"))
    with pytest.raises(TextModelError, match="missing encoder.layer.1.output.dense.weight"):
        _load(folder)
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] = 64  # the file's FFN is 48 wide
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(TextModelError, match="does not match its config.json"):
        _load(folder)


@pytest.mark.parametrize("change, message", [
    ({"hidden_size": 30}, "not a multiple"),
    ({"num_hidden_layers": "six"}, "num_hidden_layers"),
    ({"layer_norm_eps": -1}, "layer_norm_eps"),
])
def test_invalid_config_numbers_are_a_clear_error(change, message):
    with pytest.raises(TextModelError, match=message):
        NativeBert({"model_type": "bert", **TINY, **change})


def test_other_architectures_still_go_through_transformers(tmp_path, tiny_bert_dir):
    """Relative position embeddings are BERT too, but not what the native module builds."""
    from transformers import BertModel

    _, folder = _hf_bert(tmp_path, position_embedding_type="relative_key")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_bert_dir / name, folder / name)
    config = json.loads((folder / "config.json").read_text())
    assert native_support(config) is not None
    assert isinstance(load_encoder(resolve_text_model(folder)), BertModel)
    assert isinstance(TextEncoder.from_config(config).encoder, BertModel)


def test_a_saved_config_rebuilds_the_native_encoder(tiny_bert_dir):
    """What a run directory stores (`hf_config()`) rebuilds the same architecture, natively."""
    encoder = TextEncoder.from_pretrained(tiny_bert_dir)
    rebuilt = TextEncoder.from_config(json.loads(json.dumps(encoder.hf_config())))
    assert isinstance(rebuilt.encoder, NativeBert)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in encoder.state_dict().items()}


def test_weights_whose_checksum_differs_from_the_published_one_are_refused(tiny_bert_dir):
    """prepare no longer hashes the weights (it reads only the tokenizer); loading them still checks."""
    import dataclasses

    from emocli.text_model import file_sha256, weights_file

    ref = resolve_text_model(tiny_bert_dir)
    published = dataclasses.replace(ref, expected_sha256=file_sha256(weights_file(ref)))
    assert isinstance(load_encoder(published), torch.nn.Module)
    with pytest.raises(TextModelError, match="corrupt or replaced"):
        load_encoder(dataclasses.replace(ref, expected_sha256="0" * 64))
