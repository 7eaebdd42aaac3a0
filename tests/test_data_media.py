"""Media decoding (edge_mer.media) on generated files in the datasets' containers: every audio
format to 16 kHz mono, frame sampling and seeking, and one-line errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_data
from edge_mer.errors import MediaError
from edge_mer.media import iter_video_frames, load_audio, probe
from media_fixtures import make_corrupt, make_empty, make_face_video, make_speech


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    wav = make_speech(root / "s.wav", "Dogs are sitting by the door", rate_hz=48000)
    still = shared_data("ravdess", "face_stills", "Actor_07.png")
    return {
        "wav": wav,
        "flac": make_speech(root / "s.flac", "Dogs are sitting by the door", rate_hz=44100),
        "mp3": make_speech(root / "s.mp3", "Dogs are sitting by the door", rate_hz=44100),
        "mp4": make_face_video(root / "v.mp4", still, wav),
        "flv": make_face_video(root / "v.flv", still, wav),
    }


@pytest.mark.parametrize("kind", ["wav", "flac", "mp3", "mp4", "flv"])
def test_every_container_decodes_to_16k_mono(media, kind):
    wave = load_audio(media[kind], 16000)
    reference = load_audio(media["wav"], 16000)
    assert wave.dtype == np.float32 and wave.ndim == 1
    # same speech, whatever the container and codec: length within 60 ms (codec padding)
    assert abs(wave.size - reference.size) < 0.06 * 16000
    assert 0.05 < np.abs(wave).max() <= 1.0


def test_frames_are_sampled_and_seeking_gives_the_same_frames(media):
    info = probe(media["mp4"])
    assert info.has_video and info.has_audio and (info.width, info.height) == (398, 224)
    full = list(iter_video_frames(media["mp4"], fps=10))
    times = np.array([t for t, _ in full])
    assert np.allclose(np.diff(times), 0.1, atol=0.021)
    seg = list(iter_video_frames(media["mp4"], fps=10, start_s=1.0))
    assert seg[0][0] >= 1.0 - 1e-6 and seg[0][0] < 1.05
    every = {round(t, 3): f for t, f in iter_video_frames(media["mp4"])}  # all frames, no sampling
    for t, frame in seg:
        np.testing.assert_array_equal(every[round(t, 3)], frame)
    assert full[0][1].shape == (224, 398, 3) and full[0][1].dtype == np.uint8


def test_bad_files_are_one_line_media_errors(tmp_path, media):
    with pytest.raises(MediaError, match="empty file"):
        load_audio(make_empty(tmp_path / "e.wav"))
    with pytest.raises(MediaError, match="c.mp4: cannot open as media"):
        load_audio(make_corrupt(tmp_path / "c.mp4"))
    with pytest.raises(MediaError, match="no video track"):
        list(iter_video_frames(media["wav"]))
    with pytest.raises(MediaError, match="file not found"):
        probe(tmp_path / "absent.flv")
