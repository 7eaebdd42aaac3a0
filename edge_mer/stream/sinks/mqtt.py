"""``--mqtt [user@]host[:port]/topic``: each event published as one JSON message (paho-mqtt).

The same JSON as every other sink, one message per event, on one topic, with ``--mqtt-qos``
(0, 1, 2; default 1) and ``--mqtt-retain`` (the broker keeps the latest event for new
subscribers). The password comes from the environment variable ``EDGE_MER_MQTT_PASSWORD``, never
from the command line (where ``ps`` would show it).

When the broker goes away the sink keeps the events in a bounded buffer (``--mqtt-buffer N``,
default 1000 events) and paho's network thread reconnects with back-off (1 s doubling to 30 s);
once it is back the buffered events are published in order. Past the buffer the oldest events are
dropped, and counted: ``--stats`` reports them as ``drops: mqtt N``, together with any events
still undelivered when the run ends (the sink waits up to a few seconds for them). With QoS 1 and 2
an event the broker has not acknowledged is sent again after a reconnect; with QoS 0 an event
written to the socket as the broker dies is lost without a trace (MQTT's "at most once").

>>> sink = MqttSink(parse_mqtt_address("127.0.0.1:1883/edge-mer/events"))   # doctest: +SKIP
>>> sink.send({"window": 0, "label": "happy"})                             # doctest: +SKIP
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import threading
import time
import uuid

from edge_mer.errors import DeviceError, EdgeMerError
from edge_mer.stream.sinks import Sink, encode_event

log = logging.getLogger(__name__)

PASSWORD_ENV = "EDGE_MER_MQTT_PASSWORD"
DEFAULT_PORT = 1883
DEFAULT_BUFFER = 1000
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30
FLUSH_S = 5.0  # at the end of a run, how long to wait for undelivered events
CONNECT_S = 10.0  # at start, how long to wait for the broker's answer


@dataclasses.dataclass(frozen=True)
class MqttAddress:
    host: str
    port: int
    topic: str
    user: str | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user + '@' if self.user else ''}{host}:{self.port}/{self.topic}"


def parse_mqtt_address(text: str) -> MqttAddress:
    """``[user@]host[:port]/topic``; the topic may have levels (``robot/1/emotion``), no wildcards.

    >>> parse_mqtt_address("ana@broker.local/lab/emotion")
    MqttAddress(host='broker.local', port=1883, topic='lab/emotion', user='ana')
    >>> parse_mqtt_address("[::1]:1884/e")
    MqttAddress(host='::1', port=1884, topic='e', user=None)
    """
    usage = f"--mqtt {text}: expected [USER@]HOST[:PORT]/TOPIC, e.g. 127.0.0.1:1883/edge-mer/events"
    address, slash, topic = text.partition("/")
    if not slash or not topic:
        raise EdgeMerError(f"{usage} (no topic)")
    if "+" in topic or "#" in topic or "\0" in topic:
        raise EdgeMerError(f"--mqtt {text}: the topic {topic!r} has a wildcard (+ or #) or NUL; publish needs a plain topic")
    user, at, hostport = address.rpartition("@")
    if at and not user:
        raise EdgeMerError(f"{usage} (empty user name)")
    if hostport.startswith("["):  # [IPv6]:port
        host, bracket, rest = hostport[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise EdgeMerError(usage)
        port_text = rest[1:] if rest else ""
    elif hostport.count(":") > 1:
        raise EdgeMerError(f"{usage} (write an IPv6 address in brackets: [::1]:1883)")
    else:
        host, _, port_text = hostport.partition(":")
    if not host:
        raise EdgeMerError(f"{usage} (no host)")
    port = DEFAULT_PORT
    if port_text:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise EdgeMerError(f"--mqtt {text}: port must be 1-65535")
        port = int(port_text)
    return MqttAddress(host, port, topic, user or None)


def _import_paho():
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise EdgeMerError("--mqtt needs the paho-mqtt package: pip install 'edge-mer[sinks]'") from None
    if not hasattr(mqtt, "CallbackAPIVersion"):
        raise EdgeMerError("--mqtt needs paho-mqtt 2 or newer: pip install 'edge-mer[sinks]'")
    return mqtt


class MqttSink(Sink):
    """Publishes each event to ``address.topic``; see the module's docstring for the buffer."""

    def __init__(self, address: MqttAddress, qos: int = 1, retain: bool = False, buffer: int = DEFAULT_BUFFER,
                 password: str | None = None) -> None:
        mqtt = _import_paho()
        if qos not in (0, 1, 2):
            raise EdgeMerError(f"--mqtt-qos {qos}: must be 0, 1 or 2")
        if buffer < 1:
            raise EdgeMerError(f"--mqtt-buffer {buffer}: must be at least 1 event")
        self.address, self.qos, self.retain, self.buffer = address, qos, retain, buffer
        self._cond = threading.Condition()
        self._pending: collections.deque[bytes] = collections.deque()  # not yet handed to paho
        self._handed = 0  # handed to paho ...
        self._done = 0  # ... and acknowledged (QoS 1/2) or written (QoS 0)
        self._dropped = 0
        self._connected = False
        self._closing = False
        self._connack: object | None = None  # the first CONNACK's reason code
        self._outage_since: float | None = None

        if password is None:
            password = os.environ.get(PASSWORD_ENV) or None
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edge-mer-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        if address.user:
            client.username_pw_set(address.user, password)
        elif password:
            log.warning("%s is set but --mqtt names no user (USER@HOST/TOPIC): the password is not sent", PASSWORD_ENV)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        # paho keeps QoS 1/2 messages until acknowledged; never more than our own buffer.
        client.max_queued_messages_set(buffer)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        try:
            client.connect(address.host, address.port, keepalive=15)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise DeviceError(f"--mqtt {address}: cannot reach the broker ({reason})") from None
        client.loop_start()
        with self._cond:
            self._cond.wait_for(lambda: self._connack is not None, timeout=CONNECT_S)
            connack = self._connack
        if connack is None or getattr(connack, "is_failure", False):
            client.loop_stop()
            client.disconnect()
            why = "no answer in %.0f s" % CONNECT_S if connack is None else f"refused: {connack}"
            raise DeviceError(f"--mqtt {address}: the broker did not accept the connection ({why})")
        self._worker = threading.Thread(target=self._publish_loop, name="mqtt-sink", daemon=True)
        self._worker.start()
        log.info("MQTT sink: publishing to %s (QoS %d%s)", address, qos, ", retained" if retain else "")

    # paho's network thread ------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            if self._connack is None:
                self._connack = reason_code
            ok = not reason_code.is_failure
            self._connected = ok
            if ok and self._outage_since is not None:
                log.warning("MQTT broker %s:%d is back after %.1f s; %d buffered events to publish",
                            self.address.host, self.address.port, time.monotonic() - self._outage_since,
                            len(self._pending))
                self._outage_since = None
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self._connected = False
            if not self._closing and self._outage_since is None:
                self._outage_since = time.monotonic()
                log.warning("MQTT broker %s:%d went away (%s): buffering up to %d events, reconnecting",
                            self.address.host, self.address.port, reason_code, self.buffer)
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self._done += 1
            self._cond.notify_all()

    # the sink's own thread --------------------------------------------------------------
    def _publish_loop(self) -> None:
        mqtt = _import_paho()
        topic = self.address.topic
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closing or (self._connected and self._pending and
                                                              self._handed - self._done < self.buffer))
                if not (self._connected and self._pending):
                    if self._closing:
                        return
                    continue
                payload = self._pending.popleft()
                self._handed += 1
            info = self._client.publish(topic, payload, qos=self.qos, retain=self.retain)
            if info.rc == mqtt.MQTT_ERR_SUCCESS:
                continue
            if info.rc == mqtt.MQTT_ERR_NO_CONN and self.qos > 0:
                continue  # paho keeps it and sends it after the reconnect
            with self._cond:  # not taken (QoS 0 while disconnected, paho's queue full): again soon
                self._handed -= 1
                self._pending.appendleft(payload)
                self._cond.wait(0.05)

    # the run's thread -------------------------------------------------------------------
    def send(self, event: dict) -> None:
        payload = encode_event(event).encode("utf-8")
        with self._cond:
            if len(self._pending) + (self._handed - self._done) >= self.buffer:
                if self._pending:
                    self._pending.popleft()  # the oldest goes: a reader wants the latest state
                    self._dropped += 1
                else:
                    self._dropped += 1  # everything buffered sits unacknowledged in paho
                    return
            self._pending.append(payload)
            self._cond.notify_all()

    @property
    def connected(self) -> bool:
        """Whether the broker is connected now (False during an outage)."""
        with self._cond:
            return self._connected

    def undelivered(self) -> int:
        with self._cond:
            return len(self._pending) + (self._handed - self._done)

    def drops(self) -> dict[str, int]:
        with self._cond:
            return {"mqtt": self._dropped}

    def close(self, ok: bool = True) -> None:
        if self._closing:
            return
        deadline = time.monotonic() + FLUSH_S
        with self._cond:
            self._cond.wait_for(lambda: not self._pending and self._handed == self._done,
                                timeout=max(0.0, deadline - time.monotonic()))
            self._closing = True
            left = len(self._pending) + (self._handed - self._done)
            self._pending.clear()
            self._dropped += left
            self._cond.notify_all()
        if left:
            log.warning("MQTT: %d events were never delivered to %s:%d (counted as drops)", left,
                        self.address.host, self.address.port)
        self._worker.join(timeout=2.0)
        self._client.disconnect()
        self._client.loop_stop()
