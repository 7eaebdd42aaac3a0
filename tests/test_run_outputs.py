"""``edge-mer run`` as a process and its outputs: a second run onto the same ``--out`` is refused
(one line, exit 2, the first run's file whole); SIGINT, SIGTERM and SIGHUP end a real-speed replay
the same way (the ``--out`` file finalised with the events so far, ``--stats`` printed, exit 130,
143, 129); ``--ws 0`` says on stderr which address it bound, and a client there gets the events.
Real processes, a real generated recording and a small real bundle; nothing is mocked."""

from __future__ import annotations

import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from media_fixtures import make_speech
from run_fixtures import make_bundle

from conftest import REPO

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
WINDOWS = 6  # of the 4.7 s recording below: 2 s windows every 0.5 s


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("b") / "audio", ["audio"], [["audio"]])


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    return make_speech(tmp_path_factory.mktemp("s") / "speech.wav",
                       "one two three four five six seven eight nine ten eleven twelve thirteen", 16000)


def _cmd(bundle: Path, speech: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "edge_mer", "run", "--bundle", str(bundle), "--audio", str(speech),
            "--set", "runtime.threads=1", *args]


def _default_signals() -> None:
    """In the child: the stop signals at their default disposition, whatever pytest inherited (a
    suite started under nohup ignores SIGHUP, and the run rightly keeps an ignored signal ignored:
    see the nohup test below)."""
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _start(bundle: Path, speech: Path, *args: str, inherit_signals: bool = False) -> subprocess.Popen:
    return subprocess.Popen(_cmd(bundle, speech, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=REPO, env=ENV, text=True, preexec_fn=None if inherit_signals else _default_signals)


def _wait_for(condition, proc: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) first: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("timed out")
        time.sleep(0.02)


def _lines(path: Path) -> int:
    return path.read_text().count("\n") if path.is_file() else 0


def test_a_second_run_onto_the_same_out_is_refused(bundle, speech, tmp_path):
    out = tmp_path / "events.jsonl"
    partial = tmp_path / "events.jsonl.partial"
    first = _start(bundle, speech, "--out", str(out))  # real speed: about 5 s of writing
    try:
        _wait_for(partial.exists, first)
        second = subprocess.run(_cmd(bundle, speech, "--fast", "--out", str(out)), capture_output=True, text=True,
                                cwd=REPO, env=ENV, timeout=120)
        assert first.poll() is None, "the first run ended before the second tried: nothing was tested"
    finally:
        _, first_err = first.communicate(timeout=120)
    assert second.returncode == 2, second.stderr
    errors = second.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"edge-mer: error: --out {out}: another run is writing it"), errors
    assert second.stdout == ""
    assert first.returncode == 0, first_err
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["window"] for e in events] == list(range(WINDOWS))  # one run's events, whole, not interleaved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "events.jsonl.run_config.toml"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_ends_the_run_with_its_events_so_far(bundle, speech, tmp_path, sig):
    out = tmp_path / "events.jsonl"
    partial = tmp_path / "events.jsonl.partial"
    proc = _start(bundle, speech, "--out", str(out), "--stats")  # real speed, no --fast
    _wait_for(lambda: _lines(partial) >= 1, proc)  # the first event is written
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err, err
    assert out.is_file() and not partial.exists()  # finalised under its name
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert 1 <= len(events) < WINDOWS, "the run went on to the end of the recording"
    assert [e["window"] for e in events] == list(range(len(events)))
    assert any(line.startswith("end_to_end") for line in err.splitlines()), err  # --stats
    assert any(line.startswith("drops:") for line in err.splitlines()), err


def test_ws_port_0_prints_the_address_it_bound(bundle, speech, tmp_path):
    from websockets.sync.client import connect

    proc = _start(bundle, speech, "--ws", "0", "--out", str(tmp_path / "events.jsonl"))  # real speed: time to connect
    try:
        line = proc.stderr.readline().strip()
        bound = re.fullmatch(r"edge-mer: WebSocket events on (ws://127\.0\.0\.1:(\d+))", line)
        assert bound and int(bound[2]) > 0, line
        with connect(bound[1], open_timeout=10) as client:
            event = json.loads(client.recv(timeout=30))
        assert {"window", "t_end", "label", "probs"} <= set(event)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether the process has a handler for ``sig`` (its SigCgt mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next((int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:")), 0)
    return bool(mask >> (sig - 1) & 1)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc to see when the handlers are in place")
@pytest.mark.parametrize("delay_s", [0.0, 0.05, 0.2])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_during_start_up(bundle, speech, tmp_path, sig, delay_s):
    # The signal comes while the runtime is still importing and loading the bundle and models,
    # before the first event: 128 + the signal, one line, no traceback, and no file at all (no
    # events were begun). The delay counts from the moment the process catches SIGTERM, i.e. it
    # runs edge-mer's code; a signal before the interpreter gets that far has the system's
    # default action (the process is killed by it, which a shell reports as the same status).
    out = tmp_path / "events.jsonl"
    proc = _start(bundle, speech, "--out", str(out))  # real speed: the first event after 2 s of sound
    deadline = time.monotonic() + 30
    while not _catches(proc.pid, signal.SIGTERM):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.001)
    time.sleep(delay_s)
    proc.send_signal(sig)
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err, err
    assert stdout == ""
    assert err.strip().splitlines() == [
        f"edge-mer: stopped by {sig.name} during start-up, before the first event (exit {128 + sig})"], err
    assert list(tmp_path.iterdir()) == [], "a run stopped before its first event leaves no file"


def test_a_start_up_stop_lost_in_a_weakref_callback_still_stops_the_run(capfd):
    # A signal can land while Python runs a weakref callback (importlib's module locks do, as the
    # runtime imports): the handler's Interrupted cannot leave the callback and would be printed as
    # "Exception ignored" and lost, and the run would go on to its end. It is recorded; the run
    # loop's handlers, when they are installed, stop the start-up with it, and nothing is printed.
    import weakref

    from edge_mer import cli
    from edge_mer.errors import Interrupted
    from edge_mer.stream.app import _Signals

    class Held:
        pass

    def callback(_ref):
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100_000):  # the handler runs in here, between two bytecodes
            pass

    previous = sys.unraisablehook
    sys.unraisablehook = functools.partial(cli._quiet_lost_stops, previous)
    try:
        with cli._stop_signals():
            start_up_handler = signal.getsignal(signal.SIGTERM)
            held = Held()
            ref = weakref.ref(held, callback)
            del held
            assert ref() is None and cli.lost_stop() == signal.SIGTERM
            with pytest.raises(Interrupted) as caught, _Signals():
                pass
            assert caught.value.signum == signal.SIGTERM
            assert signal.getsignal(signal.SIGTERM) is start_up_handler  # the run's handlers were taken back
    finally:
        sys.unraisablehook = previous
        cli._received.clear()
    assert "Exception ignored" not in capfd.readouterr().err


def test_a_signal_during_start_up_keeps_an_existing_out_file(bundle, speech, tmp_path):
    # A stop before the first event does not replace the events of an earlier run with nothing.
    out = tmp_path / "events.jsonl"
    out.write_text('{"window": 0}\n')
    proc = _start(bundle, speech, "--out", str(out))
    _wait_for(lambda: (tmp_path / "events.jsonl.partial").exists(), proc)  # the output is opened, no event yet
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("edge-mer: stopped by SIGTERM"), err
    assert out.read_text() == '{"window": 0}\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl"]


def test_an_ignored_sighup_stays_ignored(bundle, speech, tmp_path):
    # `nohup edge-mer run ...`: the run outlives its terminal (SIGHUP), and ends at its end.
    out = tmp_path / "events.jsonl"
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # an ignored disposition is inherited, as nohup does
    try:
        proc = _start(bundle, speech, "--out", str(out), inherit_signals=True)
    finally:
        signal.signal(signal.SIGHUP, previous)
    _wait_for(lambda: _lines(tmp_path / "events.jsonl.partial") >= 1, proc)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert [json.loads(line)["window"] for line in out.read_text().splitlines()] == list(range(WINDOWS))
