"""Sinks: JSON Lines on a stream and into a file (written as FILE.partial, renamed at a clean end;
a symlink followed, a FIFO or device written directly, a second writer refused), the WebSocket server (a real client receives the events; bound to 127.0.0.1 by default), the
headless display error and the --record writer."""

from __future__ import annotations

import io
import json
import os
import queue
import socket
import stat
import threading
import time
import wave

import numpy as np
import pytest

from edge_mer.errors import DeviceError, EdgeMerError
from edge_mer.stream.sinks import JsonlFileSink, JsonlSink, Recorder, WebSocketSink, parse_ws_address
from edge_mer.stream.sources import AudioChunk, Frame

EVENTS = [{"window": i, "t_end": 2.0 + i / 2, "label": "happy", "probs": {"happy": 1.0}} for i in range(3)]


def test_jsonl_stream_one_object_per_line():
    buf = io.StringIO()
    sink = JsonlSink(buf)
    for e in EVENTS:
        sink.send(e)
    sink.close()
    assert [json.loads(line) for line in buf.getvalue().splitlines()] == EVENTS


def test_jsonl_file_appears_only_at_a_clean_end(tmp_path):
    out = tmp_path / "run" / "events.jsonl"
    sink = JsonlFileSink(out)
    sink.send(EVENTS[0])
    assert not out.exists() and (tmp_path / "run" / "events.jsonl.partial").exists()
    sink.close(ok=True)
    assert [json.loads(x) for x in out.read_text().splitlines()] == [EVENTS[0]]
    assert not (tmp_path / "run" / "events.jsonl.partial").exists()


def test_interrupted_run_leaves_no_file_under_the_final_name(tmp_path):
    out = tmp_path / "events.jsonl"
    sink = JsonlFileSink(out)
    sink.send(EVENTS[0])
    sink.close(ok=False)
    assert not out.exists() and (tmp_path / "events.jsonl.partial").exists()


def test_jsonl_file_on_a_directory_is_a_one_line_error(tmp_path):
    with pytest.raises(EdgeMerError, match="is a directory"):
        JsonlFileSink(tmp_path)


def test_out_onto_a_fifo_writes_it_line_by_line_and_leaves_it_a_fifo(tmp_path):
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    lines: queue.Queue = queue.Queue()

    def reader() -> None:
        with open(fifo, encoding="utf-8") as fh:
            for line in fh:
                lines.put(line)
        lines.put(None)

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    sink = JsonlFileSink(fifo)  # opening a FIFO waits for its reader
    sink.send(EVENTS[0])
    assert json.loads(lines.get(timeout=10)) == EVENTS[0]  # flushed per event, before the end
    for e in EVENTS[1:]:
        sink.send(e)
    sink.close(ok=True)
    got = [json.loads(line) for line in iter(lambda: lines.get(timeout=10), None)]
    thread.join(timeout=10)
    assert got == EVENTS[1:]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # not replaced by a regular file
    assert [p.name for p in tmp_path.iterdir()] == ["events.fifo"]  # no .partial beside it


def test_out_onto_a_symlink_writes_its_target_atomically(tmp_path):
    target = tmp_path / "store" / "events.jsonl"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "events.jsonl"
    link.symlink_to(target)
    sink = JsonlFileSink(link)
    sink.send(EVENTS[0])
    assert target.read_text() == "old\n" and (target.parent / "events.jsonl.partial").is_file()
    sink.close(ok=True)
    assert link.is_symlink() and os.readlink(link) == str(target)  # the link stays a link
    assert [json.loads(x) for x in target.read_text().splitlines()] == [EVENTS[0]]
    assert sorted(p.name for p in target.parent.iterdir()) == ["events.jsonl"]


def test_out_onto_dev_null_is_written_directly():
    sink = JsonlFileSink(os.devnull)
    if sink.partial is not None:  # (a sink that would rename a file over /dev/null: never let it)
        sink._fh.close()
        sink.partial.unlink()
        pytest.fail(f"--out {os.devnull} is written through {sink.partial}")
    for e in EVENTS:
        sink.send(e)
    sink.close(ok=True)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)


def test_a_second_writer_of_the_same_file_is_refused(tmp_path):
    out = tmp_path / "events.jsonl"
    first = JsonlFileSink(out)
    first.send(EVENTS[0])
    with pytest.raises(EdgeMerError, match="another run is writing it"):
        JsonlFileSink(out)
    with pytest.raises(EdgeMerError, match="another run is writing it"):
        JsonlFileSink(tmp_path / "." / "events.jsonl")  # the same file by another name
    first.send(EVENTS[1])
    first.close(ok=True)
    assert [json.loads(x) for x in out.read_text().splitlines()] == EVENTS[:2]  # the refused ones emptied nothing
    again = JsonlFileSink(out)  # the lock went with the first writer
    again.close(ok=True)
    assert out.read_text() == ""


def test_ws_address_parsing():
    assert parse_ws_address("8765", "127.0.0.1") == ("127.0.0.1", 8765)
    assert parse_ws_address("0.0.0.0:9000", "127.0.0.1") == ("0.0.0.0", 9000)
    for bad in ("http", "host:port", "70000"):
        with pytest.raises(EdgeMerError, match="--ws"):
            parse_ws_address(bad, "127.0.0.1")


def test_websocket_clients_receive_every_event():
    from websockets.sync.client import connect

    sink = WebSocketSink("127.0.0.1", 0)  # port 0: the OS picks a free one
    try:
        assert sink._server.sockets[0].getsockname()[0] == "127.0.0.1"
        with connect(f"ws://127.0.0.1:{sink.port}") as client:
            deadline = time.monotonic() + 5.0
            while not sink.clients and time.monotonic() < deadline:  # the server registers the client
                time.sleep(0.01)
            for e in EVENTS:
                sink.send(e)
            got = [json.loads(client.recv(timeout=5)) for _ in EVENTS]
        assert got == EVENTS
    finally:
        sink.close()


def test_websocket_port_in_use_is_a_device_error():
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        with pytest.raises(DeviceError, match="cannot listen"):
            WebSocketSink("127.0.0.1", busy.getsockname()[1])
    finally:
        busy.close()


def test_display_without_gui_is_a_device_error():
    cv2 = pytest.importorskip("cv2")
    from edge_mer.stream.display import Display

    try:
        cv2.namedWindow("probe")
        cv2.destroyWindow("probe")
        pytest.skip("this OpenCV has a GUI and a display")
    except cv2.error:
        pass
    with pytest.raises(DeviceError, match="--display: "):
        Display()


def test_display_picture_has_box_landmarks_and_bars():
    from edge_mer.stream.display import render

    frame = np.zeros((240, 320, 3), np.uint8)
    event = {"label": "happy", "probs": {"calm": 0.25, "happy": 0.75}, "modalities": ["face", "audio"],
             "latency_ms": 120.0}
    pic = render(frame, event, np.array([150, 60, 250, 200], np.float32), np.array([[200, 120], [210, 130]], np.float32))
    assert pic.shape == frame.shape and frame.max() == 0  # drawn on a copy
    assert pic[60, 150:250].any() and pic[60:200, 150].any()  # the box
    assert pic[120, 200].any()  # a landmark
    # bars proportional to the probabilities: happy's bar (row 2) is longer than calm's
    calm, happy = pic[18, 10:200].any(axis=1), pic[36, 10:200].any(axis=1)
    assert happy.sum() > calm.sum() > 0
    assert render(None, None, None, None).shape == (360, 480, 3)
    # one line per modality below the bars: drawn only when the event has them
    plain = render(frame, event, None, None)
    event["per_modality"] = {"face": {"calm": 0.1, "happy": 0.9}}
    event["reliability"] = {"face": 0.8}
    event["absent"] = {"text": "no words"}
    lines = render(frame, event, None, None)
    assert not plain[60:100, 10:300].any() and lines[60:100, 10:300].any()


def test_recorder_writes_frames_and_audio(tmp_path):
    rec = Recorder(tmp_path / "rec", 16000)
    rec.add(Frame(0.5, 7, np.full((24, 32, 3), 128, np.uint8)))
    rec.add(AudioChunk(0.0, 0, np.linspace(-1, 1, 1600, dtype=np.float32)))
    assert not (tmp_path / "rec" / "audio.wav").exists()  # only complete files carry the final name
    rec.close()
    [jpg] = (tmp_path / "rec" / "frames").iterdir()
    assert jpg.name == "000007_000000500.jpg"
    with wave.open(str(tmp_path / "rec" / "audio.wav")) as w:
        assert (w.getframerate(), w.getnframes(), w.getsampwidth()) == (16000, 1600, 2)


def test_a_run_that_fails_before_any_event_leaves_nothing(tmp_path):
    sink = JsonlFileSink(tmp_path / "events.jsonl")
    sink.close(ok=False)
    assert list(tmp_path.iterdir()) == []
