"""EmotionModel on tiny real configs: a real tiny BERT on disk, a 1/8-width AlexNet, CPU only."""

from __future__ import annotations

import fractions
import json

import pytest
import torch
import torch.nn.functional as F

from emocli.errors import CheckpointError, ConfigError, TextModelError
from emocli.features import tokenize
from emocli.encoders.alexnet import _adaptive_pool_weights
from emocli.model import MIN_FRAMES, EmotionModel, ModelConfig, ModifiedAlexNet, TextEncoder
from emocli.text_model import load_tokenizer, resolve_text_model

N_MELS = 64
MAX_TOKENS = 16
TEXTS = ["I can't believe you did that!", "ok", "We finally got the house, I'm so happy.", "leave me alone"]


def tiny_config(tiny_bert_dir, **overrides) -> ModelConfig:
    base = dict(n_mels=N_MELS, audio_width=0.125, text_model=str(tiny_bert_dir), text_hidden=32,
                fusion_hidden=16, dropout=0.0)
    return ModelConfig(**{**base, **overrides})


def build(tiny_bert_dir, seed=0, **overrides) -> EmotionModel:
    torch.manual_seed(seed)
    model = EmotionModel(tiny_config(tiny_bert_dir, **overrides))
    if model.audio is not None:
        # Statistics far from 0/1, so a forward that forgot to normalise would show.
        model.set_input_stats(torch.linspace(-60, -20, N_MELS), torch.linspace(5, 15, N_MELS))
    return model.eval()


@pytest.fixture(scope="module")
def tokens(tiny_bert_dir):
    ids, mask = tokenize(load_tokenizer(resolve_text_model(tiny_bert_dir)), TEXTS, MAX_TOKENS)
    return torch.from_numpy(ids).long(), torch.from_numpy(mask).long()


def make_batch(tokens, lengths, pad_value=float("nan"), seed=1):
    """Raw dB spectrograms of the given lengths, padded to the longest with `pad_value` (garbage on purpose)."""
    gen = torch.Generator().manual_seed(seed)
    spec = torch.full((len(lengths), N_MELS, max(lengths)), pad_value)
    for i, n in enumerate(lengths):
        spec[i, :, :n] = -40 + 10 * torch.randn(N_MELS, n, generator=gen)
    ids, mask = tokens
    rows = [i % len(TEXTS) for i in range(len(lengths))]
    # The model reads time-major features, (B, T, F), as the batch builder gives them.
    return dict(audio=spec.transpose(1, 2), audio_lengths=torch.tensor(lengths), input_ids=ids[rows],
                attention_mask=mask[rows],
                text_present=torch.ones(len(lengths), dtype=torch.bool))


@pytest.mark.parametrize("modality,fusion", [("audio", "concat"), ("text", "concat"), ("both", "concat"),
                                             ("both", "gated"), ("both", "xattn")])
def test_output_shapes(tiny_bert_dir, tokens, modality, fusion):
    model = build(tiny_bert_dir, modality=modality, fusion=fusion)
    assert (model.audio is None) == (modality == "text") and (model.text is None) == (modality == "audio")
    out = model(**make_batch(tokens, [80, 200, 150]))
    assert out.logits.shape == (3, 4) and out.loss is None
    assert torch.isfinite(out.logits).all()


def test_adaptive_pool_weights_match_pytorch():
    x = torch.randn(1, 3, 40)
    for n in (1, 2, 5, 6, 7, 13, 40):
        w = _adaptive_pool_weights(torch.tensor([n]), 40, 6)  # (1, 40, 6)
        torch.testing.assert_close(torch.einsum("bct,bto->bco", x, w), F.adaptive_avg_pool1d(x[..., :n], 6))


@pytest.mark.parametrize("fusion", ["concat", "gated", "xattn"])
def test_batched_equals_one_at_a_time(tiny_bert_dir, tokens, fusion):
    """Padding (here NaN) and batch composition never reach the output, even for items shorter than MIN_FRAMES."""
    model = build(tiny_bert_dir, modality="both", fusion=fusion)
    lengths = [11, MIN_FRAMES - 1, MIN_FRAMES, 64, 137, 700]
    batch = make_batch(tokens, lengths)
    with torch.no_grad():
        batched_audio = model.audio(batch["audio"].transpose(1, 2), batch["audio_lengths"])
        batched = model(**batch).logits
        for i, n in enumerate(lengths):
            one = {k: v[i : i + 1] for k, v in batch.items()}
            one["audio"] = one["audio"][:, :n]  # the item alone, no padding at all
            torch.testing.assert_close(model.audio(one["audio"].transpose(1, 2), one["audio_lengths"]),
                                       batched_audio[i : i + 1],
                                       atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(model(**one).logits, batched[i : i + 1], atol=1e-5, rtol=1e-5)
        # Another padding value and another batch mate give the same answer too.
        other = make_batch(tokens, [1000, lengths[1]], pad_value=1e6)
        other["audio"][1, : lengths[1]] = batch["audio"][1, : lengths[1]]
        other["input_ids"][1], other["attention_mask"][1] = batch["input_ids"][1], batch["attention_mask"][1]
        torch.testing.assert_close(model(**other).logits[1], batched[1], atol=1e-5, rtol=1e-5)
    assert batched_audio.std(0).mean() > 0  # the items really do differ


def test_loss_only_with_labels(tiny_bert_dir, tokens):
    model = build(tiny_bert_dir)
    batch = make_batch(tokens, [100, 120, 90, 300])
    labels = torch.tensor([0, 1, 2, 3])
    assert model(**batch).loss is None
    out = model(**batch, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels))
    weights = torch.tensor([1.0, 2.0, 0.5, 4.0])
    model.set_class_weights(weights)
    torch.testing.assert_close(model(**batch, labels=labels).loss, F.cross_entropy(out.logits, labels, weight=weights))
    model.train()
    model(**batch, labels=labels).loss.backward()
    assert model.head[-1].weight.grad is not None and not model.missing_text.grad.any()  # all text was present


def test_missing_text_predicts_from_audio(tiny_bert_dir, tokens):
    model = build(tiny_bert_dir)
    batch = make_batch(tokens, [100, 250])
    present = model(**batch).logits
    batch["text_present"] = torch.tensor([True, False])
    mixed = model(**batch).logits
    torch.testing.assert_close(mixed[0], present[0])
    assert not torch.allclose(mixed[1], present[1])
    # What the transcript said no longer matters, and no text input at all gives the same answer.
    batch["input_ids"] = batch["input_ids"].flip(0)
    torch.testing.assert_close(model(**batch).logits[1], mixed[1])
    audio_only = model(audio=batch["audio"], audio_lengths=batch["audio_lengths"]).logits
    torch.testing.assert_close(audio_only[1], mixed[1])
    with pytest.raises(ValueError):
        model(audio=batch["audio"], audio_lengths=batch["audio_lengths"], text_present=torch.tensor([True, True]))


def test_modality_dropout_only_in_training(tiny_bert_dir, tokens):
    model = build(tiny_bert_dir, modality_dropout=1.0)
    batch = make_batch(tokens, [100, 250, 90])
    with torch.no_grad():
        with_text = model(**batch).logits
        without = model(**{**batch, "text_present": torch.zeros(3, dtype=torch.bool)}).logits
        assert not torch.allclose(with_text, without)
        model.eval()
        torch.testing.assert_close(model(**batch).logits, with_text)  # eval: never dropped
        model.train()  # dropout is 0.0, so modality dropout is the only difference
        torch.testing.assert_close(model(**batch).logits, without)


def test_frozen_text(tiny_bert_dir, tokens):
    model = build(tiny_bert_dir, freeze_text=True).train()
    assert not model.text.training and model.head.training  # the frozen encoder stays in eval mode
    batch = make_batch(tokens, [100, 250, 90, 70])
    model(**batch, labels=torch.tensor([0, 1, 2, 3])).loss.backward()
    assert all(p.grad is None for p in model.text.parameters())
    assert model.audio.features[0].weight.grad is not None
    encoder = {id(p) for p in model.text.parameters()}
    assert not any(id(p) in encoder for p in model.trainable_parameters())
    assert model.trainable_parameters(text=True) == []

    embeds = model.encode_text(batch["input_ids"], batch["attention_mask"])  # (B, H), as the trainer precomputes
    assert embeds.shape == (4, 32) and not embeds.requires_grad
    via_ids = model(**batch).logits
    via_embeds = model(**{**batch, "input_ids": None, "attention_mask": None, "text_embeds": embeds}).logits
    torch.testing.assert_close(via_embeds, via_ids)


def test_unfrozen_text_trains(tiny_bert_dir, tokens):
    model = build(tiny_bert_dir, modality="text", text_pooling="cls").train()
    out = model(**make_batch(tokens, [70, 70]), labels=torch.tensor([1, 2]))
    out.loss.backward()
    assert model.text.encoder.embeddings.word_embeddings.weight.grad is not None
    assert len(model.trainable_parameters(text=True)) + len(model.trainable_parameters(text=False)) \
        == len(model.trainable_parameters())


def _torchvision_alexnet_state(seed=0) -> dict[str, torch.Tensor]:
    """Random tensors with torchvision's AlexNet names and shapes (ImageNet head included)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = {"features.0": (64, 3, 11, 11), "features.3": (192, 64, 5, 5), "features.6": (384, 192, 3, 3),
              "features.8": (256, 384, 3, 3), "features.10": (256, 256, 3, 3), "classifier.1": (4096, 9216),
              "classifier.4": (4096, 4096), "classifier.6": (1000, 4096)}
    state = {}
    for name, shape in shapes.items():
        state[f"{name}.weight"] = torch.randn(shape, generator=gen) * 0.01
        state[f"{name}.bias"] = torch.randn(shape[0], generator=gen)
    return state


def test_torchvision_alexnet_init(tmp_path):
    from safetensors.torch import save_file

    state = _torchvision_alexnet_state()
    save_file(state, str(tmp_path / "alexnet.safetensors"))
    torch.save(state, tmp_path / "alexnet.pth")
    for path in (tmp_path / "alexnet.safetensors", tmp_path / "alexnet.pth"):
        net = ModifiedAlexNet(N_MELS, width=1.0)
        loaded = net.load_torchvision_alexnet(path)
        assert "features.0.weight" in loaded and "classifier.4.weight" in loaded
        torch.testing.assert_close(net.features[0].weight, state["features.0.weight"].mean(1, keepdim=True))
        assert torch.equal(net.features[10].bias, state["features.10.bias"])
        assert torch.equal(net.classifier[1].weight, state["classifier.1.weight"])
        assert torch.equal(net.spec_mean, torch.zeros(N_MELS))  # the statistics are not AlexNet's business
    assert net(torch.randn(2, N_MELS, 120), torch.tensor([120, 80])).shape == (2, 4096)

    with pytest.raises(ConfigError, match="audio_width 1.0"):
        ModifiedAlexNet(N_MELS, width=0.125).load_torchvision_alexnet(tmp_path / "alexnet.safetensors")
    save_file({"features.0.weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a torchvision AlexNet"):
        ModifiedAlexNet(N_MELS).load_torchvision_alexnet(tmp_path / "other.safetensors")
    torch.save({"features.0.weight": fractions.Fraction(1, 3)}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError):  # weights_only: an arbitrary object is refused, not unpickled
        ModifiedAlexNet(N_MELS).load_torchvision_alexnet(tmp_path / "evil.pth")


def test_non_bert_folder_is_refused(tmp_path, tiny_bert_dir):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    with pytest.raises(TextModelError, match="not a BERT-family"):
        EmotionModel(tiny_config(tiny_bert_dir, modality="text", text_model=str(tmp_path)))
    with pytest.raises(TextModelError, match="not a BERT-family"):
        TextEncoder.from_config({"model_type": "gpt2"})


def test_safetensors_round_trip(tiny_bert_dir, tokens, tmp_path):
    from safetensors.torch import load_file, save_file

    config = tiny_config(tiny_bert_dir, fusion="gated", text_pooling="cls")
    model = build(tiny_bert_dir, fusion="gated", text_pooling="cls")
    model.set_class_weights([1.0, 2.0, 3.0, 4.0])
    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    hf_config = json.loads(json.dumps(model.text.hf_config()))  # as a run directory stores it

    torch.manual_seed(123)  # different random init: everything must come from the file
    rebuilt = EmotionModel(ModelConfig.from_json(json.loads(config.dumps())),
                           text_encoder=TextEncoder.from_config(hf_config, config.text_pooling))
    rebuilt.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)
    rebuilt.eval()
    batch = make_batch(tokens, [100, 250, 40])
    labels = torch.tensor([0, 3, 1])
    a, b = model(**batch, labels=labels), rebuilt(**batch, labels=labels)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)


def test_flops(tiny_bert_dir):
    from torch.utils.flop_counter import FlopCounterMode

    model = build(tiny_bert_dir)
    short, long = model.count_flops_per_item(100, 16), model.count_flops_per_item(400, 16)
    assert 0 < short < long
    assert model.count_flops_per_item(100, 0) < short  # precomputed text embeddings skip the encoder
    assert model.count_flops_per_item(10, 16) == model.count_flops_per_item(MIN_FRAMES, 16)  # padded up
    # The analytic count agrees with PyTorch's own counter on a real forward (it adds only the pooling einsum).
    ids = torch.randint(1000, 2000, (1, 16))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(audio=torch.randn(1, 400, N_MELS), audio_lengths=torch.tensor([400]), input_ids=ids,
              attention_mask=torch.ones_like(ids))
    assert abs(counter.get_total_flops() - long) / long < 0.02


def test_config_validation_and_json(tiny_bert_dir):
    config = tiny_config(tiny_bert_dir, fusion="gated", modality_dropout=0.3)
    assert ModelConfig.from_json(json.loads(config.dumps())) == config
    with pytest.raises(ConfigError, match="modality"):
        ModelConfig(modality="video")
    with pytest.raises(ConfigError, match="fusion"):
        ModelConfig(fusion="sum")
    with pytest.raises(ConfigError, match="n_mels"):
        ModelConfig(n_mels=40)
    with pytest.raises(ConfigError, match="unknown fields"):
        ModelConfig.from_json({**config.to_json(), "future_knob": 1})
    with pytest.raises(ConfigError, match="text_hidden"):
        EmotionModel(tiny_config(tiny_bert_dir, text_hidden=384))
    model = build(tiny_bert_dir, modality="audio")
    with pytest.raises(ConfigError, match="one per mel bin"):
        model.set_input_stats(torch.zeros(3), torch.ones(3))
    model.set_input_stats(torch.zeros(N_MELS), torch.zeros(N_MELS))  # a constant bin must not divide by zero
    assert torch.isfinite(model(audio=torch.full((1, 70, N_MELS), -100.0)).logits).all()


def test_real_minilm_runs():
    ref = resolve_text_model("all-MiniLM-L6-v2")
    model = EmotionModel(ModelConfig(modality="text")).eval()  # the packaged encoder, checksum-verified
    ids, mask = tokenize(load_tokenizer(ref), ["I am so happy today.", "I feel really happy.",
                                               "The invoice is attached."], 32)
    ids, mask = torch.from_numpy(ids).long(), torch.from_numpy(mask).long()
    with torch.no_grad():
        embeds = model.encode_text(ids, mask)
        logits = model(input_ids=ids[:2], attention_mask=mask[:2]).logits
    assert embeds.shape == (3, 384) and logits.shape == (2, 4)
    cos = F.cosine_similarity(embeds[:, None], embeds[None], dim=-1)
    assert cos[0, 1] > cos[0, 2] + 0.2  # the real tokenizer and mean pooling: similar sentences are close


@pytest.mark.parametrize("field, value", [("n_classes", 0), ("n_mels", -5), ("fusion_hidden", 2.5),
                                          ("text_hidden", True), ("fusion_hidden", 10**9),
                                          ("audio_width", float("nan")), ("audio_width", float("inf")),
                                          ("audio_width", 0)])
def test_untrusted_config_numbers_are_refused(field, value):
    from emocli.errors import ConfigError
    from emocli.model import ModelConfig

    with pytest.raises(ConfigError, match=field):
        ModelConfig.from_json({**ModelConfig().to_json(), field: value})
