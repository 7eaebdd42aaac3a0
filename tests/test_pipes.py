"""``edge-mer run`` reading a stream: a FIFO (``mkfifo``) or ``-`` (the standard input) as
``--audio``/``--video``. A streamable container (WAV, Matroska, MPEG-TS) gives the same events as
the file replay (the stream is opened once: what FFmpeg read while probing is decoded, nothing is
read twice or lost); an MP4 whose index is at its end, an empty stream and a terminal say in one
line that they cannot be read (exit 3); a run waiting for a FIFO's writer, or stalled on a silent
writer, ends at SIGTERM with 143.

Real processes, real speech (a RAVDESS clip when ../shared/data is present, else espeak-ng speech),
real FFmpeg decoding and a small real bundle (tests/run_fixtures.py); nothing is mocked."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import pytest
from media_fixtures import make_speech
from run_fixtures import make_bundle

from conftest import REPO, SHARED_DATA

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
RAVDESS_CLIP = SHARED_DATA / "ravdess" / "audio_speech" / "Actor_01" / "03-01-05-02-01-01-01.flac"  # angry, 3.7 s
SAMPLE = REPO / "samples" / "crema-d_1001_DFA_six_emotions.mp4"


def _ffmpeg(*args: str) -> None:
    if shutil.which("ffmpeg") is None:
        pytest.skip("needs ffmpeg to write the recordings in each container")
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("b") / "audio", ["audio"], [["audio"]])


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """The same speech as WAV, Matroska (Opus), MPEG-TS (AAC) and MP4 (AAC) with its index at the
    end (FFmpeg's default) and at the front (faststart)."""
    root = tmp_path_factory.mktemp("media")
    out = {"wav": root / "speech.wav"}
    if RAVDESS_CLIP.is_file():
        _ffmpeg("-i", str(RAVDESS_CLIP), "-c:a", "pcm_s16le", str(out["wav"]))
    else:  # no shared data here: generated speech instead of the actor's
        make_speech(out["wav"], "kids are talking by the door, dogs are sitting by the door", 48000)
    for name, args in {"mkv": ["-c:a", "libopus"], "ts": ["-c:a", "aac", "-f", "mpegts"],
                       "mp4-index-at-end": ["-c:a", "aac"],
                       "mp4-faststart": ["-c:a", "aac", "-movflags", "+faststart"]}.items():
        out[name] = root / f"speech.{name}.{'mp4' if name.startswith('mp4') else name}"
        _ffmpeg("-i", str(out["wav"]), *args, str(out[name]))
    return out


def _cmd(bundle: Path, flag: str, source: str | Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "edge_mer", "run", "--bundle", str(bundle), flag, str(source),
            "--set", "runtime.threads=1", *args]


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def _same(a: list[dict], b: list[dict]) -> None:
    """The same events but for their latency (a wall-clock measure)."""
    strip = [{k: v for k, v in e.items() if k != "latency_ms"} for e in a], \
            [{k: v for k, v in e.items() if k != "latency_ms"} for e in b]
    assert strip[0] == strip[1]


def _replay(bundle: Path, path: Path, flag: str = "--audio") -> list[dict]:
    proc = subprocess.run(_cmd(bundle, flag, path, "--fast"), capture_output=True, text=True, cwd=REPO, env=ENV,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    events = _events(proc.stdout)
    assert len(events) >= 3, "the recording is long enough for several windows"
    return events


class FifoWriter(threading.Thread):
    """Writes ``data`` into a FIFO once a reader has opened it, ``chunk`` bytes at a time with
    ``pause_s`` between chunks (a live-like writer when > 0), then holds it open ``hold_s`` more
    seconds (a writer gone silent) and closes it. Gives up when ``proc`` ends first."""

    def __init__(self, fifo: Path, data: bytes, chunk: int = 1 << 16, pause_s: float = 0.0, hold_s: float = 0.0):
        super().__init__(daemon=True)
        self.fifo, self.data, self.chunk, self.pause_s, self.hold_s = fifo, data, chunk, pause_s, hold_s
        self.proc: subprocess.Popen | None = None
        self.written = 0
        self.done = threading.Event()
        self.held_to_the_end = False  # the hold ran out (the reader had not gone before it)

    def run(self) -> None:
        deadline = time.monotonic() + 120
        while True:  # O_NONBLOCK: ENXIO until a reader has it open (a blocking open could wait for ever)
            try:
                fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO or time.monotonic() > deadline or \
                        (self.proc is not None and self.proc.poll() is not None):
                    return
                time.sleep(0.01)
        os.set_blocking(fd, True)
        try:
            for i in range(0, len(self.data), self.chunk):
                self.written += os.write(fd, self.data[i : i + self.chunk])
                if self.pause_s:
                    time.sleep(self.pause_s)
            end = time.monotonic() + self.hold_s
            while time.monotonic() < end and not self.done.is_set():
                time.sleep(0.02)
            self.held_to_the_end = not self.done.is_set()
        except BrokenPipeError:
            pass  # the reader went away
        finally:
            os.close(fd)


def _run_with_fifo(cmd: list[str], writer: FifoWriter, timeout_s: float = 180) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV)
    writer.proc = proc
    writer.start()
    try:
        out, err = proc.communicate(timeout=timeout_s)
    finally:
        if proc.poll() is None:
            proc.kill()
        writer.done.set()
        writer.join(timeout=10)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.parametrize("kind", ["wav", "mkv", "ts"])
def test_a_fifo_gives_the_events_of_the_file(bundle, media, tmp_path, kind):
    expected = _replay(bundle, media[kind])
    fifo = tmp_path / f"in.{kind}"
    os.mkfifo(fifo)
    proc = _run_with_fifo(_cmd(bundle, "--audio", fifo, "--fast"), FifoWriter(fifo, media[kind].read_bytes()))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "empty" not in proc.stderr, proc.stderr
    _same(_events(proc.stdout), expected)


def test_a_live_like_fifo_at_real_speed(bundle, media, tmp_path):
    # A writer delivering the WAV at about twice real speed, read at real speed (no --fast): the
    # run follows the stream as it arrives and gives the file's windows, none dropped.
    data = media["wav"].read_bytes()
    expected = _replay(bundle, media["wav"])
    fifo = tmp_path / "live.wav"
    os.mkfifo(fifo)
    with wave.open(str(media["wav"])) as w:
        chunk = int(w.getframerate() * w.getnchannels() * w.getsampwidth() * 0.1)  # 0.1 s of sound
    proc = _run_with_fifo(_cmd(bundle, "--audio", fifo, "--stats"), FifoWriter(fifo, data, chunk, pause_s=0.05))
    assert proc.returncode == 0, proc.stderr
    events = _events(proc.stdout)
    assert [e["window"] for e in events] == [e["window"] for e in expected]
    assert [e["label"] for e in events] == [e["label"] for e in expected]
    assert "drops: windows 0" in proc.stderr, proc.stderr


@pytest.mark.parametrize("kind", ["wav", "ts"])
def test_stdin_as_a_pipe_gives_the_events_of_the_file(bundle, media, kind):
    expected = _replay(bundle, media[kind])
    proc = subprocess.run(_cmd(bundle, "--audio", "-", "--fast"), input=media[kind].read_bytes(), capture_output=True,
                          cwd=REPO, env=ENV, timeout=180)
    assert proc.returncode == 0, proc.stderr.decode()
    _same(_events(proc.stdout.decode()), expected)


def test_a_video_on_stdin(bundle, tmp_path):
    # The bundled sample (H.264 + AAC) remuxed into MPEG-TS, as a camera pipeline would send it.
    ts = tmp_path / "sample.ts"
    _ffmpeg("-i", str(SAMPLE), "-c", "copy", "-f", "mpegts", str(ts))
    expected = _replay(bundle, ts, "--video")
    proc = subprocess.run(_cmd(bundle, "--video", "-", "--fast"), input=ts.read_bytes(), capture_output=True,
                          cwd=REPO, env=ENV, timeout=180)
    assert proc.returncode == 0, proc.stderr.decode()
    _same(_events(proc.stdout.decode()), expected)


def test_stdin_redirected_from_a_file_is_that_file(bundle, media):
    # `< clip.mp4` is a regular file on stdin: seekable, so even an MP4 with its index at the end reads.
    expected = _replay(bundle, media["mp4-index-at-end"])
    with open(media["mp4-index-at-end"], "rb") as fh:
        proc = subprocess.run(_cmd(bundle, "--audio", "-", "--fast"), stdin=fh, capture_output=True, text=True,
                              cwd=REPO, env=ENV, timeout=180)
    assert proc.returncode == 0, proc.stderr
    _same(_events(proc.stdout), expected)


def test_an_mp4_with_its_index_at_the_end_cannot_be_piped(bundle, media, tmp_path):
    data = media["mp4-index-at-end"].read_bytes()
    piped = subprocess.run(_cmd(bundle, "--audio", "-", "--fast"), input=data, capture_output=True, cwd=REPO,
                           env=ENV, timeout=180)
    fifo = tmp_path / "clip.mp4"
    os.mkfifo(fifo)
    via_fifo = _run_with_fifo(_cmd(bundle, "--audio", fifo, "--fast"), FifoWriter(fifo, data))
    for proc, name in ((piped, "stdin"), (via_fifo, str(fifo))):
        err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode()
        assert proc.returncode == 3, err
        lines = err.strip().splitlines()
        assert len(lines) == 1, err
        assert lines[0].startswith(f"edge-mer: error: {name}: an MP4/MOV whose index (moov atom) is at its end "
                                   "cannot be read from a pipe or FIFO"), lines[0]
        assert "-movflags +faststart" in lines[0] and "MPEG-TS" in lines[0], lines[0]
        assert not proc.stdout
    # The same audio with its index first streams, and gives the file's events.
    proc = subprocess.run(_cmd(bundle, "--audio", "-", "--fast"), input=media["mp4-faststart"].read_bytes(),
                          capture_output=True, cwd=REPO, env=ENV, timeout=180)
    assert proc.returncode == 0, proc.stderr.decode()
    _same(_events(proc.stdout.decode()), _replay(bundle, media["mp4-faststart"]))


@pytest.mark.parametrize("how", ["stdin", "fifo", "dev-null"])
def test_an_empty_stream_is_one_line(bundle, tmp_path, how):
    out = tmp_path / "events.jsonl"
    if how == "stdin":
        proc = subprocess.run(_cmd(bundle, "--audio", "-", "--fast", "--out", str(out)), input=b"",
                              capture_output=True, text=False, cwd=REPO, env=ENV, timeout=120)
        name = "stdin"
    elif how == "fifo":
        fifo = tmp_path / "silent.wav"
        os.mkfifo(fifo)
        proc = _run_with_fifo(_cmd(bundle, "--audio", fifo, "--fast", "--out", str(out)), FifoWriter(fifo, b""))
        name = str(fifo)
    else:  # a character device that reads as nothing
        proc = subprocess.run(_cmd(bundle, "--audio", "/dev/null", "--fast", "--out", str(out)), capture_output=True,
                              cwd=REPO, env=ENV, timeout=120)
        name = "/dev/null"
    err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode()
    assert proc.returncode == 3, err
    assert err.strip().splitlines() == [f"edge-mer: error: {name}: empty stream (its writer sent nothing)"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if how != "fifo" else ["silent.wav"])
    assert os.path.exists("/dev/null") and not Path("/dev/null").is_file()  # still the device


def test_sigterm_while_waiting_for_a_fifo_writer(bundle, tmp_path):
    # Nobody opens the FIFO for writing: the run waits in its start-up, and a stop ends it there.
    fifo = tmp_path / "nobody.wav"
    os.mkfifo(fifo)
    out = tmp_path / "events.jsonl"
    proc = subprocess.Popen(_cmd(bundle, "--audio", fifo, "--out", str(out)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV)
    time.sleep(3.0)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines() == [
        "edge-mer: stopped by SIGTERM during start-up, before the first event (exit 143)"], stderr
    assert stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nobody.wav"]  # no events file, no .partial


def test_sigterm_with_a_writer_gone_silent(bundle, media, tmp_path):
    # The writer sends 3 s of speech, then holds the FIFO open without a byte more: the reader
    # thread waits on the stream, and SIGTERM still ends the run at once, its events finalised.
    data = media["wav"].read_bytes()
    fifo = tmp_path / "stalled.wav"
    os.mkfifo(fifo)
    out = tmp_path / "events.jsonl"
    writer = FifoWriter(fifo, data[: int(len(data) * 0.75)], hold_s=120)
    proc = subprocess.Popen(_cmd(bundle, "--audio", fifo, "--fast", "--out", str(out)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV)
    writer.proc = proc
    writer.start()
    try:
        partial = tmp_path / "events.jsonl.partial"
        deadline = time.monotonic() + 120
        while not (partial.is_file() and partial.read_text().count("\n") >= 1):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        time.sleep(1.0)  # everything sent is processed; the run now waits on the silent writer
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)  # a run blocked on the writer would wait out its 120 s hold
        held_when_stopped = writer.is_alive() and not writer.held_to_the_end
    finally:
        if proc.poll() is None:
            proc.kill()
        writer.done.set()
        writer.join(timeout=10)
    assert proc.returncode == 143, stderr
    assert held_when_stopped, "the run ended only when the writer let go of the FIFO, not on SIGTERM"
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert events and [e["window"] for e in events] == list(range(len(events)))
    plural = "s" if len(events) != 1 else ""
    assert stderr.strip().splitlines() == [f"edge-mer: stopped by SIGTERM after {len(events)} event{plural} (exit 143)"], \
        stderr
    assert not partial.exists()
