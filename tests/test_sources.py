"""Sources: file replay with the file's own timestamps (the bundled sample and generated clips),
real-speed pacing, the bounded queue's drop policies, and absent devices as one-line errors."""

from __future__ import annotations

import time

import numpy as np
import pytest
from media_fixtures import make_corrupt, make_empty, make_faceless_video, make_speech

from conftest import REPO
from edge_mer.errors import DeviceError, MediaError
from edge_mer.stream.sources import AudioChunk, BoundedQueue, CameraSource, FileSource, Frame, LiveSource

SAMPLE = REPO / "samples" / "crema-d_1001_DFA_six_emotions.mp4"
SR = 16000


def split(items):
    return [i for i in items if isinstance(i, Frame)], [i for i in items if isinstance(i, AudioChunk)]


def test_sample_video_and_audio_decoded_together_with_timestamps():
    src = FileSource(SAMPLE, SR, realtime=False)
    assert src.has_video and src.has_audio
    items = list(src)
    frames, chunks = split(items)
    assert src.clock_origin_s is None  # --fast: no wall clock to measure latency from
    # 12.7 s at 29.97 fps, and 0.1 s audio chunks covering the same span
    assert 370 <= len(frames) <= 385
    assert [f.seq for f in frames] == list(range(len(frames)))
    assert np.all(np.diff([f.t_s for f in frames]) > 0)
    assert frames[0].bgr.dtype == np.uint8 and frames[0].bgr.shape == (360, 480, 3)
    starts = np.array([c.t_s for c in chunks])
    sizes = np.array([c.samples.size for c in chunks])
    np.testing.assert_allclose(starts[1:], starts[:-1] + sizes[:-1] / SR, atol=1e-9)  # contiguous
    assert abs(frames[-1].t_s - (starts[-1] + sizes[-1] / SR)) < 0.3  # both tracks end together
    assert all(c.samples.dtype == np.float32 for c in chunks)
    # interleaved in time order (within one chunk), as the windower expects
    t = [i.t_s for i in items]
    assert max(np.maximum.accumulate(t) - t) < 0.2


def test_audio_flag_reads_only_the_sound_of_a_video():
    frames, chunks = split(FileSource(SAMPLE, SR, realtime=False, use_video=False))
    assert frames == [] and sum(c.samples.size for c in chunks) / SR == pytest.approx(12.8, abs=0.1)


def test_realtime_replay_follows_the_clock(tmp_path):
    wav = make_speech(tmp_path / "s.wav", "yes", rate_hz=SR)
    src = FileSource(wav, SR, realtime=True)
    t0 = time.monotonic()
    chunks = list(src)
    duration = sum(c.samples.size for c in chunks) / SR
    # each chunk is released once the clock reaches its end: replay cannot beat the recording
    assert time.monotonic() - t0 >= duration - 0.15
    assert src.clock_origin_s is not None and src.clock_origin_s >= t0 - 1e-3


def test_video_without_a_face_still_has_both_tracks(tmp_path):
    clip = make_faceless_video(tmp_path / "grey.mp4", make_speech(tmp_path / "s.wav", "hello"), seconds=1.0)
    frames, chunks = split(FileSource(clip, SR, realtime=False))
    assert len(frames) >= 20 and chunks


@pytest.mark.parametrize("maker, expected", [
    (lambda p: make_corrupt(p / "bad.mp4"), "cannot open as media"),
    (lambda p: make_empty(p / "empty.mp4"), "empty file"),
    (lambda p: p / "missing.mp4", "file not found"),
])
def test_unreadable_files_are_one_line_media_errors(tmp_path, maker, expected):
    path = maker(tmp_path)
    with pytest.raises(MediaError, match=expected) as info:
        FileSource(path, SR)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_audio_flag_on_a_file_without_audio(tmp_path):
    import subprocess

    clip = tmp_path / "mute.mp4"
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-f", "lavfi", "-i", "color=c=gray:s=64x48:d=0.5:r=10",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(clip)], check=True)
    with pytest.raises(MediaError, match="mute.mp4: has no audio track"):
        FileSource(clip, SR, use_video=False)
    frames, chunks = split(FileSource(clip, SR, realtime=False))
    assert frames and not chunks


def test_bounded_queue_drop_policies():
    oldest = BoundedQueue(3, "oldest")
    newest = BoundedQueue(3, "newest")
    for i in range(5):
        oldest.put(i)
        newest.put(i)
    assert [oldest.get(0) for _ in range(3)] == [2, 3, 4] and oldest.dropped == 2
    assert [newest.get(0) for _ in range(3)] == [0, 1, 2] and newest.dropped == 2
    assert oldest.get(0.01) is None
    with pytest.raises(ValueError):
        BoundedQueue(0)
    with pytest.raises(ValueError):
        BoundedQueue(2, "random")


def test_blocking_put_waits_instead_of_dropping():
    import threading

    q = BoundedQueue(1)
    q.put("a")
    done = threading.Event()
    threading.Thread(target=lambda: (q.put("b", block=True), done.set()), daemon=True).start()
    assert not done.wait(0.1)  # still waiting for room
    assert q.get(1.0) == "a"
    assert done.wait(2.0) and q.get(1.0) == "b" and q.dropped == 0


def test_absent_camera_is_a_device_error():
    with pytest.raises(DeviceError, match="camera 97: cannot be opened"):
        CameraSource(97, BoundedQueue(2), time.monotonic())


def test_absent_microphone_is_a_device_error():
    sd = pytest.importorskip("sounddevice")
    try:
        sd.query_devices(kind="input")
        pytest.skip("this machine has a microphone")
    except (sd.PortAudioError, ValueError):
        pass
    with pytest.raises(DeviceError, match="microphone default: cannot be opened"):
        LiveSource(None, None, True, SR, 4, "oldest")


def test_live_source_merges_its_queues_and_reports_drops():
    # The device threads only fill these queues; here the queues are filled directly.
    live = LiveSource(None, None, False, SR, queue_size=2, drop_policy="oldest", max_seconds=0.3)
    for i in range(3):
        live.video_q.put(Frame(i / 10, i, np.zeros((2, 2, 3), np.uint8)))
    live.audio_q.put(AudioChunk(0.0, 0, np.zeros(160, np.float32)))
    items = list(live)
    assert [type(i).__name__ for i in items] == ["AudioChunk", "Frame", "Frame"]
    assert [i.seq for i in items[1:]] == [1, 2]  # the oldest frame was dropped
    assert live.drops() == {"frames": 1, "audio_chunks": 0}


def test_live_source_stops_on_request_even_when_idle():
    import threading

    live = LiveSource(None, None, False, SR, queue_size=2, drop_policy="oldest")
    threading.Timer(0.2, live.request_stop).start()
    t0 = time.monotonic()
    assert list(live) == []
    assert time.monotonic() - t0 < 5.0


def test_a_truncated_file_is_replayed_up_to_the_cut_with_a_warning(tmp_path, caplog):
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(SAMPLE.read_bytes()[:150_000])  # the index is at the front (faststart)
    frames, chunks = split(FileSource(cut, SR, realtime=False))
    assert frames and chunks and frames[-1].t_s < 10.0
    assert "decoding stopped at" in caplog.text and "cut.mp4" in caplog.text


def test_camera_thread_with_a_file_as_the_device():
    # OpenCV opens a video file like a camera: the real capture thread, queue and clock run.
    live = LiveSource(str(SAMPLE), None, False, SR, queue_size=4, drop_policy="oldest", max_seconds=1.0)
    assert live.has_video and not live.has_audio and live.name == f"v4l2://{SAMPLE}"
    items = list(live)
    assert len(items) >= 5 and all(isinstance(i, Frame) for i in items)
    assert all(b.t_s > a.t_s and b.seq > a.seq for a, b in zip(items, items[1:]))
    assert items[0].bgr.shape == (360, 480, 3)
    assert set(live.drops()) == {"frames", "audio_chunks"} and live.camera is None  # closed at the end


def test_a_file_that_decodes_to_nothing_is_a_media_error(tmp_path):
    # A text file named .flac: FFmpeg opens it by its name and decodes no sample.
    text = tmp_path / "notes.flac"
    text.write_text("not sound\n" * 50)
    with pytest.raises(MediaError, match="notes.flac: decodes to no audio samples and no video frames"):
        list(FileSource(text, SR, realtime=False))
    # A picture given as a video (with a bundle that reads frames): not a recording.
    import subprocess

    jpg = tmp_path / "still.jpg"
    subprocess.run(["ffmpeg", "-y", "-loglevel", "error", "-i", str(SAMPLE), "-frames:v", "1", str(jpg)], check=True)
    with pytest.raises(MediaError, match=r"still.jpg: is a still image \(image2\)"):
        FileSource(jpg, SR, realtime=False, use_video=True)


def test_audio_below_the_bundle_rate_is_said_once(tmp_path, caplog):
    import logging

    from media_fixtures import make_speech

    from edge_mer.stream.sources import FileSource

    low = make_speech(tmp_path / "phone.wav", rate_hz=8000)
    with caplog.at_level(logging.WARNING, logger="edge_mer.stream.sources"):
        src = FileSource(low, 16000, realtime=False)
        chunks = list(src)
    assert chunks and src.source_rate_hz == 8000
    said = [r.getMessage() for r in caplog.records if "below the 16000 Hz" in r.getMessage()]
    assert len(said) == 1 and "8000 Hz" in said[0] and "phone.wav" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="edge_mer.stream.sources"):
        FileSource(make_speech(tmp_path / "wide.wav", rate_hz=48000), 16000, realtime=False)
    assert not [r for r in caplog.records if "below the" in r.getMessage()]


def test_large_frames_are_scaled_down_as_they_are_read(tmp_path):
    # Memory and face-detection time must not grow with the recording's resolution: frames above
    # runtime.max_frame_side_px come out of the source already scaled (aspect kept).
    import subprocess

    from media_fixtures import _need

    from edge_mer.stream.sources import FileSource, Frame

    clip = tmp_path / "uhd.mp4"
    subprocess.run([_need("ffmpeg"), "-y", "-loglevel", "error", "-f", "lavfi", "-i", "testsrc=size=1920x1080:rate=10",
                    "-t", "1", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(clip)], check=True)
    src = FileSource(clip, 16000, realtime=False)
    src.max_side_px = 640
    frames = [f for f in src if isinstance(f, Frame)]
    assert len(frames) == 10 and all(f.bgr.shape == (360, 640, 3) for f in frames)
    full = FileSource(clip, 16000, realtime=False)  # no limit: as decoded
    assert next(f for f in full if isinstance(f, Frame)).bgr.shape == (1080, 1920, 3)
    # the scaled frame is the picture, not an empty buffer: testsrc's colour bars survive
    assert frames[0].bgr.std() > 20


def test_bounded_queue_by_bytes_too():
    import threading

    sizes = {"a": 60, "b": 50, "c": 30, "huge": 500}
    oldest = BoundedQueue(10, "oldest", max_bytes=100, size_of=sizes.get)
    for k in ("a", "b", "c"):
        oldest.put(k)  # b arrives: a (60) + b (50) > 100, a is dropped; c then fits beside b
    assert [oldest.get(0.0), oldest.get(0.0)] == ["b", "c"] and oldest.dropped == 1 and oldest.bytes == 0
    newest = BoundedQueue(10, "newest", max_bytes=100, size_of=sizes.get)
    for k in ("a", "b", "c"):
        newest.put(k)  # b does not fit and is dropped; c does
    assert [newest.get(0.0), newest.get(0.0)] == ["a", "c"] and newest.dropped == 1
    alone = BoundedQueue(10, "oldest", max_bytes=100, size_of=sizes.get)
    alone.put("huge")  # one item always fits, however large
    assert alone.get(0.0) == "huge" and alone.dropped == 0
    # a blocking put waits for bytes to free up rather than dropping (file replay)
    q = BoundedQueue(10, "oldest", max_bytes=100, size_of=sizes.get)
    q.put("a")
    done = threading.Event()
    t = threading.Thread(target=lambda: (q.put("b", block=True), done.set()))
    t.start()
    assert not done.wait(0.2)
    assert q.get(0.0) == "a"
    assert done.wait(2.0) and q.get(0.0) == "b" and q.dropped == 0
    t.join()
