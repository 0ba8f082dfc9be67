"""Fixtures shared by the test files."""

from __future__ import annotations

import shutil

import pytest

TINY_BERT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=128)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One intra-op thread: under `pytest -n 2` on two cores, two threads per worker spin against each other and
    run 5-10x slower (subprocesses get OMP_NUM_THREADS=1 for the same reason, and the same numbers)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A real, tiny, randomly initialised BERT (hidden 32, 2 layers) with MiniLM's tokenizer, as a local folder."""
    import torch
    from transformers import BertConfig, BertModel

    from emocli.text_model import resolve_text_model

    source = resolve_text_model("all-MiniLM-L6-v2").path
    folder = tmp_path_factory.mktemp("tiny_bert")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    vocab_size = sum(1 for _ in open(folder / "vocab.txt", encoding="utf-8"))
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same weights in every session
        model = BertModel(BertConfig(vocab_size=vocab_size, **TINY_BERT))
    model.save_pretrained(folder, safe_serialization=True)
    return folder
