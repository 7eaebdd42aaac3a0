"""Sinks: where events go. JSON Lines on stdout or into a file, and a local WebSocket server.

Every sink has ``send(event)`` and ``close(ok)``. The file sink writes ``FILE.partial`` and
renames it to ``FILE`` only when the run ends (cleanly, or stopped by a signal), so a failed run
never leaves a half-written file under the final name; it follows a symlink, writes a device or
FIFO directly, and refuses a second run writing the same file. The WebSocket server binds to 127.0.0.1 unless told
otherwise: emotion estimates of a person are not something to publish on the network by default.

The other sinks live in their own modules and import their packages only when used:
:mod:`~edge_mer.stream.sinks.mqtt` (``--mqtt``, paho-mqtt), :mod:`~edge_mer.stream.sinks.osc`
(``--osc``, python-osc) and :mod:`~edge_mer.stream.sinks.http` (``--http``, the live dashboard,
standard library only). A sink that can lose events has ``drops() -> {name: count}``, reported by
``--stats``.

>>> sink = JsonlSink(sys.stdout)                         # doctest: +SKIP
>>> sink.send({"t_end": 2.0, "label": "happy"})          # doctest: +SKIP
{"t_end": 2.0, "label": "happy"}
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import threading
from pathlib import Path
from typing import IO

from edge_mer.errors import DeviceError, EdgeMerError

log = logging.getLogger(__name__)


def encode_event(event: dict) -> str:
    return json.dumps(event, ensure_ascii=False, separators=(", ", ": "))


class Sink:
    """Base of every sink."""

    def send(self, event: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self, ok: bool = True) -> None:
        """Finish; ``ok`` is False when the run failed or was interrupted."""


class JsonlSink(Sink):
    """One JSON object per line on a text stream (stdout by default), flushed per event so a
    reader (``| jq``) sees each one as it happens. A closed pipe raises BrokenPipeError."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def send(self, event: dict) -> None:
        self.stream.write(encode_event(event) + "\n")
        self.stream.flush()


class JsonlFileSink(Sink):
    """JSON Lines into ``path``, by the kind of path it is:

    - a regular file, or a new name: written as ``path.partial``, fsynced and renamed to ``path``
      at a clean end, under an advisory lock (``flock`` on the ``.partial``) that refuses a second
      run writing the same file with a one-line error;
    - a symbolic link: followed, its target written as above; the link stays a link;
    - a character device, FIFO or socket (``/dev/null``, a named pipe, ``/dev/stdout``): written
      directly, one flushed line per event (opening a FIFO waits for its reader); nothing renamed.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise EdgeMerError(f"--out {self.path}: is a directory (give a file name such as events.jsonl)")
        self.written = 0
        self.partial: Path | None = None
        try:
            if _is_stream(self.path):
                self.target = self.path
                self._fh = open(self.path, "a", encoding="utf-8")
                return
            self.target = Path(os.path.realpath(self.path))  # a symlink is followed, never replaced
            if self.target.is_dir():
                raise EdgeMerError(f"--out {self.path}: links to a directory, {self.target}")
            self.partial = self.target.with_name(self.target.name + ".partial")
            self.target.parent.mkdir(parents=True, exist_ok=True)
            fh = _open_locked(self.partial)
        except OSError as exc:
            raise EdgeMerError(f"--out {self.path}: cannot write ({exc.strerror})") from None
        if fh is None:
            raise EdgeMerError(f"--out {self.path}: another run is writing it (it holds the lock on {self.partial})")
        self._fh = fh

    def send(self, event: dict) -> None:
        self._fh.write(encode_event(event) + "\n")
        self._fh.flush()
        self.written += 1

    def close(self, ok: bool = True) -> None:
        if self._fh.closed:
            return
        if self.partial is None:  # a device or FIFO: each line is already out
            self._fh.close()
            return
        self._fh.flush()
        os.fsync(self._fh.fileno())
        # Renamed or removed while the lock is held, so no other run can take the .partial meanwhile.
        if ok:
            os.replace(self.partial, self.target)
        elif self.written:
            log.warning("run did not finish: its %d events so far are in %s", self.written, self.partial)
        else:
            self.partial.unlink()  # failed before the first event: leave nothing behind
        self._fh.close()


def _is_stream(path: Path) -> bool:
    """Whether ``--out`` is written directly: a character device, FIFO or socket (symlinks
    followed), or a path under /dev or /proc (``/dev/stdout`` even when it leads to a file)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False  # a new name (or a dangling link): a file to create
    if str(path.absolute()).startswith(("/dev/", "/proc/")):
        return True
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _open_locked(path: Path) -> IO[str] | None:
    """``path`` opened for writing, emptied, with an exclusive advisory lock; None when another
    process holds the lock. Not truncated before the lock is ours (that would empty the other
    run's file)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        return open(path, "w", encoding="utf-8")
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            os.ftruncate(fd, 0)
            return os.fdopen(fd, "w", encoding="utf-8")
        # The run that held it renamed or removed it between our open and our lock: again.
        os.close(fd)


def listen_url(scheme: str, host: str, port: int, path: str = "") -> str:
    """``scheme://HOST:PORT/path`` of a listening sink (an IPv6 host in brackets)."""
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}{path}"


def parse_ws_address(text: str, default_host: str, flag: str = "--ws", example: int = 8765) -> tuple[str, int]:
    """``"8765"`` -> (default_host, 8765); ``"0.0.0.0:8765"`` -> ("0.0.0.0", 8765); ``"[::1]:8765"``
    -> ("::1", 8765). Also parses ``--http``'s address (``flag``, ``example`` name it in the error)."""
    host, _, port = text.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise EdgeMerError(f"{flag} {text}: expected [HOST:]PORT, e.g. {example} or 127.0.0.1:{example}") from None
    if not 0 <= number <= 65535:
        raise EdgeMerError(f"{flag} {text}: port must be 0-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host or default_host), number


LOOPBACK = ("127.0.0.1", "::1", "localhost")


class WebSocketSink(Sink):
    """A WebSocket server (``websockets`` package) that broadcasts each event as a JSON text
    message to every connected client. It runs its own asyncio loop on a thread; a slow client
    never blocks the pipeline (the broadcast does not wait for it).

    >>> sink = WebSocketSink("127.0.0.1", 8765)          # doctest: +SKIP
    >>> sink.port                                        # doctest: +SKIP
    8765
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: str | None = None
        self._server = None
        self._stop: asyncio.Future | None = None
        self._thread = threading.Thread(target=self._run, args=(host, port), name="websocket-sink", daemon=True)
        self._thread.start()
        self._ready.wait(10.0)
        if self._error or self._server is None:
            raise DeviceError(f"--ws {host}:{port}: cannot listen ({self._error or 'timed out'})")
        self.port = self._server.sockets[0].getsockname()[1]
        if host not in LOOPBACK:
            log.warning("WebSocket sink listens on %s:%d: emotion events are reachable from the network", host, self.port)
        else:
            log.info("WebSocket sink on %s", self.url)

    def _run(self, host: str, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve(host, port))

    async def _serve(self, host: str, port: int) -> None:
        from websockets.asyncio.server import serve

        async def handler(connection) -> None:
            # Clients only listen; wait for them to leave.
            await connection.wait_closed()

        try:
            self._server = await serve(handler, host, port)
        except OSError as exc:
            self._error = exc.strerror or str(exc)
            self._ready.set()
            return
        self._stop = self._loop.create_future()
        self._ready.set()
        await self._stop
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        """``ws://HOST:PORT`` with the port actually bound (``--ws 0``: one the system chose)."""
        return listen_url("ws", self.host, self.port)

    @property
    def clients(self) -> int:
        return len(self._server.connections) if self._server is not None else 0

    def send(self, event: dict) -> None:
        from websockets.asyncio.server import broadcast

        message = encode_event(event)
        self._loop.call_soon_threadsafe(lambda: broadcast(self._server.connections, message))

    def close(self, ok: bool = True) -> None:
        if self._stop is not None and not self._stop.done():
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
            self._thread.join(timeout=5.0)


class Recorder:
    """``--record DIR``: the frames and audio the run read, for the user to keep (off by default).

    Frames go to ``DIR/frames/<seq>_<t_ms>.jpg`` (each written atomically; the name carries its
    stream time) and audio to ``DIR/audio.wav`` (16-bit PCM, chunks in arrival order), which is
    written as ``audio.wav.partial`` and renamed at the end.
    """

    def __init__(self, out_dir: str | os.PathLike, sample_rate_hz: int) -> None:
        import wave

        self.dir = Path(out_dir)
        try:
            (self.dir / "frames").mkdir(parents=True, exist_ok=True)
            self._partial = self.dir / "audio.wav.partial"
            self._wav = wave.open(str(self._partial), "wb")
        except OSError as exc:
            raise EdgeMerError(f"--record {self.dir}: cannot write ({exc.strerror})") from None
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(sample_rate_hz)
        self._rate = sample_rate_hz
        self.frames = 0
        self.audio_samples = 0

    def add(self, item) -> None:
        import cv2
        import numpy as np

        from edge_mer.io import atomic_write_bytes
        from edge_mer.stream.sources import AudioChunk, Frame

        if isinstance(item, Frame):
            ok, jpg = cv2.imencode(".jpg", item.bgr)
            if ok:
                atomic_write_bytes(self.dir / "frames" / f"{item.seq:06d}_{int(round(item.t_s * 1000)):09d}.jpg", jpg.tobytes())
                self.frames += 1
        elif isinstance(item, AudioChunk):
            self._wav.writeframes((np.clip(item.samples, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())
            self.audio_samples += item.samples.size

    def close(self) -> None:
        """Finish the audio file (kept even after an interrupted run: what was written is whole)."""
        if self._wav is None:
            return
        self._wav.close()
        self._wav = None
        if self.audio_samples:
            os.replace(self._partial, self.dir / "audio.wav")
        else:
            self._partial.unlink()
        log.info("recorded %d frames and %.1f s of audio into %s", self.frames,
                 self.audio_samples / max(1, self._rate), self.dir)
