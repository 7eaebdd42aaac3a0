"""Faults during a run, and training killed mid-way.

- a camera unplugged mid-stream: the runtime reports it and reopens it for
  ``runtime.source_retry_s``; it goes on when the camera comes back, and ends with a one-line
  error (exit 4) when it does not. The camera is the one thing replaced here (there is none on a
  CI machine): ``cv2.VideoCapture`` becomes a scripted device; the runtime under test is real;
- the reader of stdout goes away (``edge-mer run | head -1``): a quiet exit 0, no traceback;
- a stalled stage behind a real-speed replay: the bounded window queue drops the oldest windows,
  counts them in ``--stats``, and the freshest window is still processed;
- ``python -m training.train`` killed with SIGKILL mid-run resumes from its last checkpoint and
  ends with the same per-epoch losses and weights as an uninterrupted run. Tolerance: 1e-5
  relative on losses, 1e-6 absolute on weights (CPU float32; in practice they are bit-identical
  because crops and batch order depend only on the seed and the epoch).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from media_fixtures import make_speech
from run_fixtures import export_mtcnn_once, make_bundle

from conftest import REPO, shared_data
from edge_mer.cli import main

SAMPLE = REPO / "samples" / "crema-d_1001_DFA_six_emotions.mp4"


@pytest.fixture(scope="module")
def audio_bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("fb") / "audio", ["audio"], [["audio"]])


@pytest.fixture(scope="module")
def face_count_bundle(tmp_path_factory):
    # An MTCNN detector makes the runtime read the camera's frames (for the face count).
    mtcnn = export_mtcnn_once(tmp_path_factory.mktemp("mtcnn"))
    return make_bundle(tmp_path_factory.mktemp("fc") / "b", ["audio"], [["audio"]], mtcnn_dir=mtcnn)


# --------------------------------------------------------------------------- camera unplugged


class ScriptedCamera:
    """Stands in for ``cv2.VideoCapture``: each open follows ``plan[open_number]`` = the number
    of frames it delivers before failing (None: opening fails, -1: never fails). 25 fps."""

    plan: list[int | None] = []
    opens = 0
    frames_after_first_failure = 0
    first_failure_t: float | None = None
    lock = threading.Lock()

    def __init__(self, index, *args) -> None:
        cls = type(self)
        with cls.lock:
            k = cls.opens
            cls.opens += 1
        self.budget = cls.plan[min(k, len(cls.plan) - 1)]
        self.delivered = 0

    def isOpened(self) -> bool:  # noqa: N802 (OpenCV's name)
        return self.budget is not None

    def read(self):
        cls = type(self)
        time.sleep(0.04)
        if self.budget is None or (self.budget >= 0 and self.delivered >= self.budget):
            with cls.lock:
                if cls.first_failure_t is None:
                    cls.first_failure_t = time.monotonic()
            return False, None
        self.delivered += 1
        if cls.first_failure_t is not None:
            with cls.lock:
                cls.frames_after_first_failure += 1
        return True, np.full((240, 320, 3), 128, np.uint8)

    def release(self) -> None:
        self.budget = None

    def set(self, *args) -> bool:
        return True

    def get(self, *args) -> float:
        return 0.0


@pytest.fixture
def scripted_camera(monkeypatch):
    import cv2

    ScriptedCamera.opens = 0
    ScriptedCamera.frames_after_first_failure = 0
    ScriptedCamera.first_failure_t = None
    monkeypatch.setattr(cv2, "VideoCapture", ScriptedCamera)
    return ScriptedCamera


def test_camera_unplugged_and_back_is_retried(face_count_bundle, scripted_camera, capsys, caplog):
    # 20 frames, then unplugged: one failed reopen, then it is back for good.
    scripted_camera.plan = [20, None, -1]
    rc = main(["run", "--bundle", str(face_count_bundle), "--camera", "0", "--max-seconds", "4",
               "--set", "runtime.source_retry_s=3.0", "--set", "runtime.threads=1"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert scripted_camera.opens >= 3, "the runtime did not reopen the camera"
    assert scripted_camera.frames_after_first_failure > 0, "no frames were read after the camera came back"
    events = [json.loads(line) for line in out.splitlines()]
    assert events and events[-1]["t_end"] > 2.0
    # The outage is reported (a logged warning), not silent.
    assert any("camera 0" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records), caplog.text


def test_camera_unplugged_for_good_gives_up_after_the_retry_time(face_count_bundle, scripted_camera, capsys):
    scripted_camera.plan = [20, None]
    retry_s = 1.0
    rc = main(["run", "--bundle", str(face_count_bundle), "--camera", "0", "--max-seconds", "20",
               "--set", f"runtime.source_retry_s={retry_s}", "--set", "runtime.threads=1"])
    gave_up = time.monotonic()
    _, err = capsys.readouterr()
    assert rc == 4, err
    lines = [line for line in err.splitlines() if line.startswith("edge-mer: error: ")]
    assert len(lines) == 1 and "camera 0" in lines[0], err
    assert scripted_camera.opens >= 2, "the runtime gave up without trying to reopen the camera"
    waited = gave_up - scripted_camera.first_failure_t
    assert retry_s - 0.1 <= waited < retry_s + 5.0, f"gave up {waited:.2f} s after the camera died"


# --------------------------------------------------------------------------- broken pipe


def test_closed_stdout_mid_stream_exits_quietly(audio_bundle):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge_mer", "run", "--bundle", str(audio_bundle), "--audio", str(SAMPLE), "--fast"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env,
    )
    first = proc.stdout.readline()
    assert json.loads(first)["window"] == 0
    proc.stdout.close()  # the reader goes away with events still to come
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()


# --------------------------------------------------------------------------- stalled stage


def test_stalled_stage_drops_the_oldest_windows_and_counts_them(audio_bundle, tmp_path, monkeypatch, capsys):
    from edge_mer.stream import stages

    speech = make_speech(tmp_path / "s.wav", "one two three four five six seven eight nine ten eleven", 16000)
    original = stages.FeatureExtractor.__call__

    def stalled(self, window):
        time.sleep(0.8)  # a stage that takes longer than the 0.5 s hop: windows pile up
        return original(self, window)

    monkeypatch.setattr(stages.FeatureExtractor, "__call__", stalled)
    # Real-speed replay (no --fast): the source follows the clock and must not wait on us.
    rc = main(["run", "--bundle", str(audio_bundle), "--audio", str(speech), "--stats",
               "--set", "runtime.queue_size=1", "--set", "runtime.drop_policy=oldest"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    drops = next(line for line in err.splitlines() if line.startswith("drops:"))
    counted = dict(part.strip().rsplit(" ", 1) for part in drops[len("drops:"):].split(","))
    assert int(counted["windows"]) > 0, drops
    indices = [e["window"] for e in events]
    assert indices == sorted(indices) and len(indices) < indices[-1] + 1, indices  # gaps: dropped windows
    assert int(counted["windows"]) == indices[-1] + 1 - len(indices), (drops, indices)


# --------------------------------------------------------------------------- training killed


def _train_cmd(out: Path, mosi: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "training.train", "--mosi", str(mosi), "--config", "configs/mosi_pairwise.toml",
            "--out", str(out), "--set", f"train.epochs={epochs}", "--set", "train.device=cpu",
            "--set", "train.checkpoint_every=1", "--set", "encoder.feature_dim=32", "--set", "encoder.proj_hidden=32",
            "--set", "encoder.proj_dim=16", "--set", 'encoder.options=["mlp.hidden=32"]']


def _log(out: Path) -> list[dict]:
    path = out / "log.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_sigkilled_training_resumes_to_the_same_figures(tmp_path):
    pytest.importorskip("torch")
    from safetensors.numpy import load_file

    mosi = shared_data("cmu-mosi", "data")
    epochs = 8
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}

    whole = tmp_path / "whole"
    subprocess.run(_train_cmd(whole, mosi, epochs), cwd=REPO, env=env, check=True, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(killed, mosi, epochs), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while len(_log(killed)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed; raise the epoch count"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before_kill = len(_log(killed))
    assert 3 <= done_before_kill < epochs

    resumed = subprocess.run(_train_cmd(killed, mosi, epochs), cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr

    a, b = _log(whole), _log(killed)
    assert [int(r["epoch"]) for r in b] == list(range(1, epochs + 1)), "epochs missing or repeated after resume"
    for ra, rb in zip(a, b):
        for key in ("train_loss", "val_loss", "lr"):
            assert float(rb[key]) == pytest.approx(float(ra[key]), rel=1e-5), (key, ra["epoch"])
    wa, wb = load_file(whole / "model.safetensors"), load_file(killed / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        np.testing.assert_allclose(wb[name], wa[name], rtol=0, atol=1e-6, err_msg=name)
