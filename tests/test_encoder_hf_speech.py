"""Hugging Face speech encoders from a local folder: tiny random wav2vec2, HuBERT, WavLM, data2vec-audio and Whisper
models saved with transformers, run through the real code path."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from emocli.encoders.hf_speech import (HFSpeechEmbedder, HFSpeechEncoder, SPEECH_MODEL_TYPES, load_hf_speech,
                                       resolve_hf_speech)
from emocli.errors import EncoderError

# torch's own deprecation notice, raised inside transformers' WavLM attention: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask:UserWarning")

SR = 16_000
# A 50 Hz CNN like the real models' (total stride 320), three layers instead of seven.
TINY_CNN = dict(conv_dim=(8, 8, 8), conv_stride=(5, 8, 8), conv_kernel=(10, 8, 8))
TINY_LAYERS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37, **TINY_CNN)
W2V_FRAMES = {SR: 49, 3 * SR: 149}  # what the real wav2vec2 CNN gives for 1 s and 3 s
WHISPER_FRAMES = {SR: 50, 3 * SR: 150}
# name -> (does the model take a mask, is a padded batch exact, does its feature extractor normalise)
ENCODERS = {
    "wav2vec2-group": (False, False, False),  # as wav2vec2-base
    "wav2vec2-stable": (True, True, True),  # as wav2vec2-large-lv60
    "hubert": (True, True, True),
    "wavlm": (True, True, True),
    "data2vec-audio": (True, False, True),
    "whisper": (False, True, False),
}


def _build(name: str, folder) -> None:
    import transformers as tf

    torch.manual_seed(0)
    pos = dict(num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    if name == "whisper":
        config = tf.WhisperConfig(d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                                  decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37,
                                  max_source_positions=1500, num_mel_bins=80, vocab_size=64, max_target_positions=16,
                                  pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)
        tf.WhisperModel(config).save_pretrained(folder)
        tf.WhisperFeatureExtractor(feature_size=80).save_pretrained(folder)
        return
    if name == "wav2vec2-group":
        model = tf.Wav2Vec2Model(tf.Wav2Vec2Config(feat_extract_norm="group", **pos, **TINY_LAYERS))
    elif name == "wav2vec2-stable":
        model = tf.Wav2Vec2Model(tf.Wav2Vec2Config(feat_extract_norm="layer", do_stable_layer_norm=True, **pos,
                                                   **TINY_LAYERS))
    elif name == "hubert":
        model = tf.HubertModel(tf.HubertConfig(feat_extract_norm="layer", **pos, **TINY_LAYERS))
    elif name == "wavlm":
        model = tf.WavLMModel(tf.WavLMConfig(feat_extract_norm="layer", do_stable_layer_norm=True, **pos,
                                             **TINY_LAYERS))
    else:
        model = tf.Data2VecAudioModel(tf.Data2VecAudioConfig(num_conv_pos_embeddings=5, conv_pos_kernel_size=5,
                                                             **TINY_LAYERS))
    model.save_pretrained(folder)
    takes_mask, _, normalize = ENCODERS[name]
    tf.Wav2Vec2FeatureExtractor(do_normalize=normalize, return_attention_mask=takes_mask).save_pretrained(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict:
    built = {}
    for name in ENCODERS:
        built[name] = tmp_path_factory.mktemp(name)
        _build(name, built[name])
    return built


@pytest.fixture(scope="module")
def embedders(folders) -> dict:
    return {name: load_hf_speech(resolve_hf_speech(folder)) for name, folder in folders.items()}


def _audio(seconds: float, seed: int = 0) -> np.ndarray:
    """A voice-like test signal: a wobbling 150 Hz tone with harmonics, plus a little noise, at 16 kHz."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 150 + 20 * np.sin(2 * np.pi * 3 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voice = sum(np.sin(k * phase) / k for k in (1, 2, 3))
    return (0.1 * voice + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.mark.parametrize("name", ENCODERS)
def test_resolution_describes_layers_width_and_frame_rate(folders, name):
    info = resolve_hf_speech(folders[name])
    assert (info.kind, info.n_layers, info.hidden_size, info.frame_rate_hz, info.sample_rate) == ("hf", 3, 32, 50.0, SR)
    model_type = json.loads((folders[name] / "config.json").read_text())["model_type"]
    assert model_type in SPEECH_MODEL_TYPES
    assert {k: info.settings[k] for k in ("model_type", "normalize")} == {"model_type": model_type,
                                                                        "normalize": ENCODERS[name][2]}
    assert set(info.settings) == {"model_type", "normalize", "config_sha256", "preprocessor_sha256"}
    assert info.weights_sha256 == hashlib.sha256((folders[name] / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ENCODERS)
def test_masks_and_exact_batching_follow_the_architecture(embedders, name):
    encoder = embedders[name].encoder
    assert (encoder.uses_mask, encoder.padding_exact) == ENCODERS[name][:2]


@pytest.mark.parametrize("name", ENCODERS)
def test_embed_gives_every_layer_at_50_frames_per_second_deterministically(embedders, name):
    expected = WHISPER_FRAMES if name == "whisper" else W2V_FRAMES
    for n_samples, frames in expected.items():
        audio = _audio(n_samples / SR)
        states = embedders[name].embed(audio)
        assert states.shape == (3, frames, 32) and states.dtype == np.float32
        assert np.isfinite(states).all()
        assert np.array_equal(states, embedders[name].embed(audio.copy()))


@pytest.mark.parametrize("name", ENCODERS)
def test_embed_many_equals_embed_of_each(embedders, name):
    audios = [_audio(s, seed) for seed, s in enumerate((1.0, 0.5, 1.0, 0.73, 2.1, 0.02))]
    many = embedders[name].embed_many(audios, batch_size=4)
    for audio, states in zip(audios, many):
        alone = embedders[name].embed(audio)
        assert states.shape == alone.shape
        np.testing.assert_allclose(states, alone, atol=1e-5, rtol=0)


def test_group_norm_cnn_is_changed_by_padding_so_it_is_never_batched(embedders):
    encoder = embedders["wav2vec2-group"].encoder
    short, long = torch.from_numpy(_audio(0.5)), torch.from_numpy(_audio(1.0, seed=1))
    batch = torch.zeros(2, long.numel())
    batch[0, : short.numel()], batch[1] = short, long
    with torch.inference_mode():
        padded, frames = encoder(batch, torch.tensor([short.numel(), long.numel()]))
        alone, _ = encoder(short[None], torch.tensor([short.numel()]))
    assert float((padded[0, :, : frames[0]] - alone[0]).abs().max()) > 1e-3
    assert encoder.batch_key(short.numel()) != encoder.batch_key(long.numel())


def test_normalising_encoders_ignore_gain_and_offset(embedders):
    audio = _audio(1.0)
    louder = 3.0 * audio + 0.05
    np.testing.assert_allclose(embedders["wavlm"].embed(louder), embedders["wavlm"].embed(audio), atol=1e-4)
    assert not np.allclose(embedders["wav2vec2-group"].embed(louder), embedders["wav2vec2-group"].embed(audio),
                           atol=1e-4)


def test_last_layer_of_a_pre_ln_encoder_is_its_final_output(embedders):
    encoder = embedders["wav2vec2-stable"].encoder
    waveform = torch.from_numpy(_audio(1.0))[None]
    waveform = (waveform - waveform.mean()) / torch.sqrt(waveform.var(unbiased=False) + 1e-7)
    with torch.inference_mode():
        hidden, _ = encoder(torch.from_numpy(_audio(1.0))[None], torch.tensor([SR]))
        final = encoder.model(waveform).last_hidden_state
    torch.testing.assert_close(hidden[:, -1], final, atol=1e-5, rtol=0)


def test_whisper_log_mel_is_the_feature_extractors(folders, embedders):
    from transformers import WhisperFeatureExtractor

    audio = _audio(2.0)
    expected = WhisperFeatureExtractor.from_pretrained(folders["whisper"])(
        audio, sampling_rate=SR, return_tensors="np")["input_features"]  # (1, 80, 3000)
    window = torch.zeros(1, 30 * SR)
    window[0, : audio.size] = torch.from_numpy(audio)
    ours = embedders["whisper"].encoder.log_mel(window).numpy()
    assert ours.shape == expected.shape == (1, 80, 3000)
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


def test_whisper_beyond_30_seconds_joins_30_second_windows(embedders):
    audio = _audio(31.0)
    states = embedders["whisper"].embed(audio)
    assert states.shape == (3, 1550, 32)
    np.testing.assert_allclose(states[:, :1500], embedders["whisper"].embed(audio[: 30 * SR]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["wav2vec2-stable", "whisper"])
def test_short_clips_get_one_frame_and_forward_refuses_shorter(embedders, name):
    assert embedders[name].embed(_audio(0.001)).shape == (3, 1, 32)
    encoder = embedders[name].encoder
    with pytest.raises(EncoderError, match="too short"):
        encoder(torch.zeros(1, 100), torch.tensor([encoder.min_samples() - 1]))


def test_bad_audio_is_refused(embedders):
    with pytest.raises(EncoderError, match="mono audio"):
        embedders["hubert"].embed(np.zeros((2, 100), np.float32))
    with pytest.raises(EncoderError, match="NaN"):
        embedders["hubert"].embed(np.full(SR, np.nan, np.float32))


def test_a_bert_folder_is_not_a_speech_encoder(tiny_bert_dir):
    with pytest.raises(EncoderError, match=r"bert model, not a speech encoder; pass a data2vec-audio, hubert"):
        resolve_hf_speech(tiny_bert_dir)


def test_a_folder_without_config_is_refused(tmp_path):
    with pytest.raises(EncoderError, match=f"{tmp_path}.*config.json is missing"):
        resolve_hf_speech(tmp_path)
    with pytest.raises(EncoderError, match="does not exist"):
        resolve_hf_speech(tmp_path / "nowhere")


def test_pickled_weights_are_refused(folders, tmp_path):
    shutil.copy(folders["hubert"] / "config.json", tmp_path / "config.json")
    torch.save({"w": torch.zeros(2)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(EncoderError, match="only pickled weights.*model.safetensors"):
        resolve_hf_speech(tmp_path)


def test_weights_changed_after_resolution_are_refused(folders, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(folders["wav2vec2-stable"], folder)
    info = resolve_hf_speech(folder)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one bit pattern in the last tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(EncoderError, match="changed since it was resolved: model.safetensors has sha256"):
        HFSpeechEncoder.from_folder(info)
    with pytest.raises(EncoderError, match="changed since it was resolved"):
        load_hf_speech(info)


def test_config_changed_after_resolution_is_refused(folders, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(folders["hubert"], folder)
    info = resolve_hf_speech(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    with pytest.raises(EncoderError, match="n_layers"):
        HFSpeechEncoder.from_folder(info)


def test_an_architecture_edit_that_keeps_the_weights_shapes_is_refused_too(folders, tmp_path):
    """Heads or activation change the numbers without changing a weight's shape: config.json is in the identity."""
    folder = tmp_path / "model"
    shutil.copytree(folders["hubert"], folder)
    info = resolve_hf_speech(folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "hidden_act": "relu"}))
    assert resolve_hf_speech(folder).identity() != info.identity()  # another stage, never the old one
    with pytest.raises(EncoderError, match="settings changed"):
        HFSpeechEncoder.from_folder(info)


def test_weights_of_another_architecture_are_refused(folders, tmp_path):
    shutil.copy(folders["hubert"] / "config.json", tmp_path / "config.json")
    shutil.copy(folders["whisper"] / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(EncoderError, match="lacks or misshapes"):
        HFSpeechEncoder.from_folder(resolve_hf_speech(tmp_path))


@pytest.mark.parametrize("name", ["wav2vec2-stable", "whisper"])
def test_fine_tuning_reaches_every_weight_and_freezing_stops_the_cnn(folders, name):
    torch.manual_seed(0)  # SpecAugment's masks
    encoder = HFSpeechEncoder.from_folder(resolve_hf_speech(folders[name])).train()
    waveforms = torch.from_numpy(np.stack([_audio(1.0), np.pad(_audio(0.8, seed=1), (0, SR // 5))]))
    lengths = torch.tensor([SR, int(0.8 * SR)])

    def backward() -> dict:
        encoder.zero_grad(set_to_none=True)
        hidden, frames = encoder(waveforms, lengths)  # (2, 3, T, 32)
        real = torch.arange(hidden.shape[2])[None] < frames[:, None]  # (2, T)
        (hidden.pow(2).mean(dim=(1, 3)) * real).sum().backward()
        return {n: p.grad for n, p in encoder.named_parameters() if p.requires_grad and "masked_spec_embed" not in n}

    grads = backward()
    assert grads and all(g is not None and float(g.abs().sum()) > 0 for g in grads.values()), \
        [n for n, g in grads.items() if g is None or float(g.abs().sum()) == 0]
    encoder.freeze_feature_encoder()
    grads = backward()
    cnn = ("model.conv1.", "model.conv2.") if name == "whisper" else ("model.feature_extractor.",)
    assert not any(n.startswith(cnn) for n in grads)
    assert any(n.startswith("model.layers." if name == "whisper" else "model.encoder.") for n in grads)


@pytest.mark.parametrize("name", ["wav2vec2-stable", "whisper"])
def test_from_config_and_state_dict_reproduce_from_folder(folders, embedders, name):
    info = resolve_hf_speech(folders[name])
    original = HFSpeechEncoder.from_folder(info)
    rebuilt = HFSpeechEncoder.from_config(json.loads(json.dumps(original.hf_config())), info.settings)
    assert rebuilt.load_state_dict(original.state_dict()) is not None
    audio = _audio(1.3)
    np.testing.assert_allclose(HFSpeechEmbedder(info, rebuilt).embed(audio), embedders[name].embed(audio),
                               atol=1e-6, rtol=0)
