"""The head over a frozen pretrained encoder's frames, on random frames: exact under padding, normalised from the
training part, and starting from plain mean and standard deviation pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emocli.encoders.frames import AttentiveStatsPooling, FrameEncoder
from emocli.model import EmotionModel, ModelConfig

UPSTREAM = {"kind": "hf", "name": "toy", "path": "", "weights_sha256": "", "sample_rate": 16000, "n_layers": 3,
            "hidden_size": 12, "frame_rate_hz": 50.0, "settings": {}}


def frames_model(**overrides) -> EmotionModel:
    torch.manual_seed(0)
    config = dict(modality="audio", audio_encoder="frames", audio_upstream=UPSTREAM, audio_hidden=16,
                  fusion_hidden=16, dropout=0.1)
    return EmotionModel(ModelConfig(**{**config, **overrides})).eval()


@pytest.mark.parametrize("context", [0, 1])
def test_padding_and_batch_mates_never_reach_an_item(context):
    model = frames_model(audio_context=context)
    lengths = [1, 7, 40]
    x = torch.full((3, 40, 3, 12), float("nan"))  # padding as garbage on purpose
    gen = torch.Generator().manual_seed(1)
    for i, n in enumerate(lengths):
        x[i, :n] = torch.randn(n, 3, 12, generator=gen)
    with torch.no_grad():
        batched = model(audio=x, audio_lengths=torch.tensor(lengths)).logits
        for i, n in enumerate(lengths):
            alone = model(audio=x[i:i + 1, :n], audio_lengths=torch.tensor([n])).logits
            torch.testing.assert_close(alone[0], batched[i], atol=1e-6, rtol=1e-6)
    assert torch.isfinite(batched).all()


def test_attentive_pooling_starts_as_mean_and_std():
    pool = AttentiveStatsPooling(5)
    seq = torch.randn(2, 9, 5)
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    out = pool(seq, mask)
    for b, n in ((0, 9), (1, 6)):
        torch.testing.assert_close(out[b, :5], seq[b, :n].mean(0))
        torch.testing.assert_close(out[b, 5:], seq[b, :n].std(0, unbiased=False), atol=1e-4, rtol=1e-4)


def test_fit_inputs_standardises_the_frames_of_the_training_part_only():
    rng = np.random.default_rng(0)
    lengths = [5, 9, 3, 12]
    values = (3.0 + 2.0 * rng.standard_normal((sum(lengths), 3, 12))).astype(np.float16)  # (F, L, D)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    head = FrameEncoder(3, 12, 16, 0.0)
    head.fit_inputs(values, offsets, np.array([0, 1, 3]))  # utterance 2 is not in the training part
    train = np.concatenate([values[offsets[i]:offsets[i + 1]] for i in (0, 1, 3)]).astype(np.float64)
    np.testing.assert_allclose(head.input_mean.numpy(), train.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(head.input_std.numpy(), train.std(0), rtol=1e-4)


def test_layer_weights_start_equal_and_learn():
    model = frames_model()
    assert model.audio.layer_weights() == pytest.approx([1 / 3] * 3)
    x = torch.randn(4, 10, 3, 12)
    x[:, :, 2] *= 5  # one layer carries the label
    labels = (x[:, :, 2].mean((1, 2)) > 0).long()
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(5):
        optimizer.zero_grad()
        model(audio=x, labels=labels).loss.backward()
        optimizer.step()
    assert model.audio.layer_weights() != pytest.approx([1 / 3] * 3)
