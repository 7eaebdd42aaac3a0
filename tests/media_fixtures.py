"""Small media fixtures in each dataset's real format, generated on the fly with espeak-ng, sox,
ffmpeg and h5py (never committed): speech wavs, talking-face videos made from a real RAVDESS face
still, silent, empty, corrupt and face-less files, and CMU Multimodal SDK ``.csd`` files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest


def _need(tool: str) -> str:
    exe = shutil.which(tool)
    if exe is None:
        pytest.skip(f"needs the '{tool}' command to generate media fixtures")
    return exe


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def make_speech(path: Path, text: str = "Kids are talking by the door", rate_hz: int = 48000) -> Path:
    """espeak-ng speech resampled by sox to ``rate_hz``; the format follows the suffix
    (.wav, .flac, .mp3 via ffmpeg)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_name(path.stem + ".espeak.wav")
    _run([_need("espeak-ng"), "-v", "en-us", "-s", "160", "-w", str(raw), text])
    if path.suffix == ".mp3":
        _run([_need("ffmpeg"), "-y", "-loglevel", "error", "-i", str(raw), "-ar", str(rate_hz), "-ac", "1", str(path)])
    else:
        _run([_need("sox"), str(raw), "-r", str(rate_hz), str(path)])
    raw.unlink()
    return path


def make_silence(path: Path, seconds: float = 1.5, rate_hz: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _run([_need("sox"), "-n", "-r", str(rate_hz), "-c", "1", "-b", "16", str(path), "trim", "0", str(seconds)])
    return path


def make_face_video(path: Path, still: Path, speech: Path, fps: int = 25) -> Path:
    """A talking-face clip: a real face still looped for the length of ``speech``. ``.mp4`` gets
    H.264 + AAC (RAVDESS's codecs), ``.flv`` Sorenson Spark + MP3 (as CREMA-D's flash video)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".flv":
        codecs = ["-c:v", "flv", "-c:a", "libmp3lame", "-ar", "44100"]
    else:
        codecs = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac"]
    _run([_need("ffmpeg"), "-y", "-loglevel", "error", "-loop", "1", "-framerate", str(fps), "-i", str(still),
          "-i", str(speech), "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2", *codecs, "-shortest", str(path)])
    return path


def make_faceless_video(path: Path, speech: Path, seconds: float = 1.0) -> Path:
    """A video of plain grey frames (no face) with speech."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _run([_need("ffmpeg"), "-y", "-loglevel", "error", "-f", "lavfi", "-i", f"color=c=gray:s=320x240:d={seconds}:r=25",
          "-i", str(speech), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
          "-shortest", str(path)])
    return path


def make_corrupt(path: Path, n_bytes: int = 4096, seed: int = 0) -> Path:
    """Random bytes under a media file name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, n_bytes, dtype=np.uint8).tobytes())
    return path


def make_empty(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def make_csd(path: Path, root_name: str, data: dict[str, tuple[np.ndarray, np.ndarray]],
             metadata: dict[str, str] | None = None) -> Path:
    """A computational sequence in the CMU Multimodal SDK's HDF5 layout: a top-level group named
    after the sequence holding ``data/<video_id>/{features,intervals}`` and a ``metadata`` group
    of one-element string datasets."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        root = fh.create_group(root_name)
        group = root.create_group("data")
        for video_id, (features, intervals) in data.items():
            entry = group.create_group(video_id)
            entry.create_dataset("features", data=features)
            entry.create_dataset("intervals", data=np.asarray(intervals, dtype=np.float64))
        meta = root.create_group("metadata")
        for key, value in (metadata or {"root name": root_name}).items():
            meta.create_dataset(key, (1,), dtype=h5py.special_dtype(vlen=str))
            meta[key][0] = value
    return path
