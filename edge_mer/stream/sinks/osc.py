"""``--osc host:port``: each event as Open Sound Control messages over UDP (python-osc).

For TouchDesigner, Max/MSP, Pure Data, SuperCollider, Unity or Processing, which read OSC
natively. Per event, in this order:

============================  ==========================  ====================================
address                       arguments                   meaning
============================  ==========================  ====================================
``/edge-mer/window``          int                         the window's number (0, 1, ...)
``/edge-mer/t_end``           float                       the window's end, seconds of stream
``/edge-mer/prob/<label>``    float                       one per label: its probability (only
                                                          when a modality was read)
``/edge-mer/label``           string                      the label, ``""`` when no modality was
                                                          read (no face, no speech)
``/edge-mer/modalities``      strings (zero or more)      the modalities the label came from
``/edge-mer/latency_ms``      float                       capture (or dequeue) to emit
============================  ==========================  ====================================

A label's characters that OSC addresses cannot hold (space, ``#*,/?[]{}``) become ``_``.
UDP is fire and forget: nothing tells the sender whether anybody listens, so a send that fails
(the network is down) is counted as a drop (``drops: osc N``) and the run goes on.

>>> sink = OscSink(*parse_osc_address("127.0.0.1:9000"))      # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
import socket

from edge_mer.errors import DeviceError, EdgeMerError
from edge_mer.stream.sinks import Sink

log = logging.getLogger(__name__)

PREFIX = "/edge-mer"
_NOT_IN_ADDRESS = re.compile(r"[\s#*,/?\[\]{}]")


def parse_osc_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9000`` for IPv6); the port is required (OSC has no standard one).

    >>> parse_osc_address("127.0.0.1:9000")
    ('127.0.0.1', 9000)
    """
    usage = f"--osc {text}: expected HOST:PORT, e.g. 127.0.0.1:9000"
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise EdgeMerError(usage)
        port = rest[1:]
    else:
        host, colon, port = text.rpartition(":")
        if not colon or ":" in host:
            raise EdgeMerError(usage)
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise EdgeMerError(usage + " (port 1-65535)")
    return host, int(port)


def label_address(label: str) -> str:
    """``/edge-mer/prob/<label>`` with characters OSC cannot hold replaced.

    >>> label_address("very happy")
    '/edge-mer/prob/very_happy'
    """
    return f"{PREFIX}/prob/{_NOT_IN_ADDRESS.sub('_', label)}"


class OscSink(Sink):
    """Sends each event to ``host:port`` as the messages listed in the module's docstring."""

    def __init__(self, host: str, port: int) -> None:
        try:
            from pythonosc.osc_message_builder import OscMessageBuilder
        except ImportError:
            raise EdgeMerError("--osc needs the python-osc package: pip install 'edge-mer[sinks]'") from None
        self._builder = OscMessageBuilder
        try:
            family, kind, proto, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        except socket.gaierror as exc:
            raise EdgeMerError(f"--osc {host}:{port}: unknown host ({exc.strerror})") from None
        try:
            self._sock = socket.socket(family, kind, proto)
        except OSError as exc:
            raise DeviceError(f"--osc {host}:{port}: cannot open a UDP socket ({exc.strerror})") from None
        self.host, self.port, self._to = host, port, sockaddr
        self._dropped = 0
        self._warned = False
        log.info("OSC sink: sending to %s:%d", host, port)

    def messages(self, event: dict) -> list[tuple[str, list]]:
        """The (address, arguments) pairs an event becomes."""
        out: list[tuple[str, list]] = [(f"{PREFIX}/window", [int(event.get("window", 0))])]
        if event.get("t_end") is not None:
            out.append((f"{PREFIX}/t_end", [float(event["t_end"])]))
        for label, p in (event.get("probs") or {}).items():
            out.append((label_address(label), [float(p)]))
        out.append((f"{PREFIX}/label", [event.get("label") or ""]))
        out.append((f"{PREFIX}/modalities", [str(m) for m in event.get("modalities") or []]))
        if event.get("latency_ms") is not None:
            out.append((f"{PREFIX}/latency_ms", [float(event["latency_ms"])]))
        return out

    def _encode(self, address: str, args: list) -> bytes:
        builder = self._builder(address=address)
        for value in args:
            kind = "i" if isinstance(value, int) else "f" if isinstance(value, float) else "s"
            builder.add_arg(value, kind)
        return builder.build().dgram

    def send(self, event: dict) -> None:
        try:
            for address, args in self.messages(event):
                self._sock.sendto(self._encode(address, args), self._to)
        except OSError as exc:
            self._dropped += 1
            if not self._warned:
                self._warned = True
                log.warning("OSC: cannot send to %s:%d (%s); events are dropped while it lasts",
                            self.host, self.port, exc.strerror or exc)

    def drops(self) -> dict[str, int]:
        return {"osc": self._dropped}

    def close(self, ok: bool = True) -> None:
        self._sock.close()
