"""The network sinks against real peers: ``--mqtt`` with a real Mosquitto broker that the test
starts on 127.0.0.1 (and restarts mid-run), ``--osc`` with python-osc's real UDP server, and the
``--http`` dashboard's server with a real HTTP client (the page itself is driven in headless
Chromium by tests/test_dashboard_browser.py). No mocks: events come from real replays.
Skips with a reason when mosquitto, paho-mqtt or python-osc is absent."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from media_fixtures import make_speech
from run_fixtures import make_bundle

from conftest import REPO
from edge_mer.cli import main
from edge_mer.errors import DeviceError, EdgeMerError

SAMPLE = REPO / "samples" / "crema-d_1001_DFA_six_emotions.mp4"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
SPEECH = ("the door is open and the room is warm, we walked along the river until the evening came, "
          "then we sat by the fire and talked about the long summer and the friends we had not seen")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("b") / "audio", ["audio"], [["audio"]])


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return make_speech(tmp_path_factory.mktemp("s") / "speech.wav", SPEECH, rate_hz=16000)


def run(argv, capsys) -> tuple[int, str]:
    rc = main(["run", *argv])
    return rc, capsys.readouterr().err


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- addresses


def test_mqtt_address_forms():
    from edge_mer.stream.sinks.mqtt import MqttAddress, parse_mqtt_address

    assert parse_mqtt_address("localhost/e") == MqttAddress("localhost", 1883, "e")
    assert parse_mqtt_address("ana@10.0.0.2:8883/lab/room 1/emotion") == MqttAddress("10.0.0.2", 8883,
                                                                                       "lab/room 1/emotion", "ana")
    assert parse_mqtt_address("[::1]:1884/e").host == "::1"
    for bad in ("localhost", "localhost/", "h:0/e", "h:x/e", "@h/e", "h/a/+/b", "h/#", "::1/e", "/e"):
        with pytest.raises(EdgeMerError, match="--mqtt"):
            parse_mqtt_address(bad)


def test_osc_address_forms():
    from edge_mer.stream.sinks.osc import label_address, parse_osc_address

    assert parse_osc_address("127.0.0.1:9000") == ("127.0.0.1", 9000)
    assert parse_osc_address("[::1]:9000") == ("::1", 9000)
    for bad in ("9000", "h:", "h:0", "h:70000", "::1:9000", "[::1]"):
        with pytest.raises(EdgeMerError, match="--osc"):
            parse_osc_address(bad)
    assert label_address("very happy/sad") == "/edge-mer/prob/very_happy_sad"


@pytest.mark.parametrize("flags, needle", [
    (["--mqtt", "127.0.0.1"], "--mqtt 127.0.0.1: expected"),
    (["--mqtt", "127.0.0.1/e", "--mqtt-buffer", "0"], "--mqtt-buffer 0"),
    (["--mqtt-retain"], "need --mqtt"),
    (["--osc", "127.0.0.1"], "--osc 127.0.0.1: expected"),
    (["--osc", "nohost.invalid:9000"], "unknown host"),
    (["--http", "localhost:web"], "--http localhost:web: expected"),
])
def test_bad_sink_flags_are_one_line_config_errors(bundle, speech, capsys, flags, needle):
    rc, err = run(["--bundle", str(bundle), "--audio", str(speech), "--fast", *flags], capsys)
    lines = [x for x in err.splitlines() if x.startswith("edge-mer: error:")]
    assert rc == 2 and len(lines) == 1 and needle in lines[0], err


def test_http_port_in_use_is_a_one_line_device_error(bundle, speech, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        rc, err = run(["--bundle", str(bundle), "--audio", str(speech), "--fast",
                       "--http", str(busy.getsockname()[1])], capsys)
    assert rc == DeviceError.exit_code and "edge-mer: error: --http 127.0.0.1:" in err and "cannot listen" in err


def test_runtime_never_imports_the_sink_packages_unless_asked(bundle, speech, tmp_path):
    code = (f"from edge_mer.cli import main; import sys; "
            f"rc = main(['run', '--bundle', {str(bundle)!r}, '--audio', {str(speech)!r}, '--fast', "
            f"'--out', {str(tmp_path / 'e.jsonl')!r}, '--http', '0']); assert rc == 0; "
            f"bad = [m for m in sys.modules if m.split('.')[0] in ('paho', 'pythonosc', 'torch')]; "
            f"assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("flag, value, package", [("--mqtt", "127.0.0.1:1/e", "paho"),
                                                  ("--osc", "127.0.0.1:9", "pythonosc")])
def test_a_missing_sink_package_names_the_extra(bundle, speech, flag, value, package):
    # The package made unimportable (sys.modules[name] = None), as when it is not installed.
    code = (f"import sys; sys.modules[{package!r}] = None; from edge_mer.cli import main; "
            f"sys.exit(main(['run', '--bundle', {str(bundle)!r}, '--audio', {str(speech)!r}, '--fast', "
            f"{flag!r}, {value!r}]))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    errors = [x for x in proc.stderr.splitlines() if x.startswith("edge-mer: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "pip install 'edge-mer[sinks]'" in errors[0], proc.stderr


# --------------------------------------------------------------------------- MQTT


class Broker:
    """A real Mosquitto on 127.0.0.1:port, in-memory sessions saved across a graceful restart
    (so a persistent subscriber misses nothing while the broker is down)."""

    def __init__(self, root: Path) -> None:
        if not os.path.exists(MOSQUITTO):
            pytest.skip("needs the mosquitto broker (apt-get install mosquitto)")
        pytest.importorskip("paho.mqtt.client", reason="needs paho-mqtt (pip install 'edge-mer[sinks]')")
        self.port = free_port()
        self.conf = root / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {root}/\nlog_dest file {root}/mosquitto.log\nuser {getpass.getuser()}\n")
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                assert self.proc.poll() is None, "mosquitto exited at start"
                time.sleep(0.05)
        raise AssertionError("mosquitto never listened")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # saves the sessions to its database
            self.proc.wait(10)
        self.proc = None


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path)
    yield b
    b.stop()


class Subscriber:
    """A real paho client with a persistent session (clean_session False), QoS 1."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[dict, bool]] = []  # (event, retained)
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}", clean_session=False)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append((json.loads(m.payload), bool(m.retain)))
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10)

    def wait_for(self, n: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mqtt_one_json_message_per_event(broker, bundle, speech, tmp_path, capsys):
    sub = Subscriber(broker.port, "edge-mer/test")
    out = tmp_path / "e.jsonl"
    try:
        rc, err = run(["--bundle", str(bundle), "--audio", str(speech), "--fast", "--out", str(out),
                       "--mqtt", f"127.0.0.1:{broker.port}/edge-mer/test", "--mqtt-qos", "1", "--stats"], capsys)
        assert rc == 0, err
        saved = read_jsonl(out)
        sub.wait_for(len(saved))
    finally:
        sub.close()
    assert len(saved) >= 8
    assert [e for e, _ in sub.messages] == saved  # QoS 1 on a healthy connection: each once, in order
    assert "mqtt 0" in err


def test_mqtt_retain_and_qos0(broker, bundle, speech, tmp_path, capsys):
    out = tmp_path / "e.jsonl"
    rc, err = run(["--bundle", str(bundle), "--audio", str(speech), "--fast", "--out", str(out),
                   "--mqtt", f"127.0.0.1:{broker.port}/edge-mer/retained", "--mqtt-qos", "0", "--mqtt-retain"], capsys)
    assert rc == 0, err
    # A subscriber that comes after the run gets the broker's retained copy of the last event.
    late = Subscriber(broker.port, "edge-mer/retained")
    late.wait_for(1, timeout=10)
    late.close()
    assert late.messages == [(read_jsonl(out)[-1], True)]


def test_mqtt_broker_restart_mid_run_loses_nothing(broker, bundle, speech, tmp_path, capsys, caplog):
    """Real-speed replay; the broker is stopped after the first event and started again 2 s
    later. The events of the outage wait in the sink's buffer and arrive after the reconnect."""
    sub = Subscriber(broker.port, "edge-mer/restart")
    out = tmp_path / "e.jsonl"
    result: dict = {}
    argv = ["run", "--bundle", str(bundle), "--audio", str(speech), "--out", str(out), "--stats",
            "--mqtt", f"127.0.0.1:{broker.port}/edge-mer/restart", "--mqtt-qos", "1"]
    thread = threading.Thread(target=lambda: result.setdefault("rc", main(argv)))
    thread.start()
    try:
        sub.wait_for(1, timeout=30)
        assert sub.messages, "no event before the restart"
        broker.stop()
        time.sleep(2.0)
        broker.start()
        thread.join(60)
        assert not thread.is_alive()
        saved = read_jsonl(out)
        sub.wait_for(len(saved), timeout=20)
    finally:
        sub.close()
    err = capsys.readouterr().err
    assert result["rc"] == 0, err
    # Some events fell inside the outage: their windows ended while the broker was down.
    assert len(saved) >= 8 and "went away" in caplog.text, caplog.text
    back = [r.getMessage() for r in caplog.records if "is back after" in r.getMessage()]
    assert back and " 0 buffered events" not in back[0], back
    got = [e for e, _ in sub.messages]
    # QoS 1 is "at least once": an event in flight when the broker died may come twice, never lost.
    firsts = list({e["window"]: e for e in got}.values())
    assert sorted(firsts, key=lambda e: e["window"]) == saved, (len(got), len(saved))
    assert "mqtt 0" in err


def test_mqtt_outage_beyond_the_buffer_drops_the_oldest_and_counts_them(broker, tmp_path):
    from edge_mer.stream.sinks.mqtt import MqttSink, parse_mqtt_address

    sub = Subscriber(broker.port, "edge-mer/buffer")
    sink = MqttSink(parse_mqtt_address(f"127.0.0.1:{broker.port}/edge-mer/buffer"), qos=1, buffer=3)
    try:
        sink.send({"window": 0})
        sub.wait_for(1)
        broker.stop()
        deadline = time.monotonic() + 10
        while sink.connected and time.monotonic() < deadline:  # paho's thread sees the socket close
            time.sleep(0.02)
        assert not sink.connected
        for i in range(1, 11):  # ten events while the broker is away; the buffer holds three
            sink.send({"window": i})
        assert sink.undelivered() == 3 and sink.drops() == {"mqtt": 7}
        broker.start()
        sub.wait_for(4)
        sink.close()
    finally:
        sub.close()
    assert [e["window"] for e, _ in sub.messages] == [0, 8, 9, 10]
    assert sink.drops() == {"mqtt": 7}


def test_mqtt_broker_gone_at_the_end_counts_the_undelivered(broker):
    from edge_mer.stream.sinks import mqtt as mqtt_sink

    sink = mqtt_sink.MqttSink(mqtt_sink.parse_mqtt_address(f"127.0.0.1:{broker.port}/edge-mer/end"), qos=1)
    broker.stop()
    while sink.connected:
        time.sleep(0.02)
    sink.send({"window": 0})
    sink.send({"window": 1})
    closing = threading.Thread(target=sink.close, daemon=True)
    closing.start()
    closing.join(timeout=120)  # a hang guard, not a speed figure: close() gives up after its FLUSH_S
    assert not closing.is_alive(), "close() waits for ever for a broker that is gone"
    assert sink.drops() == {"mqtt": 2}


def test_mqtt_unreachable_broker_at_start_is_a_one_line_error(bundle, speech, capsys):
    pytest.importorskip("paho.mqtt.client", reason="needs paho-mqtt (pip install 'edge-mer[sinks]')")
    port = free_port()  # nothing listens there
    rc, err = run(["--bundle", str(bundle), "--audio", str(speech), "--fast", "--mqtt", f"127.0.0.1:{port}/e"], capsys)
    lines = [x for x in err.splitlines() if x.startswith("edge-mer: error:")]
    assert rc == DeviceError.exit_code and len(lines) == 1 and "cannot reach the broker" in lines[0], err


def test_mqtt_password_comes_from_the_environment(tmp_path, monkeypatch):
    if not os.path.exists(MOSQUITTO):
        pytest.skip("needs the mosquitto broker (apt-get install mosquitto)")
    pytest.importorskip("paho.mqtt.client", reason="needs paho-mqtt")
    from edge_mer.stream.sinks.mqtt import MqttSink, parse_mqtt_address

    passwd = tmp_path / "passwd"
    if not shutil.which("mosquitto_passwd"):
        pytest.skip("needs mosquitto_passwd (Debian package mosquitto)")
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwd), "robot", "s3cret"], check=True, capture_output=True)
    port = free_port()
    conf = tmp_path / "auth.conf"
    # As root mosquitto drops to user "mosquitto", who cannot read pytest's private tmp dir: stay.
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
                    f"user {getpass.getuser()}\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        address = parse_mqtt_address(f"robot@127.0.0.1:{port}/e")
        monkeypatch.setenv("EDGE_MER_MQTT_PASSWORD", "wrong")
        with pytest.raises(DeviceError, match="did not accept the connection"):
            MqttSink(address)
        monkeypatch.setenv("EDGE_MER_MQTT_PASSWORD", "s3cret")
        sink = MqttSink(address)
        sink.send({"window": 0})
        sink.close()
        assert sink.drops() == {"mqtt": 0}
    finally:
        proc.terminate()
        proc.wait(10)


# --------------------------------------------------------------------------- OSC


def test_osc_messages_reach_a_real_udp_receiver(bundle, speech, tmp_path, capsys):
    pytest.importorskip("pythonosc", reason="needs python-osc (pip install 'edge-mer[sinks]')")
    from pythonosc.dispatcher import Dispatcher
    from pythonosc.osc_server import ThreadingOSCUDPServer

    received: list[tuple[str, tuple]] = []
    dispatcher = Dispatcher()
    dispatcher.set_default_handler(lambda address, *args: received.append((address, args)))
    server = ThreadingOSCUDPServer(("127.0.0.1", 0), dispatcher)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    out = tmp_path / "e.jsonl"
    try:
        rc, err = run(["--bundle", str(bundle), "--audio", str(speech), "--fast", "--out", str(out),
                       "--osc", f"127.0.0.1:{port}", "--stats"], capsys)
        assert rc == 0, err
        saved = read_jsonl(out)
        per_event = 4 + len(saved[0]["probs"]) + 1  # window, t_end, probs, label, modalities, latency
        deadline = time.monotonic() + 10
        while len(received) < per_event * len(saved) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        server.shutdown()
        server.server_close()
    assert "osc 0" in err
    # Loopback UDP with a reader that keeps up: every message, and per event in the sender's order
    # (a threading server may hand two datagrams to its threads out of order, so group by window).
    assert len(received) == per_event * len(saved)
    windows = [args[0] for address, args in received if address == "/edge-mer/window"]
    assert sorted(windows) == [e["window"] for e in saved]
    labels = [args for address, args in received if address == "/edge-mer/label"]
    assert sorted(labels) == sorted((e["label"],) for e in saved)
    for label in saved[0]["probs"]:
        got = sorted(args[0] for address, args in received if address == f"/edge-mer/prob/{label}")
        want = sorted(e["probs"][label] for e in saved)
        assert got == pytest.approx(want, abs=1e-6)  # OSC floats are 32-bit
    mods = [args for address, args in received if address == "/edge-mer/modalities"]
    assert all(m == ("audio",) for m in mods) and len(mods) == len(saved)


def test_osc_event_without_probabilities():
    pytest.importorskip("pythonosc", reason="needs python-osc")
    from edge_mer.stream.sinks.osc import OscSink

    sink = OscSink("127.0.0.1", free_port(socket.SOCK_DGRAM))
    msgs = sink.messages({"window": 3, "t_end": 3.5, "label": None, "probs": None, "modalities": []})
    sink.send({"window": 3, "label": None, "probs": None, "modalities": []})  # nobody listens: fine
    sink.close()
    assert msgs == [("/edge-mer/window", [3]), ("/edge-mer/t_end", [3.5]), ("/edge-mer/label", [""]),
                    ("/edge-mer/modalities", [])]


# --------------------------------------------------------------------------- the dashboard's server


def test_dashboard_server_page_latest_and_event_stream():
    import http.client

    from edge_mer.stream.sinks.http import HttpSink

    sink = HttpSink("127.0.0.1", 0, lambda: {"drops": {"windows": 2}})
    try:
        page = urllib.request.urlopen(sink.url, timeout=5).read().decode()
        assert "<canvas" in page and "EventSource" in page
        # Self-contained: nothing is loaded from anywhere else.
        assert "<script src" not in page and "<link" not in page and "@import" not in page and "url(" not in page
        assert json.loads(urllib.request.urlopen(sink.url + "latest", timeout=5).read()) is None
        sink.send({"window": 0, "label": "happy"})
        conn = http.client.HTTPConnection("127.0.0.1", sink.port, timeout=5)
        conn.request("GET", "/events")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/event-stream")

        def read_data() -> list[str]:
            lines = []
            while True:
                line = resp.fp.readline().decode().rstrip("\n")
                if not line:
                    if lines:
                        return lines
                    continue
                lines.append(line)

        assert read_data() == ["retry: 1000"]
        stats = read_data()  # the latest event first, for a page that connects mid-run
        assert stats[0] == "event: stats" and json.loads(stats[1][6:]) == {"events": 1, "drops": {"windows": 2, "http": 0}}
        assert json.loads(read_data()[0][6:]) == {"window": 0, "label": "happy"}
        sink.send({"window": 1, "label": "sad"})
        read_data()
        assert json.loads(read_data()[0][6:]) == {"window": 1, "label": "sad"}
        assert json.loads(urllib.request.urlopen(sink.url + "latest", timeout=5).read())["window"] == 1
        assert sink.clients == 1
    finally:
        sink.close()
    assert read_data() == ["event: end", "data: {}"]
    with pytest.raises(OSError):
        urllib.request.urlopen(sink.url, timeout=2)


def test_dashboard_non_loopback_bind_warns(caplog):
    from edge_mer.stream.sinks.http import HttpSink

    with caplog.at_level("WARNING"):
        sink = HttpSink("0.0.0.0", 0)
    sink.close()
    assert "reachable from the network" in caplog.text


def test_websocket_non_loopback_bind_warns_and_loopback_does_not(caplog):
    pytest.importorskip("websockets")
    from edge_mer.stream.sinks import WebSocketSink

    with caplog.at_level("WARNING"):
        sink = WebSocketSink("127.0.0.1", 0)
    sink.close()
    assert "reachable from the network" not in caplog.text
    with caplog.at_level("WARNING"):
        sink = WebSocketSink("0.0.0.0", 0)
    sink.close()
    assert "WebSocket sink listens on 0.0.0.0" in caplog.text and "reachable from the network" in caplog.text
