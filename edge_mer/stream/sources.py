"""Sources: where frames and audio come from, each item stamped with its capture time.

A source is an iterable of :class:`Frame` and :class:`AudioChunk` in (roughly) time order. Times
``t_s`` are seconds from the start of the stream: the file's own timestamps for files (so replay
is deterministic), ``time.monotonic() - clock_origin_s`` for live devices. A source whose items
follow the wall clock sets ``clock_origin_s`` (the monotonic time of ``t_s == 0``), so latency can
be measured from the moment a window really ended; ``--fast`` replay leaves it ``None``.

Live capture never blocks on the consumer: the camera thread and the microphone callback only
put items into a :class:`BoundedQueue`, which drops by policy when full and counts the drops.

>>> src = FileSource("clip.mp4", sample_rate_hz=16000, realtime=False)    # doctest: +SKIP
>>> for item in src:                                                     # doctest: +SKIP
...     print(type(item).__name__, item.t_s)
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Union

import numpy as np

from edge_mer.errors import DeviceError, MediaError

log = logging.getLogger(__name__)

DROP_POLICIES = ("oldest", "newest")


def _short(exc: Exception) -> str:
    return " ".join(str(exc).split())[:160] or type(exc).__name__


@dataclass(frozen=True)
class Frame:
    """One video frame: capture time in seconds from stream start, sequence number, BGR uint8."""

    t_s: float
    seq: int
    bgr: np.ndarray


@dataclass(frozen=True)
class AudioChunk:
    """Mono float32 samples in [-1, 1] at the runtime sample rate; ``t_s`` is the first sample's time."""

    t_s: float
    seq: int
    samples: np.ndarray


Item = Union[Frame, AudioChunk]


class BoundedQueue:
    """A thread-safe FIFO of at most ``maxsize`` items that never blocks the producer.

    When full, ``put`` drops the oldest queued item (``policy="oldest"``: keep the freshest data,
    right for live capture) or the new item (``"newest"``), and counts it in ``dropped``.

    >>> q = BoundedQueue(2, "oldest")
    >>> for i in range(3):
    ...     q.put(i)
    >>> q.get(0.0), q.dropped
    (1, 1)
    """

    def __init__(self, maxsize: int, policy: str = "oldest", max_bytes: int = 0,
                 size_of: Callable[[object], int] | None = None) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be at least 1, got {maxsize}")
        if policy not in DROP_POLICIES:
            raise ValueError(f"drop policy must be one of {DROP_POLICIES}, got {policy!r}")
        self.maxsize = maxsize
        self.policy = policy
        # Bounded by bytes too when ``max_bytes`` > 0 (``size_of`` tells an item's size): full
        # frames of a high-resolution source must not pile up while the consumer is busy. One
        # item always fits, however large.
        self.max_bytes = max_bytes
        self.size_of = size_of or (lambda item: 0)
        self.bytes = 0
        self.dropped = 0
        self._items: collections.deque = collections.deque()
        self._sizes: collections.deque = collections.deque()
        self._cond = threading.Condition()

    def _full(self, size: int) -> bool:
        if len(self._items) >= self.maxsize:
            return True
        return self.max_bytes > 0 and bool(self._items) and self.bytes + size > self.max_bytes

    def put(self, item, block: bool = False) -> None:
        """Enqueue ``item``; with ``block`` wait for room instead of dropping (file replay)."""
        size = int(self.size_of(item)) if self.max_bytes > 0 else 0
        with self._cond:
            if block:
                while self._full(size):
                    self._cond.wait()
            elif self._full(size) and self.policy == "newest":
                self.dropped += 1
                return
            else:
                while self._full(size):  # "oldest": make room, one dropped item at a time
                    self.dropped += 1
                    self.bytes -= self._sizes.popleft()
                    self._items.popleft()
            self._items.append(item)
            self._sizes.append(size)
            self.bytes += size
            self._cond.notify_all()

    def get(self, timeout: float | None = None):
        """The oldest item, or None when nothing arrives within ``timeout`` seconds."""
        with self._cond:
            if not self._items:
                self._cond.wait(timeout)
            if not self._items:
                return None
            item = self._items.popleft()
            self.bytes -= self._sizes.popleft()
            self._cond.notify_all()
            return item

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)


class Source:
    """Base of every source: iterate for items, ``close()`` to release the device or file."""

    name = "source"  # URI-like, for logs
    label = "source"  # for users' error messages ("camera 0", "clip.mp4")
    clock_origin_s: float | None = None  # monotonic time of t_s == 0 for sources that follow the wall clock
    has_video = False
    has_audio = False
    skips_frames = False  # honours keep_frame (below)

    def __init__(self) -> None:
        self._stop_requested = threading.Event()
        # Frames the consumer will not analyse: a source that can skip them before converting
        # them to BGR arrays (a file: the conversion costs more than decoding) asks this first,
        # with the frame's time, and counts what it skipped in ``frames_skipped``.
        self.keep_frame: Callable[[float], bool] | None = None
        self.frames_skipped = 0
        # Frames larger than this on their longer side are scaled down as soon as they are read
        # (0: never): memory and face-detection time then stop growing with the camera's or the
        # file's resolution (runtime.max_frame_side_px).
        self.max_side_px = 0

    def __iter__(self) -> Iterator[Item]:  # pragma: no cover - abstract
        raise NotImplementedError

    def request_stop(self) -> None:
        """Ask the iteration (possibly on another thread) to end at the next item or poll."""
        self._stop_requested.set()

    def drops(self) -> dict[str, int]:
        """Items dropped by this source's bounded queues, by kind."""
        return {}

    def close(self) -> None:
        """Release the device or file (idempotent)."""


# --------------------------------------------------------------------------- files


class FileSource(Source):
    """A media file's video and audio tracks decoded together (PyAV) with their timestamps.

    Video frames keep their presentation time; audio is resampled to ``sample_rate_hz`` mono and
    stamped by its sample count, so both share the file's clock (starting at 0). With ``realtime``
    items are released at the pace they were recorded; otherwise as fast as they decode.
    ``use_video``/``use_audio`` select tracks (``--audio FILE`` reads only the sound).
    """

    skips_frames = True

    def __init__(self, path: str | os.PathLike, sample_rate_hz: int, realtime: bool = True,
                 use_video: bool = True, use_audio: bool = True, chunk_s: float = 0.1) -> None:
        from edge_mer.media import input_label, is_stream, open_media, probe

        super().__init__()
        self.path = Path(path)
        self.label = input_label(path)
        # A stream (``-``, a FIFO, a pipe) can be read only once: it is opened here, what it holds
        # is learnt from that container, and __iter__ decodes the same container (FFmpeg keeps
        # the packets it read while probing). A file is probed here and opened again to decode.
        self.is_stream = is_stream(path)
        self._stream_container = None
        if self.is_stream:
            # raises a one-line MediaError for an empty stream or a format that needs seeking
            self._stream_container, info = open_media(path, stop=self._stop_requested)
        else:
            info = probe(self.path)  # raises a one-line MediaError for a missing or unreadable file
        try:
            self._check(info, use_video, use_audio)
        except BaseException:
            self.close()
            raise
        self.duration_s = info.duration_s
        self.format_name = info.format_name
        self.name = "pipe:stdin" if str(path) == "-" else f"{'pipe' if self.is_stream else 'file'}://{self.path}"
        self.sample_rate_hz = sample_rate_hz
        # Audio recorded below the rate the bundle's features expect is upsampled, but the band
        # above its Nyquist frequency is empty: the encoder hears it as muffled speech and labels
        # can change. Said once, and kept for --stats.
        self.source_rate_hz = info.audio_rate_hz if self.has_audio else None
        if self.source_rate_hz and self.source_rate_hz < sample_rate_hz:
            log.warning("%s: audio recorded at %d Hz, below the %d Hz the bundle's audio features expect: nothing "
                        "above %d Hz reaches the encoder, expect less accurate audio labels", self.label,
                        self.source_rate_hz, sample_rate_hz, self.source_rate_hz // 2)
        self.realtime = realtime
        self.chunk = max(1, int(round(chunk_s * sample_rate_hz)))
        self._container = None

    def _check(self, info, use_video: bool, use_audio: bool) -> None:
        if info.still_image:
            raise MediaError(f"{self.label}: is a still image ({info.format_name}), not a video or audio recording")
        self.has_video = bool(use_video and info.has_video)
        self.has_audio = bool(use_audio and info.has_audio)
        if not self.has_video and not self.has_audio:
            wanted = "audio track" if not use_video else "video or audio track"
            raise MediaError(f"{self.label}: has no {wanted}")

    def __iter__(self) -> Iterator[Item]:
        import av

        from edge_mer.media import file_path

        if self.is_stream:
            if self._stream_container is None:
                raise MediaError(f"{self.label}: a stream can be read only once")
            self._container = container = self._stream_container
            self._stream_container = None
        else:
            try:
                self._container = container = av.open(str(file_path(self.path)))
            except (av.error.FFmpegError, OSError) as exc:
                raise MediaError(f"{self.label}: cannot open as media ({_short(exc)})") from None
        streams = []
        vstream = container.streams.video[0] if self.has_video else None
        astream = container.streams.audio[0] if self.has_audio else None
        if vstream is not None:
            vstream.thread_type = "AUTO"
            streams.append(vstream)
        if astream is not None:
            streams.append(astream)
        # Timestamps count from the container's start so audio (by sample count) and video agree.
        start = container.start_time / 1e6 if container.start_time else 0.0
        resampler = av.AudioResampler(format="flt", layout="mono", rate=self.sample_rate_hz) if astream else None
        from av.video.reformatter import VideoReformatter

        reformatter = VideoReformatter()  # keeps its swscale context between frames (3.6 -> 0.7 ms at 720p)
        self.clock_origin_s = time.monotonic() if self.realtime else None
        n_frames = n_chunks = 0
        last_frame_t = 0.0
        audio_samples = 0
        pending: list[np.ndarray] = []
        pending_n = 0
        audio_t0: float | None = None
        try:
            for packet in container.demux(*streams):
                if self._stop_requested.is_set():
                    return
                decoded = packet.decode()
                if packet.stream is vstream:
                    for frame in decoded:
                        if frame.pts is not None:
                            t = float(frame.pts * (vstream.time_base or Fraction(1, 1000))) - start
                        else:
                            t = n_frames / float(vstream.average_rate or 30)
                        self._pace(t)
                        last_frame_t = max(0.0, t)
                        if self.keep_frame is not None and not self.keep_frame(last_frame_t):
                            self.frames_skipped += 1
                        else:
                            size = fitted_size(frame.width, frame.height, self.max_side_px)
                            if size is None:
                                bgr = frame.to_ndarray(format="bgr24")
                            else:  # scaled and converted in one swscale pass, never held at full size
                                bgr = reformatter.reformat(frame, width=size[0], height=size[1], format="bgr24",
                                                           interpolation="AREA").to_ndarray()
                            yield Frame(last_frame_t, n_frames, bgr)
                        n_frames += 1
                else:
                    for frame in decoded:
                        if audio_t0 is None:
                            # An audio track that starts late keeps its offset to the video.
                            audio_t0 = max(0.0, float(frame.pts * astream.time_base) - start) if frame.pts is not None else 0.0
                        for out in resampler.resample(frame):
                            arr = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                            pending.append(arr)
                            pending_n += arr.size
                        while pending_n >= self.chunk:
                            data = np.concatenate(pending)
                            t = audio_t0 + audio_samples / self.sample_rate_hz
                            self._pace(t + self.chunk / self.sample_rate_hz)
                            yield AudioChunk(t, n_chunks, data[: self.chunk])
                            n_chunks += 1
                            audio_samples += self.chunk
                            rest = data[self.chunk:]
                            pending, pending_n = ([rest] if rest.size else []), rest.size
            reader = getattr(container, "reader", None)  # a stream's: a read error ended its packets?
            if reader is not None:
                try:
                    reader.raise_interrupt()
                except OSError as exc:
                    raise MediaError(f"{self.label}: reading the stream failed ({exc.strerror or exc})") from None
            if resampler is not None:
                for out in resampler.resample(None):
                    pending.append(out.to_ndarray().reshape(-1).astype(np.float32, copy=False))
                if pending:
                    data = np.concatenate(pending)
                    if data.size:
                        yield AudioChunk((audio_t0 or 0.0) + audio_samples / self.sample_rate_hz, n_chunks, data)
                        audio_samples += data.size
            if n_frames == 0 and audio_samples == 0:
                # FFmpeg opens some non-media files (a text file named .flac) and decodes nothing.
                raise MediaError(f"{self.label}: decodes to no audio samples and no video frames "
                                 "(not a media file, or its tracks are empty)" + self._stream_hint())
            # FFmpeg ends a cut-off file quietly: say so, or a truncated recording looks whole.
            decoded_s = max(last_frame_t, (audio_t0 or 0.0) + audio_samples / self.sample_rate_hz)
            if self.duration_s and decoded_s < self.duration_s - 1.0 and not self._stop_requested.is_set():
                log.warning("%s: decoding stopped at %.1f s of %.1f s (truncated or damaged %s?)",
                            self.label, decoded_s, self.duration_s, "stream" if self.is_stream else "file")
        except av.error.FFmpegError as exc:
            raise MediaError(f"{self.label}: corrupt media ({_short(exc)})" + self._stream_hint()) from None
        finally:
            self.close()

    def _stream_hint(self) -> str:
        # An MP4/MOV read without seeking fails in ways FFmpeg does not explain.
        if self.is_stream and "mp4" in (self.format_name or "").split(","):
            return ("; an MP4/MOV read from a pipe or FIFO needs its index first: write it to a file, or remux it "
                    "with 'ffmpeg -i IN -c copy -movflags +faststart OUT.mp4', or stream WAV, MKV or MPEG-TS")
        return ""

    def _pace(self, t_s: float) -> None:
        # Real-speed replay: an item is released once the wall clock reaches its time.
        if self.clock_origin_s is not None:
            delay = self.clock_origin_s + t_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def close(self) -> None:
        for attr in ("_container", "_stream_container"):
            container = getattr(self, attr, None)
            if container is not None:
                setattr(self, attr, None)
                container.close()


# --------------------------------------------------------------------------- live devices


def _opencv_has_gstreamer() -> bool:
    import re

    import cv2

    return re.search(r"GStreamer:\s+YES", cv2.getBuildInformation()) is not None


def camera_spec(text: str) -> int | str:
    """``--camera`` value: ``"0"`` -> index 0; anything else (``/dev/video1``, a GStreamer
    pipeline such as ``nvarguscamerasrc ! ... ! appsink``) is passed to OpenCV as it is."""
    return int(text) if text.strip().isdigit() else text


class CameraSource:
    """An OpenCV camera read by a thread into a bounded queue: an index, a device path, or a
    GStreamer pipeline (a Jetson CSI camera, with JetPack's OpenCV)."""

    def __init__(self, index: int | str, queue: BoundedQueue, clock_origin_s: float, retry_s: float = 5.0) -> None:
        self.index = index
        self.max_side_px = 0  # set by LiveSource (runtime.max_frame_side_px)
        self._cap = self._open()
        if self._cap is None:
            why = "no such camera, or it is busy"
            if isinstance(index, str) and "!" in index and not _opencv_has_gstreamer():
                why = "this OpenCV has no GStreamer (PyPI wheels do not; use JetPack's OpenCV, see docs/JETSON.md)"
            raise DeviceError(f"camera {index}: cannot be opened ({why})")
        self.queue = queue
        self.clock_origin_s = clock_origin_s
        self.retry_s = retry_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"camera-{index}", daemon=True)
        self.failed: str | None = None

    def _open(self):
        """An opened ``cv2.VideoCapture``, or None."""
        import cv2

        # OpenCV logs its failed probes (V4L2, FFmpeg) straight to stderr; our one-line error
        # says what matters, so its own warnings are muted while opening.
        level = cv2.utils.logging.getLogLevel()
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            if isinstance(self.index, str) and "!" in self.index:
                cap = cv2.VideoCapture(self.index, cv2.CAP_GSTREAMER)
            else:
                cap = cv2.VideoCapture(self.index)
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        seq = 0
        while not self._stop.is_set():
            ok, bgr = self._cap.read()
            t = time.monotonic() - self.clock_origin_s
            if not ok:
                if self._reopen():
                    continue
                self.failed = f"camera {self.index}: stopped delivering frames (retried for {self.retry_s:g} s)"
                break
            size = fitted_size(bgr.shape[1], bgr.shape[0], self.max_side_px)
            if size is not None:
                import cv2

                bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
            self.queue.put(Frame(t, seq, bgr))  # never blocks: a full queue drops by policy
            seq += 1

    def _reopen(self) -> bool:
        """A camera that stops (a loose USB cable, a restarted camera daemon) is reopened for up
        to ``runtime.source_retry_s`` before the run gives up."""
        log.warning("camera %s: no frame; reopening for up to %g s", self.index, self.retry_s)
        self._cap.release()
        deadline = time.monotonic() + self.retry_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            cap = self._open()
            if cap is not None:
                self._cap = cap
                return True
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
        self._cap.release()


class MicSource:
    """A sounddevice input stream whose callback only copies the block into a bounded queue."""

    def __init__(self, device: str | int | None, sample_rate_hz: int, queue: BoundedQueue,
                 clock_origin_s: float, block_s: float = 0.1) -> None:
        try:
            import sounddevice as sd
        except OSError as exc:  # PortAudio library missing
            raise DeviceError(f"microphone: PortAudio is unavailable ({exc}); install libportaudio2") from None
        self.queue = queue
        self.clock_origin_s = clock_origin_s
        self.sample_rate_hz = sample_rate_hz
        self._seq = 0
        self._t0: float | None = None
        self._samples = 0
        label = "default" if device is None else str(device)
        try:
            self._stream = sd.InputStream(
                device=device, channels=1, samplerate=sample_rate_hz, dtype="float32",
                blocksize=max(1, int(round(block_s * sample_rate_hz))), callback=self._callback,
            )
        except (sd.PortAudioError, ValueError) as exc:
            raise DeviceError(f"microphone {label}: cannot be opened ({' '.join(str(exc).split())})") from None

    def _callback(self, indata, frames, time_info, status) -> None:
        # Runs on PortAudio's thread: copy and enqueue only, never block or compute here.
        # Chunks are stamped by sample count from the first one (callback times jitter by
        # milliseconds, which would cut tiny gaps into the audio); an input overflow (PortAudio
        # lost samples) re-anchors the count on the clock.
        if self._t0 is None or status.input_overflow:
            self._t0 = time.monotonic() - self.clock_origin_s - frames / self.sample_rate_hz
            self._samples = 0
        t = self._t0 + self._samples / self.sample_rate_hz
        self._samples += frames
        self.queue.put(AudioChunk(t, self._seq, indata[:, 0].copy()))
        self._seq += 1

    def start(self) -> None:
        self._stream.start()

    def stop(self) -> None:
        if self._stream.active:
            self._stream.stop()
        self._stream.close()


def fitted_size(width: int, height: int, max_side_px: int) -> tuple[int, int] | None:
    """``(width, height)`` scaled so the longer side is ``max_side_px`` (even sizes, aspect kept),
    or None when the frame already fits (or there is no limit).

    >>> fitted_size(3840, 2160, 1280), fitted_size(640, 480, 1280), fitted_size(3840, 2160, 0)
    ((1280, 720), None, None)
    """
    if max_side_px <= 0 or max(width, height) <= max_side_px:
        return None
    scale = max_side_px / max(width, height)
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


class LiveSource(Source):
    """Camera and/or microphone on one monotonic clock, merged in time order for the windower."""

    def __init__(self, camera: int | str | None, mic: str | int | None, use_mic: bool, sample_rate_hz: int,
                 queue_size: int, drop_policy: str, max_seconds: float | None = None, retry_s: float = 5.0) -> None:
        super().__init__()
        self.clock_origin_s = time.monotonic()
        self.video_q = BoundedQueue(queue_size, drop_policy)
        self.audio_q = BoundedQueue(queue_size, drop_policy)
        self.max_seconds = max_seconds
        self.camera = self.mic = None
        names, labels = [], []
        try:
            if camera is not None:
                self.camera = CameraSource(camera, self.video_q, self.clock_origin_s, retry_s)
                names.append(f"v4l2://{camera}")
                labels.append(f"camera {camera}")
            if use_mic:
                self.mic = MicSource(mic, sample_rate_hz, self.audio_q, self.clock_origin_s)
                names.append(f"mic://{'default' if mic is None else mic}")
                labels.append(f"microphone {'default' if mic is None else mic}")
        except DeviceError:
            self.close()
            raise
        self.has_video = self.camera is not None
        self.has_audio = self.mic is not None
        self.name = " + ".join(names)
        self.label = " and ".join(labels)

    @property
    def max_side_px(self) -> int:
        return getattr(self, "_max_side_px", 0)

    @max_side_px.setter
    def max_side_px(self, value: int) -> None:
        # The camera thread scales its frames (the base class documents the attribute).
        self._max_side_px = value
        if getattr(self, "camera", None) is not None:
            self.camera.max_side_px = value

    def __iter__(self) -> Iterator[Item]:
        for dev in (self.camera, self.mic):
            if dev is not None:
                dev.start()
        try:
            while not self._stop_requested.is_set():
                if self.camera is not None and self.camera.failed:
                    raise DeviceError(self.camera.failed)
                if self.max_seconds is not None and time.monotonic() - self.clock_origin_s >= self.max_seconds:
                    return
                got = False
                # Audio first: it is small and its loss hurts more than a late frame.
                for q in (self.audio_q, self.video_q):
                    item = q.get(0.0)
                    if item is not None:
                        got = True
                        yield item
                if not got:
                    time.sleep(0.005)
        finally:
            self.close()

    def drops(self) -> dict[str, int]:
        return {"frames": self.video_q.dropped, "audio_chunks": self.audio_q.dropped}

    def close(self) -> None:
        for attr in ("camera", "mic"):
            dev = getattr(self, attr)
            if dev is not None:
                dev.stop()
                setattr(self, attr, None)
