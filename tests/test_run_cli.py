"""``edge-mer run`` on bad input: one-line errors and non-zero exits (no camera, no microphone, an
unreadable file, contradictory flags, a headless display), and a closed stdout pipe."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from media_fixtures import make_corrupt
from run_fixtures import make_bundle

from conftest import REPO
from edge_mer.cli import main

SAMPLE = REPO / "samples" / "crema-d_1001_DFA_six_emotions.mp4"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("b") / "audio", ["audio"], [["audio"]])


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("t") / "at", ["audio", "text"], [["audio"], ["text"]])


def error_of(argv, capsys, code: int, *needles: str) -> str:
    assert main(["run", *argv]) == code
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edge-mer: error: "), err
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def test_missing_and_unreadable_files(bundle, capsys, tmp_path):
    error_of(["--bundle", str(bundle), "--video", str(tmp_path / "none.mp4")], capsys, 3, "none.mp4: file not found")
    bad = make_corrupt(tmp_path / "bad.mp4")
    error_of(["--bundle", str(bundle), "--audio", str(bad)], capsys, 3, "bad.mp4: cannot open as media")


def test_flag_combinations(bundle, capsys):
    error_of(["--bundle", str(bundle), "--video", str(SAMPLE), "--audio", str(SAMPLE)], capsys, 2, "not both")
    error_of(["--bundle", str(bundle), "--video", str(SAMPLE), "--camera", "0"], capsys, 2, "cannot be combined")
    error_of(["--bundle", str(bundle), "--camera", "0", "--fast"], capsys, 2, "--fast")
    error_of(["--bundle", str(bundle), "--video", str(SAMPLE), "--set", "runtime.drop_policy=random"], capsys, 2,
             "runtime.drop_policy")


def test_absent_camera(bundle, capsys):
    error_of(["--bundle", str(bundle), "--camera", "97"], capsys, 4, "camera 97: cannot be opened")


def test_no_devices_at_all(bundle, capsys):
    import cv2
    import sounddevice as sd

    cap = cv2.VideoCapture(0)
    has_camera = cap.isOpened()
    cap.release()
    try:
        sd.query_devices(kind="input")
        has_mic = True
    except (sd.PortAudioError, ValueError):
        has_mic = False
    if has_camera or has_mic:
        pytest.skip("this machine has a camera or a microphone")
    error_of(["--bundle", str(bundle)], capsys, 4, "no camera and no microphone", "--video FILE")


def test_bad_bundle_and_vosk_model(bundle, text_bundle, capsys, tmp_path):
    error_of(["--bundle", str(tmp_path / "nope"), "--video", str(SAMPLE)], capsys, 2, "not found")
    error_of(["--bundle", str(text_bundle), "--video", str(SAMPLE), "--vosk-model", str(tmp_path)], capsys, 2,
             "not a Vosk model directory")


def test_display_on_headless_opencv(bundle, capsys):
    import cv2

    try:
        cv2.namedWindow("probe")
        cv2.destroyWindow("probe")
        pytest.skip("this OpenCV has a GUI and a display")
    except cv2.error:
        pass
    error_of(["--bundle", str(bundle), "--video", str(SAMPLE), "--fast", "--display"], capsys, 4, "--display")


def test_ws_bad_address(bundle, capsys):
    error_of(["--bundle", str(bundle), "--video", str(SAMPLE), "--fast", "--ws", "localhost:http"], capsys, 2, "--ws")


def test_closed_stdout_pipe_ends_quietly(bundle):
    cmd = (f"{sys.executable} -m edge_mer run --bundle {bundle} --video {SAMPLE} --fast | head -n 1")
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=REPO, capture_output=True, text=True)
    assert proc.stdout.count("\n") == 1 and proc.stdout.startswith('{"window": 0')
    assert proc.stderr == "" and proc.returncode == 0


def test_gstreamer_pipeline_without_gstreamer_opencv(bundle, capsys):
    import re

    import cv2

    if re.search(r"GStreamer:\s+YES", cv2.getBuildInformation()):
        pytest.skip("this OpenCV has GStreamer")
    error_of(["--bundle", str(bundle), "--camera", "videotestsrc ! appsink"], capsys, 4, "no GStreamer", "JETSON.md")


def test_frame_rate_limit_and_analysis_rate():
    from edge_mer.config import FaceCfg
    from edge_mer.modality import Modality
    from edge_mer.stream.app import _RateLimiter, analysis_fps

    limiter = _RateLimiter(10.0)
    kept = [t / 30 for t in range(30) if limiter.keep(t / 30)]  # 30 fps in, 10 fps out
    assert len(kept) == 10 and kept[0] == 0.0
    # the rate training's preprocessing sampled video at; a low one for the face count alone
    assert analysis_fps((Modality.LANDMARKS, Modality.AUDIO), FaceCfg(sample_fps=12.5)) == 12.5
    assert analysis_fps((Modality.AUDIO,), FaceCfg()) == 5.0


def test_backend_choices(bundle, capsys):
    args = ["--bundle", str(bundle), "--video", str(SAMPLE), "--fast"]
    error_of([*args, "--set", "runtime.backend=openvino"], capsys, 2, "runtime.backend must be")
    error_of([*args, "--set", "runtime.providers=['NoSuchExecutionProvider']"], capsys, 4, "NoSuchExecutionProvider")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        error_of([*args, "--set", "runtime.backend=tensorrt"], capsys, 4, "TensorRT is not installed")


def test_video_only_source_with_a_bundle_that_reads_no_video(bundle, capsys):
    # OpenCV opens the sample as a camera; the audio-only bundle has no face detector
    error_of(["--bundle", str(bundle), "--camera", str(SAMPLE), "--max-seconds", "1"], capsys, 2,
             f"camera {SAMPLE}: gives video only", "nothing to analyse")


def test_failure_after_outputs_opened_leaves_no_partial_file(text_bundle, capsys, tmp_path):
    out = tmp_path / "events.jsonl"
    error_of(["--bundle", str(text_bundle), "--video", str(SAMPLE), "--fast", "--out", str(out),
              "--set", "runtime.smoothing_tau_s=-1"], capsys, 2, "smoothing_tau_s")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        error_of(["--bundle", str(text_bundle), "--video", str(SAMPLE), "--fast", "--out", str(out),
                  "--ws", str(busy.getsockname()[1])], capsys, 4, "cannot listen")
    finally:
        busy.close()
    assert list(tmp_path.iterdir()) == []  # no events file, no partial file, no config


def test_display_window_opens_before_pyav_is_imported(bundle, tmp_path):
    # A GUI OpenCV's first window hangs for ever when PyAV was imported first (PyAV #978/#1050):
    # the run opens the display before anything decodes. Observed in a fresh process: at the
    # moment the window is created, av must not be loaded yet.
    import subprocess
    import sys

    probe = tmp_path / "probe.py"
    probe.write_text(
        "import sys\n"
        "import edge_mer.stream.display as d\n"
        "from edge_mer.errors import DeviceError\n"
        "def init(self, title='edge-mer'):\n"
        "    print('av loaded when the window opens:', 'av' in sys.modules, file=sys.stderr)\n"
        "    raise DeviceError('--display: stopped by the test')\n"
        "d.Display.__init__ = init\n"
        "from edge_mer.cli import main\n"
        f"sys.exit(main(['run', '--bundle', {str(bundle)!r}, '--video', {str(SAMPLE)!r}, '--fast', '--display']))\n")
    proc = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=120)
    assert "av loaded when the window opens: False" in proc.stderr, proc.stderr
    assert proc.returncode == 4
