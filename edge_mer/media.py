"""Media decoding shared by preprocessing (training/) and the runtime (edge_mer/): PyAV
(FFmpeg) for every container and codec (wav, flac, mp3, mp4, flv, ...), so training and the
device decode and resample audio the same way.

>>> wave = load_audio("clip.flac", sample_rate_hz=16000)     # doctest: +SKIP
>>> wave.dtype, wave.ndim
(dtype('float32'), 1)
"""

from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np

from edge_mer.errors import MediaError

STDIN = "-"  # an input path meaning "read the standard input"

# What to tell someone whose input cannot be read as a stream.
_STREAMABLE = "WAV, FLAC, MP3, Ogg, Matroska/WebM or MPEG-TS"


def is_stream(path: str | os.PathLike) -> bool:
    """Whether ``path`` is read once, front to back, without seeking: ``-`` (the standard input,
    unless it is redirected from a regular file), a FIFO, a pipe (``/dev/stdin``), a character
    device or a socket (symbolic links followed)."""
    if str(path) == STDIN:
        try:
            return not stat.S_ISREG(os.fstat(0).st_mode)
        except OSError:
            return True  # no standard input at all: said when it is opened
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


def input_label(path: str | os.PathLike) -> str:
    """How an input is named in messages (``-`` is "stdin")."""
    return "stdin" if str(path) == STDIN else str(path)


def file_path(path: str | os.PathLike) -> str | os.PathLike:
    # ``-`` redirected from a regular file (``< clip.mp4``) is that file: seekable, probed and
    # read like any other (/dev/stdin opens it again from its start).
    return "/dev/stdin" if str(path) == STDIN else path


class StreamReader:
    """A FIFO, pipe or device read once by FFmpeg (through PyAV's file-object I/O).

    Reads wait with ``poll`` in steps of ``poll_s`` seconds, so a stop request (``stop``, a
    :class:`threading.Event` set from another thread) ends the stream even while the writer is
    silent, and a signal reaches the main thread while it waits for the first bytes. The first
    bytes can be looked at (:meth:`peek`) before FFmpeg reads them again."""

    def __init__(self, path: str | os.PathLike, stop: threading.Event | None = None, poll_s: float = 0.1) -> None:
        import select

        self.name = input_label(path)
        self.stop = stop
        self.poll_s = poll_s
        self.bytes_read = 0
        self.at_eof = False
        self.interrupted: BaseException | None = None  # raised inside read(), for raise_interrupt()
        self._buffer = b""
        if str(path) == STDIN:
            if os.isatty(0):
                raise MediaError("stdin: is a terminal; pipe a recording into it (cat clip.wav | edge-mer run --audio -)")
            try:
                self._fd = os.dup(0)  # closed with the reader; sys.stdin stays as it was
            except OSError:
                raise MediaError("stdin: is closed; pipe a recording into it") from None
        else:
            try:
                # Non-blocking, so opening a FIFO does not wait for its writer here (the first read
                # does, and can be stopped); reads themselves wait in poll, so the descriptor is
                # made blocking again (its own open file description: nobody else's changes).
                self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                os.set_blocking(self._fd, True)
            except OSError as exc:
                raise MediaError(f"{self.name}: cannot be opened ({exc.strerror})") from None
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR)

    def _read_fd(self, n: int) -> bytes:
        while True:
            if self.stop is not None and self.stop.is_set():
                return b""  # reads as the end of the stream
            if self._poll.poll(int(self.poll_s * 1000)):
                data = os.read(self._fd, n)
                if not data:
                    self.at_eof = True
                self.bytes_read += len(data)
                return data

    def peek(self, n: int) -> bytes:
        """Up to ``n`` first bytes (fewer at the end of the stream), kept for :meth:`read`."""
        while len(self._buffer) < n and not self.at_eof:
            data = self._read_fd(max(4096, n - len(self._buffer)))
            if not data:
                break
            self._buffer += data
        return self._buffer[:n]

    def read(self, n: int = 65536) -> bytes:
        if self._buffer:
            data, self._buffer = self._buffer[:n], self._buffer[n:]
            return data
        if self.at_eof or self.interrupted is not None:
            return b""
        try:
            return self._read_fd(n)
        except BaseException as exc:
            # FFmpeg calls this from C, where a KeyboardInterrupt (a signal's handler raising
            # errors.Interrupted while a read waits) would be printed and lost: the stream ends
            # here and the opener raises it again (raise_interrupt).
            self.interrupted = exc
            return b""

    def raise_interrupt(self) -> None:
        if self.interrupted is not None:
            exc, self.interrupted = self.interrupted, None
            raise exc

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except (OSError, AttributeError):
            pass


def mp4_index_at_end(reader: StreamReader, limit: int = 1 << 20) -> bool:
    """Whether a stream is an MP4/MOV (ISO base media) whose index, the ``moov`` box, comes after
    its media data (``mdat``): FFmpeg needs the index first to read it without seeking. Looks at
    the top-level boxes in the first ``limit`` bytes; False for anything else."""
    head = reader.peek(8)
    if len(head) < 8 or head[4:8] not in (b"ftyp", b"wide", b"mdat", b"moov"):
        return False
    offset = 0
    while offset < limit:
        box = reader.peek(offset + 16)[offset:]
        if len(box) < 8:
            return False
        size, kind = int.from_bytes(box[:4], "big"), box[4:8]
        if kind == b"moov":
            return False
        if kind == b"mdat":
            return True
        if size == 1 and len(box) >= 16:
            size = int.from_bytes(box[8:16], "big")
        if size < 8:  # 0: "to the end of the file"; smaller: not a box
            return False
        offset += size
    return False


def _open_stream(path: str | os.PathLike, stop: threading.Event | None = None):
    import av

    reader = StreamReader(path, stop)
    name = reader.name
    try:
        if mp4_index_at_end(reader):
            raise MediaError(
                f"{name}: an MP4/MOV whose index (moov atom) is at its end cannot be read from a pipe or FIFO; "
                "write it to a file and pass the file, or remux it with 'ffmpeg -i IN -c copy -movflags +faststart "
                f"OUT.mp4' (or stream {_STREAMABLE})")
        if not reader.peek(1):
            if stop is not None and stop.is_set():
                raise MediaError(f"{name}: stopped before any data arrived")
            raise MediaError(f"{name}: empty stream (its writer sent nothing)")
        try:
            # FFmpeg analyses 5 s of a stream by default before it starts: a live pipe would wait
            # that long for its first event; 1 s finds the tracks of every streamable format.
            container = av.open(reader, mode="r", buffer_size=1 << 16, options={"analyzeduration": "1000000"})
        except av.error.FFmpegError as exc:
            reader.raise_interrupt()
            raise MediaError(f"{name}: cannot open as media from a stream ({_short(exc)}); "
                             f"a pipe or FIFO needs a streamable format ({_STREAMABLE})") from None
        try:
            reader.raise_interrupt()
        except BaseException:
            container.close()
            raise
    except BaseException:
        reader.close()
        raise
    return _StreamContainer(container, reader)


class _StreamContainer:
    """A PyAV container read from a :class:`StreamReader`; closing it closes the descriptor too
    (PyAV leaves a file object it was given open)."""

    def __init__(self, container, reader: StreamReader) -> None:
        self._container = container
        self.reader = reader

    def __getattr__(self, name: str):
        return getattr(self._container, name)

    def close(self) -> None:
        try:
            self._container.close()
        finally:
            self.reader.close()

    def __enter__(self) -> "_StreamContainer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _open(path: str | os.PathLike, stop: threading.Event | None = None):
    """An opened PyAV container for a file, or for a stream (``-``, a FIFO: see
    :func:`is_stream`), which can be opened only once: everything it holds is read from that one
    container."""
    import av

    if is_stream(path):
        return _open_stream(path, stop)
    path = Path(file_path(path))
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
    """Streams, rates and duration of a media file (raises MediaError if it is unreadable).

    Probing reads data: a stream (``-``, a FIFO) probed here cannot be read again; open it once
    with :func:`open_media` instead."""
    with _open(path) as container:
        return container_info(container, path)


def open_media(path: str | os.PathLike, stop: threading.Event | None = None):
    """``(container, MediaInfo)``: the input opened once, with what it holds. The caller closes
    the container. For a stream this is the only way to learn what it holds and then read it."""
    container = _open(path, stop)
    try:
        return container, container_info(container, path)
    except BaseException:
        container.close()
        raise


def container_info(container, path: str | os.PathLike) -> MediaInfo:
    """What an opened container holds (raises MediaError for a stream without a codec)."""
    a = container.streams.audio[0] if container.streams.audio else None
    v = container.streams.video[0] if container.streams.video else None
    # A damaged header can leave a stream without a codec context, whose attributes PyAV
    # then refuses (AttributeError): that is a corrupt file, said in one line.
    for stream, kind in ((a, "audio"), (v, "video")):
        if stream is not None and getattr(stream, "codec_context", None) is None:
            raise MediaError(f"{input_label(path)}: corrupt media (its {kind} stream has no decodable codec)")
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
