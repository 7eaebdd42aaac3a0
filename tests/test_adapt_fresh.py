"""training.eval.adapt_fresh: adaptation, then later sessions, end to end on real RAVDESS speech."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "ravdess" / "audio_speech").is_dir(),
                                reason="needs ../shared/data/ravdess/audio_speech")


@needs_data
def test_adapt_then_fresh_sessions_with_the_user_bundle(tmp_path):
    from edge_mer.bundle import Bundle
    from training.eval.adapt_fresh import actor_sessions
    from training.eval.recordings import ravdess_speech_clips

    base = tmp_path / "base"
    shutil.copytree(REPO / "models" / "default", base)
    clips = ravdess_speech_clips(DATA)
    r = actor_sessions(base, clips, actor=3, k=1, seed=3, work=tmp_path / "w", max_scored=8)
    assert r["labelled_clips"] == 8 and r["scored_clips"] == 8
    assert 0.0 <= r["unadapted"] <= 100.0 and 0.0 <= r["adapted"] <= 100.0
    # the user bundle was written by edge-mer adapt from the adaptation recording alone
    user = Bundle.load(tmp_path / "w" / "user_bundle")
    head = user.manifest["adaptation"]["heads"]["audio"]
    assert user.user_root is not None and head["user_statistics_windows"] >= head["windows"] > 0
    assert r["user_statistics_windows"] == head["user_statistics_windows"]


def test_a_missing_fold_bundle_is_one_line(tmp_path):
    if not (DATA / "ravdess" / "audio_speech").is_dir():
        pytest.skip("needs ../shared/data/ravdess/audio_speech")
    proc = subprocess.run([sys.executable, "-m", "training.eval.adapt_fresh", "--work", str(tmp_path), "--data", str(DATA),
                           "--folds", "1", "--out", str(tmp_path / "out")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "no fold bundle" in proc.stderr, proc.stderr
    assert not (tmp_path / "out" / "results.json").exists()
