"""Media decoding shared by preprocessing (training/) and the runtime (edge_mer/): PyAV
(FFmpeg) for every container and codec (wav, flac, mp3, mp4, flv, ...), so training and the
device decode and resample audio the same way.

>>> wave = load_audio("clip.flac", sample_rate_hz=16000)     # doctest: +SKIP
>>> wave.dtype, wave.ndim
(dtype('float32'), 1)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from edge_mer.errors import MediaError


def _open(path: str | os.PathLike):
    import av

    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: file not found")
    if path.is_dir():
        raise MediaError(f"{path}: is a directory, not a media file")
    if path.stat().st_size == 0:
        raise MediaError(f"{path}: empty file")
    try:
        return av.open(str(path))
    except Exception as exc:  # av.error.InvalidDataError and friends
        raise MediaError(f"{path}: cannot open as media ({_short(exc)})") from None


def _short(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text[:160] or type(exc).__name__


@dataclass(frozen=True)
class MediaInfo:
    """What a file holds."""

    path: str
    duration_s: float | None
    has_audio: bool
    has_video: bool
    audio_rate_hz: int | None
    audio_channels: int | None
    video_fps: float | None
    width: int | None
    height: int | None
    format_name: str | None = None  # FFmpeg's demuxer name(s), e.g. "mov,mp4,m4a,3gp,3g2,mj2", "image2"

    @property
    def still_image(self) -> bool:
        """A picture (JPEG, PNG, ...) read by FFmpeg's image demuxers, not a recording."""
        names = (self.format_name or "").split(",")
        return any(n in ("image2", "image2pipe") or n.endswith("_pipe") for n in names)


def probe(path: str | os.PathLike) -> MediaInfo:
    """Streams, rates and duration of a media file (raises MediaError if it is unreadable)."""
    with _open(path) as container:
        a = container.streams.audio[0] if container.streams.audio else None
        v = container.streams.video[0] if container.streams.video else None
        # A damaged header can leave a stream without a codec context, whose attributes PyAV
        # then refuses (AttributeError): that is a corrupt file, said in one line.
        for stream, kind in ((a, "audio"), (v, "video")):
            if stream is not None and getattr(stream, "codec_context", None) is None:
                raise MediaError(f"{path}: corrupt media (its {kind} stream has no decodable codec)")
        duration = container.duration / 1e6 if container.duration else None
        fps = None
        if v is not None and v.average_rate:
            fps = float(v.average_rate)
        return MediaInfo(
            path=str(path),
            duration_s=duration,
            has_audio=a is not None,
            has_video=v is not None,
            audio_rate_hz=a.rate if a is not None else None,
            audio_channels=a.channels if a is not None else None,
            video_fps=fps,
            width=v.codec_context.width if v is not None else None,
            height=v.codec_context.height if v is not None else None,
            format_name=container.format.name if container.format is not None else None,
        )


def iter_audio(path: str | os.PathLike, sample_rate_hz: int, chunk_s: float = 0.1) -> Iterator[tuple[float, np.ndarray]]:
    """Decode the first audio track as mono float32 at ``sample_rate_hz``, yielding
    ``(t_start_s, samples)`` chunks in stream order. Raises MediaError if there is no audio."""
    import av

    container = _open(path)
    try:
        if not container.streams.audio:
            raise MediaError(f"{path}: no audio track")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate_hz)
        emitted = 0
        buf: list[np.ndarray] = []
        buffered = 0
        chunk = max(1, int(round(chunk_s * sample_rate_hz)))
        try:
            for packet in container.demux(stream):
                for frame in packet.decode():
                    for out in resampler.resample(frame):
                        arr = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                        buf.append(arr)
                        buffered += arr.size
                        while buffered >= chunk:
                            data = np.concatenate(buf)
                            yield emitted / sample_rate_hz, data[:chunk]
                            emitted += chunk
                            rest = data[chunk:]
                            buf, buffered = ([rest] if rest.size else []), rest.size
            for out in resampler.resample(None):
                buf.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
        except av.error.FFmpegError as exc:
            raise MediaError(f"{path}: corrupt audio ({_short(exc)})") from None
        if buf:
            data = np.concatenate(buf)
            if data.size:
                yield emitted / sample_rate_hz, data
    finally:
        container.close()


def load_audio(path: str | os.PathLike, sample_rate_hz: int = 16000) -> np.ndarray:
    """The whole first audio track, mono float32 in [-1, 1] at ``sample_rate_hz``."""
    chunks = [c for _, c in iter_audio(path, sample_rate_hz, chunk_s=10.0)]
    if not chunks:
        raise MediaError(f"{path}: audio track holds no samples")
    wave = np.concatenate(chunks)
    if not np.all(np.isfinite(wave)):
        raise MediaError(f"{path}: audio holds NaN or Inf samples")
    return wave


def iter_video_frames(path: str | os.PathLike, fps: float | None = None,
                      start_s: float | None = None) -> Iterator[tuple[float, np.ndarray]]:
    """Decode the first video track as ``(t_s, frame)`` with ``frame`` a BGR uint8 array
    (OpenCV order). With ``fps`` frames are subsampled to at most that rate. With ``start_s`` the
    decoder seeks to the keyframe before it and yields frames from ``start_s`` on (a segment of a
    long video without decoding everything before it)."""
    import av

    container = _open(path)
    try:
        if not container.streams.video:
            raise MediaError(f"{path}: no video track")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        time_base = stream.time_base or Fraction(1, 1000)
        next_t = start_s or 0.0
        step = 1.0 / fps if fps else 0.0
        index = 0
        try:
            if start_s:
                # backward=True lands on the keyframe at or before start_s; frames up to start_s
                # are decoded and dropped below
                container.seek(int(start_s / time_base), stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is not None:
                    t = float(frame.pts * time_base)
                else:
                    t = index / float(stream.average_rate or 30)
                index += 1
                if start_s and t + 1e-6 < start_s:
                    continue
                if step and t + 1e-6 < next_t:
                    continue
                next_t = t + step
                yield t, frame.to_ndarray(format="bgr24")
        except av.error.FFmpegError as exc:
            raise MediaError(f"{path}: corrupt video ({_short(exc)})") from None
    finally:
        container.close()
