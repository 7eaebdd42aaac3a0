"""``--http [host:]port``: a live dashboard served by the running process (standard library only).

``GET /`` is one self-contained page (``dashboard.html`` beside this module, shipped as package
data: inline CSS and JavaScript, no CDN, works offline) that shows the current label, a bar per
label, a scrolling timeline of the last minutes, each modality's status (used with its
reliability, or absent and why), latency, and drops. ``GET /events`` is the event stream as
Server-Sent Events: each event as ``data: <the event's JSON>`` (the same JSON as stdout), preceded
by ``event: stats`` with ``{"events": N, "drops": {...}}``; a client that connects mid-run first
gets the latest event. ``GET /latest`` is the latest event as JSON (``null`` before the first).

The server binds 127.0.0.1 unless told otherwise (a warning for any other address). A slow
client never blocks the pipeline: each client has a bounded queue, and what overflows it is
dropped for that client (counted as ``drops: http N``).

>>> sink = HttpSink("127.0.0.1", 0)      # doctest: +SKIP
>>> sink.url                            # doctest: +SKIP
'http://127.0.0.1:39145/'
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Callable

from edge_mer.errors import DeviceError, EdgeMerError
from edge_mer.stream.sinks import LOOPBACK, Sink, encode_event, listen_url

log = logging.getLogger(__name__)

_ACTIVE: "list[HttpSink]" = []  # the dashboards of this process (notices reach them all)
CLIENT_QUEUE = 256  # messages a client may lag behind before its oldest are dropped
KEEPALIVE_S = 10.0
_CLOSE = object()


def dashboard_html() -> bytes:
    """The page, from the package (a wheel or an editable install alike)."""
    try:
        return resources.files("edge_mer.stream.sinks").joinpath("dashboard.html").read_bytes()
    except (FileNotFoundError, OSError) as exc:  # a broken install
        raise EdgeMerError(f"--http: the dashboard page is missing from the installed package ({exc})") from None


class HttpSink(Sink):
    """The dashboard server; ``send`` fans each event out to the connected pages."""

    def __init__(self, host: str, port: int, run_stats: Callable[[], dict] | None = None) -> None:
        self.host = host
        self._page = dashboard_html()
        self._run_stats = run_stats or (lambda: {})
        self._lock = threading.Lock()
        self._clients: list[queue.Queue] = []
        self._latest: str | None = None
        self._events = 0
        self._dropped = 0
        self._closed = threading.Event()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "edge-mer"
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args) -> None:
                log.debug("dashboard: " + fmt, *args)

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/", "/index.html"):
                    self._reply(200, "text/html; charset=utf-8", sink._page)
                elif path == "/latest":
                    self._reply(200, "application/json", (sink._latest or "null").encode("utf-8"))
                elif path == "/events":
                    sink._stream(self)
                else:
                    self._reply(404, "text/plain; charset=utf-8", b"not found: try /, /events or /latest\n")

            def _reply(self, code: int, kind: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address) -> None:  # a page closed mid-write
                log.debug("dashboard: client %s went away", client_address)

        if ":" in host:
            import socket

            Server.address_family = socket.AF_INET6
        try:
            self._server = Server((host, port), Handler)
        except OSError as exc:
            raise DeviceError(f"--http {host}:{port}: cannot listen ({exc.strerror or exc})") from None
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="http-sink", daemon=True)
        self._thread.start()
        if host not in LOOPBACK:
            log.warning("dashboard listens on %s:%d: emotion events are reachable from the network", host, self.port)
        self._notice: str | None = None
        _ACTIVE.append(self)

    @property
    def url(self) -> str:
        """``http://HOST:PORT/`` with the port actually bound (``--http 0``: one the system chose)."""
        return listen_url("http", self.host, self.port, "/")

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def _stream(self, handler: BaseHTTPRequestHandler) -> None:
        """One ``/events`` client, on its server thread, until it leaves or the run ends."""
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
        handler.send_header("Cache-Control", "no-store")
        handler.send_header("Connection", "close")
        handler.end_headers()
        handler.close_connection = True
        q: queue.Queue = queue.Queue(CLIENT_QUEUE)
        drops = self._drops_now()
        with self._lock:
            if self._latest is not None:
                q.put(self._message(drops))
            if self._notice is not None:
                q.put(f"event: notice\ndata: {json.dumps({'text': self._notice})}\n\n".encode("utf-8"))
            self._clients.append(q)
        try:
            handler.wfile.write(b"retry: 1000\n\n")
            handler.wfile.flush()
            while not self._closed.is_set():
                try:
                    item = q.get(timeout=KEEPALIVE_S)
                except queue.Empty:
                    item = b": keep-alive\n\n"
                if item is _CLOSE:
                    handler.wfile.write(b"event: end\ndata: {}\n\n")
                    handler.wfile.flush()
                    break
                handler.wfile.write(item)
                handler.wfile.flush()
        except OSError:  # the page went away
            pass
        finally:
            with self._lock:
                if q in self._clients:
                    self._clients.remove(q)

    def _drops_now(self) -> dict:
        """The run's drops so far (outside the lock: ``run_stats`` may ask this sink too)."""
        try:
            return dict(self._run_stats().get("drops", {}))
        except Exception:  # counters are for show here; never fail an event over them
            return {}

    def _message(self, drops: dict) -> bytes:
        """The latest event, with the run's counters before it (called with the lock held)."""
        stats = {"events": self._events, "drops": {**drops, "http": self._dropped}}
        return (f"event: stats\ndata: {json.dumps(stats)}\n\n" f"data: {self._latest}\n\n").encode("utf-8")

    def send(self, event: dict) -> None:
        drops = self._drops_now()
        with self._lock:
            self._latest = encode_event(event)
            self._events += 1
            message = self._message(drops)
            for q in self._clients:
                try:
                    q.put_nowait(message)
                except queue.Full:  # a client that does not read: its oldest message goes
                    self._dropped += 1
                    try:
                        q.get_nowait()
                        q.put_nowait(message)
                    except (queue.Empty, queue.Full):
                        pass

    def notice(self, text: str) -> None:
        """A line for the person in front of the page (``edge-mer adapt``'s prompts): an SSE
        ``event: notice`` with ``{"text": ...}``; a page that connects later sees the latest one."""
        message = f"event: notice\ndata: {json.dumps({'text': text})}\n\n".encode("utf-8")
        with self._lock:
            self._notice = text
            for q in self._clients:
                try:
                    q.put_nowait(message)
                except queue.Full:
                    self._dropped += 1

    def drops(self) -> dict[str, int]:
        with self._lock:
            return {"http": self._dropped}

    def close(self, ok: bool = True) -> None:
        if self._closed.is_set():
            return
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        with self._lock:
            for q in self._clients:
                try:
                    q.put_nowait(_CLOSE)
                except queue.Full:
                    q.get_nowait()
                    q.put_nowait(_CLOSE)
        # Let the pages read the end marker, then stop.
        for _ in range(20):
            if not self.clients:
                break
            threading.Event().wait(0.05)
        self._closed.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2.0)


def broadcast_notice(text: str) -> int:
    """Show ``text`` on every dashboard this process serves; returns how many."""
    for sink in list(_ACTIVE):
        sink.notice(text)
    return len(_ACTIVE)
