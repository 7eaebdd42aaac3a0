"""End to end: ``edge-mer run`` replays real audio-visual clips (the bundled sample always; CREMA-D
and RAVDESS actor-01 video when ../shared/data is present) through real ONNX Runtime sessions, the
real MTCNN nets (exported from facenet-pytorch's weights) and a real Vosk model, and checks the
events: count, monotonic timestamps, probabilities summing to 1, modalities, latency. Missing
pieces (no face, silence, no Vosk model, a modality the source lacks) degrade, they do not crash.
The bundles' encoders are small fixed projections: the thing under test is the runtime."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from media_fixtures import make_faceless_video, make_silence, make_speech
from run_fixtures import LABELS, export_mtcnn_once, make_bundle
from test_vosk import vosk_ko_dir

from conftest import REPO, shared_data
from edge_mer.cli import DEFAULT_BUNDLE, main
from edge_mer.media import probe

SAMPLE = REPO / "samples" / "crema-d_1001_DFA_six_emotions.mp4"
FAST = ["--fast", "--set", "runtime.threads=1"]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    return {
        "audio": make_bundle(root / "audio", ["audio"], [["audio"]]),
        "audio+text": make_bundle(root / "at", ["audio", "text"], [["audio"], ["text"], ["audio", "text"]]),
    }


@pytest.fixture(scope="module")
def visual_bundle(tmp_path_factory):
    mtcnn = export_mtcnn_once(tmp_path_factory.mktemp("mtcnn"))
    # a head for audio alone, landmarks alone and all three; none for face alone
    return make_bundle(tmp_path_factory.mktemp("fla") / "b", ["face", "landmarks", "audio"],
                       [["audio"], ["landmarks"], ["face", "landmarks", "audio"]], mtcnn_dir=mtcnn)


def run(argv, capsys) -> tuple[int, list[dict], str]:
    rc = main(["run", *argv])
    out, err = capsys.readouterr()
    return rc, [json.loads(line) for line in out.splitlines()], err


def expected_windows(duration_s: float, window_s: float = 2.0, hop_s: float = 0.5) -> int:
    return int((duration_s - window_s + 1e-6) // hop_s) + 1


def check_events(events: list[dict], n: int | None = None, labels=LABELS) -> None:
    if n is not None:
        assert len(events) == n
    assert [e["window"] for e in events] == list(range(len(events)))
    ends = [e["t_end"] for e in events]
    assert ends == sorted(ends) and len(set(ends)) == len(ends)
    for e in events:
        assert e["t_end"] - e["t_start"] == pytest.approx(2.0, abs=1e-3) or len(events) == 1
        assert isinstance(e["latency_ms"], float) and e["latency_ms"] >= 0
        assert isinstance(e["faces"], int)
        assert set(e["modalities"]) <= {"face", "landmarks", "audio", "text"}
        if e["label"] is None:
            assert e["probs"] == {} and e["modalities"] == []
            continue
        assert list(e["probs"]) == labels
        assert sum(e["probs"].values()) == pytest.approx(1.0, abs=1e-4)
        assert e["label"] == max(e["probs"], key=e["probs"].get)
        for probs in e["per_modality"].values():
            assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
        assert not set(e["modalities"]) & set(e["absent"])


@pytest.mark.slow
def test_sample_with_words_from_a_real_vosk_model(bundles, capsys):
    rc, events, _ = run(["--bundle", str(bundles["audio+text"]), "--video", str(SAMPLE), *FAST,
                         "--vosk-model", str(vosk_ko_dir()), "--emit-text"], capsys)
    assert rc == 0
    check_events(events, expected_windows(12.7))
    assert all("audio" in e["modalities"] for e in events)
    with_words = [e for e in events if "text" in e["modalities"]]
    # the Korean model hears *something* in English speech: words reach most windows
    assert len(with_words) >= len(events) // 2
    assert all(e["text"] for e in with_words) and all(isinstance(e["text"], str) for e in events)
    assert all(e["modalities"] == ["audio", "text"] and set(e["per_modality"]) == {"audio", "text"} for e in with_words)


@pytest.mark.slow
def test_words_do_not_depend_on_thread_timing(bundles):
    # A window's words are Vosk's words when it had heard up to the window's end, so two replays
    # give the same events however far ahead the speech-to-text thread ran. Each replay runs in a
    # fresh process: Vosk itself decodes a second session in one process slightly differently.
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "edge_mer", "run", "--bundle", str(bundles["audio+text"]), "--video", str(SAMPLE),
           *FAST, "--vosk-model", str(vosk_ko_dir()), "--emit-text"]
    outs = [subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True).stdout for _ in range(2)]
    first, second = ([json.loads(x) for x in out.splitlines()] for out in outs)
    assert len(first) == expected_windows(12.7) and any(e["text"] for e in first)
    assert [(e["text"], e["probs"]) for e in first] == [(e["text"], e["probs"]) for e in second]


@pytest.mark.slow
def test_sample_faces_landmarks_and_audio_with_real_mtcnn(visual_bundle, capsys):
    rc, events, err = run(["--bundle", str(visual_bundle), "--video", str(SAMPLE), *FAST, "--stats"], capsys)
    assert rc == 0
    check_events(events, expected_windows(12.7))
    assert all(e["faces"] == 1 for e in events)  # one actor, always in view
    # MTCNN on every 10th analysed frame (face.sample_fps = 10 frames/s, as preprocessing sampled
    # the training videos), the face tracked in between: a steady face never forces a detection
    counts = {line.split()[0]: int(line.split()[1]) for line in err.splitlines()
              if line.split() and line.split()[0] in ("face_detect", "track", "landmarks")}
    analysed = counts["landmarks"]
    assert 124 <= analysed <= 128
    assert counts["face_detect"] == -(-analysed // 10) and counts["track"] == analysed - counts["face_detect"]
    assert all(e["modalities"] == ["face", "landmarks", "audio"] for e in events)
    assert all(set(e["per_modality"]) == {"landmarks", "audio"} for e in events)  # no face-alone head


@pytest.mark.slow
@pytest.mark.data
@pytest.mark.parametrize("folder, pattern", [("crema-d/VideoFlash", "*.flv"), ("ravdess/video_actor01", "*.mp4")])
def test_shared_audio_visual_clips(visual_bundle, capsys, folder, pattern):
    clip = sorted(shared_data(*folder.split("/")).glob(pattern))[0]
    duration = probe(clip).duration_s
    rc, events, _ = run(["--bundle", str(visual_bundle), "--video", str(clip), *FAST], capsys)
    assert rc == 0
    check_events(events, expected_windows(duration) if duration >= 2.0 else 1)
    assert sum(e["faces"] >= 1 for e in events) >= len(events) - 1
    assert all("audio" in e["modalities"] for e in events if e["t_start"] >= 0.5)


def test_no_vosk_model_means_no_words_not_a_crash(bundles, capsys):
    rc, events, err = run(["--bundle", str(bundles["audio+text"]), "--video", str(SAMPLE), *FAST], capsys)
    assert rc == 0
    check_events(events, expected_windows(12.7))
    assert all(e["modalities"] == ["audio"] for e in events)
    assert all(e["absent"]["text"].startswith("no speech-to-text model") for e in events)
    assert all("text" not in e for e in events)  # privacy: no transcript without --emit-text
    assert err.count("text modality off") <= 1  # logged once, not per window


def test_silence_gives_events_without_a_label(bundles, capsys, tmp_path):
    wav = make_silence(tmp_path / "quiet.wav", seconds=3.0)
    rc, events, _ = run(["--bundle", str(bundles["audio"]), "--audio", str(wav), *FAST], capsys)
    assert rc == 0
    check_events(events, expected_windows(3.0))
    assert all(e["label"] is None and e["absent"]["audio"] == "silence" for e in events)
    # a modality the bundle lacks is named too, so nobody wonders why it never shows
    assert all(e["absent"]["text"] == "the bundle has no text encoder" for e in events)


@pytest.mark.slow
def test_no_face_in_view_falls_back_to_audio(visual_bundle, capsys, tmp_path):
    clip = make_faceless_video(tmp_path / "grey.mp4", make_speech(tmp_path / "s.wav", "the door is open and the room is warm"),
                               seconds=3.0)
    rc, events, _ = run(["--bundle", str(visual_bundle), "--video", str(clip), *FAST], capsys)
    assert rc == 0 and events
    check_events(events)
    for e in events:
        assert e["faces"] == 0 and e["modalities"] == ["audio"]
        assert e["absent"]["face"] == e["absent"]["landmarks"] == "no face in view"


@pytest.mark.slow
def test_bundle_modalities_the_source_lacks(visual_bundle, capsys, tmp_path):
    wav = make_speech(tmp_path / "s.wav", "the door is open and the room is warm today", rate_hz=16000)
    rc, events, _ = run(["--bundle", str(visual_bundle), "--audio", str(wav), *FAST], capsys)
    assert rc == 0 and events
    check_events(events)
    assert all(e["absent"]["face"] == "no video in the source" and e["modalities"] == ["audio"] for e in events)


def test_real_speed_replay_measures_latency_from_the_window_end(bundles, capsys, tmp_path):
    wav = make_speech(tmp_path / "s.wav", "the door is open and the room is warm", rate_hz=16000)
    duration = probe(wav).duration_s
    t0 = time.monotonic()
    rc, events, _ = run(["--bundle", str(bundles["audio"]), "--audio", str(wav), "--stats"], capsys)
    assert rc == 0
    assert time.monotonic() - t0 >= events[-1]["t_end"] - 0.2  # paced by the recording
    check_events(events, expected_windows(duration))


def test_outputs_stay_where_asked_and_nothing_else_is_written(bundles, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, events, _ = run(["--bundle", str(bundles["audio"]), "--video", str(SAMPLE), *FAST], capsys)
    assert rc == 0 and events
    assert list(tmp_path.iterdir()) == []  # privacy by default: stdout only
    rc, printed, err = run(["--bundle", str(bundles["audio"]), "--video", str(SAMPLE), *FAST,
                            "--out", "ev/events.jsonl", "--stats"], capsys)
    assert rc == 0 and printed == []
    assert sorted(p.name for p in (tmp_path / "ev").iterdir()) == ["events.jsonl", "events.jsonl.run_config.toml"]
    saved = [json.loads(x) for x in (tmp_path / "ev" / "events.jsonl").read_text().splitlines()]
    assert [e["probs"] for e in saved] == [e["probs"] for e in events]  # deterministic replay
    assert "p50 ms" in err and "drops:" in err and "encode_audio" in err
    rc, _, _ = run(["--bundle", str(bundles["audio"]), "--video", str(SAMPLE), *FAST, "--record", "rec"], capsys)
    assert rc == 0 and (tmp_path / "rec" / "audio.wav").is_file()


@pytest.mark.slow
def test_default_bundle_on_the_bundled_sample(capsys):
    if not (DEFAULT_BUNDLE / "manifest.json").is_file():
        pytest.skip(f"needs the shipped default bundle at {DEFAULT_BUNDLE}, which is absent here")
    from edge_mer.bundle import Bundle

    bundle = Bundle.load(DEFAULT_BUNDLE)
    rc, events, _ = run(["--video", str(SAMPLE), *FAST], capsys)  # the README's first command
    assert rc == 0
    check_events(events, expected_windows(12.7), labels=bundle.labels)
    assert all("audio" in e["modalities"] for e in events)
    if "face" in bundle.manifest["modalities"]:
        # the camera counts: its face branch reads every window of the sample, fused with the voice
        assert all(e["modalities"][:2] == ["face", "audio"] and "face" in e["per_modality"] for e in events)
    if "text" in bundle.manifest["modalities"]:
        # its real MiniLM text encoder, fed by the real (Korean) Vosk model
        rc, events, _ = run(["--video", str(SAMPLE), *FAST, "--vosk-model", str(vosk_ko_dir())], capsys)
        assert rc == 0
        check_events(events, expected_windows(12.7), labels=bundle.labels)
        assert sum("text" in e["modalities"] and "audio" in e["modalities"] for e in events) >= len(events) // 2


def test_torch_stays_out_of_a_run(bundles, tmp_path):
    import subprocess
    import sys

    code = (f"from edge_mer.cli import main; import sys; "
            f"rc = main(['run', '--bundle', {str(bundles['audio'])!r}, '--video', {str(SAMPLE)!r}, '--fast', "
            f"'--out', {str(tmp_path / 'e.jsonl')!r}]); "
            f"assert rc == 0; assert not [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert Path(tmp_path / "e.jsonl").is_file()


def test_websocket_sink_in_a_real_run(bundles, tmp_path):
    import socket
    import threading

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    wav = make_speech(tmp_path / "s.wav", "the door is open and the room is warm", rate_hz=16000)
    probe_sock = socket.socket()
    probe_sock.bind(("127.0.0.1", 0))
    port = probe_sock.getsockname()[1]
    probe_sock.close()
    result = {}
    out = tmp_path / "e.jsonl"
    # real-speed replay: the first event comes after one window (2 s), time enough to connect
    thread = threading.Thread(target=lambda: result.setdefault("rc", main(
        ["run", "--bundle", str(bundles["audio"]), "--audio", str(wav), "--ws", str(port), "--out", str(out)])))
    thread.start()
    received = []
    client = None
    deadline = time.monotonic() + 10
    while client is None and time.monotonic() < deadline:
        try:
            client = connect(f"ws://127.0.0.1:{port}", open_timeout=1)
        except OSError:
            time.sleep(0.05)  # the server is not listening yet
    assert client is not None, "the WebSocket sink never listened"
    with client:
        try:
            while True:
                received.append(json.loads(client.recv(timeout=10)))
        except ConnectionClosed:  # the run ended and closed the server
            pass
    thread.join(30)
    assert result["rc"] == 0
    saved = [json.loads(x) for x in out.read_text().splitlines()]
    assert received and received == saved[len(saved) - len(received):]


@pytest.mark.slow
def test_live_camera_path_with_a_file_as_the_camera(visual_bundle, capsys):
    # OpenCV opens the sample like a camera: capture thread, monotonic clock, drop policy, the
    # real-time window queue and latency from the capture clock, end to end.
    rc, events, err = run(["--bundle", str(visual_bundle), "--camera", str(SAMPLE), "--max-seconds", "3.2",
                           "--set", "runtime.threads=1", "--stats"], capsys)
    assert rc == 0 and events
    check_events(events)
    for e in events:
        assert e["absent"]["audio"] == "no audio in the source"
        assert set(e["modalities"]) <= {"face", "landmarks"}
    # no head reads face+landmarks nor face alone: landmarks' own head decides, face is left out
    assert any(e["faces"] == 1 and e["modalities"] == ["landmarks"] for e in events)
    assert all(e["absent"].get("face") in ("no head in the bundle reads it", "no face in view") for e in events)
    assert "drops: " in err and "frames" in err


def test_non_finite_samples_never_reach_an_encoder(bundles, capsys, tmp_path):
    import numpy as np
    import soundfile as sf

    from edge_mer.media import load_audio

    speech = load_audio(make_speech(tmp_path / "s.wav", "the door is open and the room is warm today", rate_hz=16000))
    speech[1600:1700] = np.nan  # at 0.1 s: inside the first window only
    wav = tmp_path / "nan.wav"
    sf.write(wav, speech, 16000, subtype="FLOAT")
    rc, events, _ = run(["--bundle", str(bundles["audio"]), "--audio", str(wav), *FAST], capsys)
    assert rc == 0 and len(events) >= 2
    assert events[0]["label"] is None and events[0]["absent"]["audio"].startswith("non-finite samples")
    assert events[-1]["modalities"] == ["audio"]  # windows after the damage are read again
