"""The windower fed synthetic timestamps: window bounds, audio placement, sync between streams,
stalled streams, gaps, late items and the end of stream."""

from __future__ import annotations

import numpy as np
import pytest

from edge_mer.config import WindowCfg
from edge_mer.stream.sources import AudioChunk, Frame
from edge_mer.stream.windower import Windower

SR = 1000  # a low sample rate keeps the arrays small; the windower does not care


def audio_chunks(t0: float, t1: float, chunk_s: float = 0.1, start_seq: int = 0):
    """Chunks whose samples equal their own time in ms, so placement can be read back."""
    n = int(round(chunk_s * SR))
    out = []
    t = t0
    seq = start_seq
    while t < t1 - 1e-9:
        first = int(round(t * SR))
        out.append(AudioChunk(t, seq, np.arange(first, first + n, dtype=np.float32)))
        t = round(t + chunk_s, 6)
        seq += 1
    return out


def frames(t0: float, t1: float, fps: float = 10.0):
    return [Frame(t0 + i / fps, i, np.zeros((2, 2, 3), np.uint8)) for i in range(int(round((t1 - t0) * fps)))]


def push_all(w: Windower, items):
    out = []
    for item in items:
        out += w.push(item)
    return out


def test_audio_only_bounds_and_placement():
    w = Windower(WindowCfg(window_s=2.0, hop_s=0.5), SR, has_video=False, has_audio=True)
    windows = push_all(w, audio_chunks(0.0, 5.0)) + w.flush()
    assert [(x.t_start_s, x.t_end_s) for x in windows] == [(0.5 * k, 0.5 * k + 2.0) for k in range(7)]
    assert [x.index for x in windows] == list(range(7))
    for x in windows:
        assert x.audio.shape == (2 * SR,) and x.audio_coverage == pytest.approx(1.0)
        # sample i of the window holds the stream's sample at t_start + i / SR
        np.testing.assert_array_equal(x.audio, np.arange(2 * SR) + int(x.t_start_s * SR))
        assert x.frames == []


def test_window_waits_for_the_slower_stream():
    w = Windower(WindowCfg(window_s=1.0, hop_s=0.5), SR, has_video=True, has_audio=True, max_wait_s=10.0)
    # Video runs 2 s ahead of audio: nothing may be released before audio reaches 1.0 s.
    assert push_all(w, frames(0.0, 2.0)) == []
    released = push_all(w, audio_chunks(0.0, 0.9))
    assert released == []
    released = push_all(w, audio_chunks(0.9, 1.6, start_seq=9))
    assert [(x.t_start_s, x.t_end_s) for x in released] == [(0.0, 1.0), (0.5, 1.5)]
    first = released[0]
    assert [f.t_s for f in first.frames] == pytest.approx([i / 10 for i in range(10)])
    assert all(0.5 - 1e-9 <= f.t_s < 1.5 for f in released[1].frames) and len(released[1].frames) == 10


def test_a_stalled_stream_holds_windows_only_for_max_wait():
    w = Windower(WindowCfg(window_s=1.0, hop_s=0.5), SR, has_video=True, has_audio=True, max_wait_s=1.0)
    push_all(w, frames(0.0, 0.3))  # then the camera freezes
    released = push_all(w, audio_chunks(0.0, 2.0))
    # audio at 2.0 s is max_wait (1 s) past the first window's end: only that one may go out
    assert [x.t_end_s for x in released] == [1.0]
    assert len(released[0].frames) == 3


def test_gap_in_audio_reads_as_silence_at_the_right_place():
    w = Windower(WindowCfg(window_s=1.0, hop_s=1.0), SR, has_video=False, has_audio=True)
    items = audio_chunks(0.0, 0.3) + audio_chunks(0.6, 1.2, start_seq=3)  # 0.3-0.6 s dropped
    [first] = push_all(w, items)
    assert first.audio_coverage == pytest.approx(0.7)
    assert np.all(first.audio[300:600] == 0)
    np.testing.assert_array_equal(first.audio[600:1000], np.arange(600, 1000))


def test_late_items_are_counted_and_ignored():
    w = Windower(WindowCfg(window_s=1.0, hop_s=1.0), SR, has_video=True, has_audio=False)
    assert len(push_all(w, frames(0.0, 2.1))) == 2
    assert w.push(Frame(0.5, 99, np.zeros((2, 2, 3), np.uint8))) == []
    assert w.late_items == 1


def test_flush_releases_full_windows_and_a_short_stream_gets_one():
    w = Windower(WindowCfg(window_s=2.0, hop_s=0.5), SR, has_video=False, has_audio=True)
    push_all(w, audio_chunks(0.0, 1.2))
    [only] = w.flush()
    assert (only.t_start_s, only.t_end_s) == (0.0, pytest.approx(1.2))
    assert only.audio.size == 1200 and only.audio_coverage == pytest.approx(1.0)
    assert w.flush() == []


def test_video_only_stream():
    w = Windower(WindowCfg(window_s=1.0, hop_s=0.5), SR, has_video=True, has_audio=False)
    windows = push_all(w, frames(0.0, 3.0)) + w.flush()
    assert [x.t_end_s for x in windows] == [1.0, 1.5, 2.0, 2.5, 3.0]
    assert all(x.audio is None for x in windows)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="positive"):
        Windower(WindowCfg(window_s=0.0, hop_s=0.5), SR, True, True)
    with pytest.raises(ValueError, match="video or an audio"):
        Windower(WindowCfg(), SR, False, False)
