"""Generated paired clips for the training tests: a tiny cache in the real cache format with all
four raw-media streams (log-mel from a synthetic waveform through the real feature code, drawn
face crops, moving landmarks, transcripts) plus labels kept apart, as the preprocessor writes them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from edge_mer.config import AudioCfg


def make_cache(root: Path, n: int = 8, seconds: float = 1.5, face_size: int = 32) -> Path:
    from training.cache import MANIFEST, label_path, merge, write_clip, write_json
    from training.features import log_mel_torch

    audio = AudioCfg()
    write_json(root / MANIFEST, {"format": 1, "settings": {"audio": dataclasses.asdict(audio)},
                                 "streams": ["audio", "face", "landmarks", "text"], "datasets": ["synth"], "counts": {}})
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * audio.sample_rate_hz)) / audio.sample_rate_hz
    template = np.stack([np.cos(np.linspace(0, 2 * np.pi, 68, endpoint=False)),
                         np.sin(np.linspace(0, 2 * np.pi, 68, endpoint=False))], axis=1) * 40 + 100
    for i in range(n):
        clip_id = f"synth/clip{i:02d}"
        # Each clip has its own pitch and its own face brightness and mouth opening: the streams
        # share a clip identity, which is what the contrastive loss pairs.
        wave = 0.3 * np.sin(2 * np.pi * (150 + 40 * i) * t) + 0.01 * rng.standard_normal(len(t))
        frames = 6
        yy, xx = np.mgrid[:face_size, :face_size]
        ellipse = (((xx - face_size / 2) / 10) ** 2 + ((yy - face_size / 2) / 14) ** 2) < 1
        face = np.zeros((frames, face_size, face_size, 3), np.uint8)
        face[:, ellipse] = 80 + 20 * i
        pts = np.repeat(template[None], frames, axis=0) + rng.normal(0, 1, size=(frames, 68, 2))
        pts[:, 48:68, 1] += i * np.linspace(0, 3, frames)[:, None]
        arrays = {
            "logmel": log_mel_torch(wave.astype(np.float32), audio),
            "face": face, "face_t": np.linspace(0, seconds, frames, endpoint=False).astype(np.float32),
            "landmarks": pts.astype(np.float32), "landmarks_t": np.linspace(0, seconds, frames, endpoint=False).astype(np.float32),
            "text": np.array(f"clip number {i} is talking by the door"), "duration_s": np.array(seconds),
        }
        write_clip(root, clip_id, arrays, {"id": clip_id, "dataset": "synth", "speaker": f"spk{i % 4}", "media": {},
                                           "streams": ["audio", "face", "landmarks", "text"], "text_source": "dataset"})
        write_json(label_path(root, clip_id), {"id": clip_id, "label": "odd" if i % 2 else "even"})
    merge(root)
    return root


SMALL_OPTIONS = [
    "audio_tcn.bottleneck=16", "audio_tcn.hidden=32", "audio_tcn.blocks=2", "audio_tcn.repeats=1",
    "face_cnn.widths=[8, 16]", "landmarks_stgcn.channels=[8, 8]", "text_minilm.hidden=16", "mlp.hidden=16",
]


def small_overrides(streams: list[str], epochs: int = 1, batch: int = 4, val: float = 0.0) -> list[str]:
    return [
        f"train.modalities={streams!r}", f"train.epochs={epochs}", f"train.batch_size={batch}", f"train.val_fraction={val}",
        "train.crop_s=1.0", "train.device='cpu'", "train.optimizer='adamw'", "train.log_every=1",
        "encoder.feature_dim=12", "encoder.proj_hidden=16", "encoder.proj_dim=8", f"encoder.options={SMALL_OPTIONS!r}",
        "face.image_size=32", "face.frames_per_window=3", "landmarks.frames_per_window=4", "text.max_tokens=16",
    ]


def ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    """One torchrun-like rank (run with torch.multiprocessing.spawn): env variables, gloo, pretrain."""
    import os

    import torch

    from edge_mer.config import load_config
    from training.datasets import ClipStore
    from training.distributed import init_distributed, shutdown
    from training.train import PretrainData, pretrain

    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    ids = [f"synth/c{i:02d}" for i in range(16)]
    store = ClipStore(logmels={i: rng.normal(size=(128, 120)).astype(np.float32) for i in ids},
                      vectors={"au": {i: rng.normal(size=35).astype(np.float32) for i in ids}})
    info, finished = init_distributed("cpu"), False
    try:
        pretrain(load_config([], small_overrides(["audio", "au"], epochs=2, batch=2, val=0.25)), PretrainData(store, ids), out, info=info)
        finished = True
    finally:
        shutdown(info, synchronize=finished)
