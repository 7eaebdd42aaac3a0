"""The real audio-visual clips (7 RAVDESS mp4s of actor 01, 6 CREMA-D flv clips) preprocess to all
four streams, with face crops and landmarks checked on the real faces."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import shared_data
from edge_mer.config import FaceCfg
from edge_mer.media import probe
from training.cache import open_cache
from training.preprocess import main


@pytest.mark.slow
@pytest.mark.data
def test_real_videos_give_all_four_streams(tmp_path, capsys):
    rav = shared_data("ravdess", "video_actor01")
    crema = shared_data("crema-d", "VideoFlash")
    out = tmp_path / "cache"
    code = main(["--dataset", f"ravdess={rav}", "--dataset", f"crema-d={crema}", "--out", str(out),
                 "--workers", "2", "--no-progress", "--set", "face.sample_fps=5.0"])  # 5 fps keeps the test lean
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["done"] == 13 and summary["failed"] == 0
    cache = open_cache(out)
    assert len([i for i in cache.ids if i.startswith("ravdess/01-")]) == 7
    assert len([i for i in cache.ids if i.startswith("crema-d/1001_")]) == 6

    from training.face_detect import FaceDetector

    # re-detecting a face inside each cached crop proves the crops hold faces
    crop_detector = FaceDetector(FaceCfg(min_face_size_px=20))
    for clip_id in cache.ids:
        row, a = cache.index(clip_id), cache.load(clip_id)
        assert row["streams"] == ["audio", "face", "landmarks", "text"]
        info = probe(row["media"]["video"])
        duration = float(a["duration_s"])
        expected_frames = min(duration, info.duration_s) * cache.settings["face"]["sample_fps"]
        n = len(a["face_t"])
        assert n >= 0.9 * expected_frames - 1, f"{clip_id}: a face in only {n} of ~{expected_frames:.0f} frames"
        assert a["face"].shape == (n, 64, 64, 3)
        assert a["logmel"].shape[1] == pytest.approx(1 + duration * 100, abs=2)
        marks = a["landmarks"]
        assert marks.shape == (len(a["landmarks_t"]), 68, 2)
        assert (marks[..., 0] >= 0).all() and (marks[..., 0] < info.width).all()
        assert (marks[..., 1] >= 0).all() and (marks[..., 1] < info.height).all()
        # anatomy in iBUG order: eyes above the nose tip above the mouth above the chin, eyes apart
        eyes_y = marks[:, 36:48, 1].mean(1)
        assert (eyes_y < marks[:, 30, 1]).all() and (marks[:, 30, 1] < marks[:, 62, 1]).all()
        assert (marks[:, 62, 1] < marks[:, 8, 1]).all()
        assert (marks[:, 36:42, 0].mean(1) < marks[:, 42:48, 0].mean(1)).all()
        # a talking head moves little between frames 0.2 s apart
        step = np.linalg.norm(np.diff(marks, axis=0), axis=2)
        iod = np.linalg.norm(marks[:, 36:42].mean(1) - marks[:, 42:48].mean(1), axis=1).mean()
        assert np.median(step) < 0.1 * iod
        found = crop_detector.detect(list(a["face"][:: max(1, n // 4)]))
        assert all(d is not None and d.score > 0.9 for d in found), f"{clip_id}: a crop without a face"
    assert cache.labels()["ravdess/01-01-08-02-02-02-01"] == "surprised"
    assert cache.labels()["crema-d/1001_DFA_SAD_XX"] == "sad"
    assert str(cache.load("crema-d/1001_DFA_SAD_XX")["text"]) == "Don't forget a jacket"
