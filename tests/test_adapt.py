"""`edge-mer adapt` on real RAVDESS speech: from a file, live (a guided session rehearsed on a
recording at real speed), parity of the user bundle with the fit, and one-line errors.

Real decoding, the shipped default bundle (Whisper trunk, Silero VAD), real ONNX Runtime; skips
when ../shared/data is absent. The residual fit itself is tested on generated data.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_mer.adapt import Moment, apply_residual, fit_residual, moment_of, session_plan

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "ravdess" / "audio_speech"
DEFAULT = REPO / "models" / "default"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/ravdess/audio_speech")


def _cli(*args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "edge_mer", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


# --------------------------------------------------------------------------- the fit (generated data)


def test_residual_starts_at_the_head_and_learns_a_person():
    rng = np.random.default_rng(0)
    n, d, c = 120, 32, 4
    y = np.repeat(np.arange(c), n // c)
    z = rng.normal(size=(n, d))
    z[:, :c] += 2.0 * np.eye(c)[y]  # this person's features carry the label ...
    logp = np.log(np.full((n, c), 1.0 / c))  # ... which the population head does not see
    groups = np.array([f"m{i // 5}" for i in range(n)])  # 24 moments of 5 windows
    r, info = fit_residual(z, logp, y, groups)
    assert info["lam"] is not None
    acc = (apply_residual(np.exp(logp), z, r).argmax(axis=1) == y).mean()
    assert acc > 0.9


def test_one_example_per_class_cannot_wreck_a_good_head():
    rng = np.random.default_rng(1)
    c, d = 4, 64
    y = np.arange(c)
    z = rng.normal(size=(c, d))  # one window per label, features of pure noise
    good = np.full((c, c), 0.02)
    good[np.arange(c), y] = 0.94
    r, info = fit_residual(z, np.log(good), y, np.array(["a", "b", "c", "d"]))
    probe = rng.normal(size=(50, d))
    adapted = apply_residual(np.tile(good[0], (50, 1)), probe, r)
    # the head's verdict stands on new windows (noise features: nothing to learn from them)
    assert (adapted.argmax(axis=1) == 0).mean() >= 0.9 and adapted[:, 0].mean() > 0.8
    assert info["lam"] is None or np.abs(r.weight).max() < 1.0


def test_the_fit_reaches_the_regularised_optimum():
    """300 steps (the default) give the optimum that 5000 give: the residual is the L2 fit it says it is."""
    from edge_mer.adapt import _fit_dual, _softmax

    rng = np.random.default_rng(2)
    n, d, c = 90, 256, 8
    y = rng.integers(0, c, n)
    zs = rng.normal(size=(n, d)) + np.eye(c)[y] @ rng.normal(size=(c, d))
    logp = np.log(_softmax(rng.normal(size=(n, c))))
    K = zs @ zs.T
    counts = np.bincount(y, minlength=c).astype(float)
    w = 1.0 / (counts[y] * np.count_nonzero(counts))

    def objective(A, b, lam):
        p = _softmax(logp + K @ A + b)
        return float(np.sum(w * -np.log(p[np.arange(n), y])) + 0.5 * lam * (np.einsum("ic,ij,jc->", A, K, A) + b @ b))

    for lam in (0.01, 1.0):
        assert objective(*_fit_dual(K, logp, y, lam), lam) == pytest.approx(objective(*_fit_dual(K, logp, y, lam, 5000), lam), abs=1e-4)


def test_a_window_belongs_to_a_moment_when_half_of_it_is_inside():
    m = [Moment(Path("x"), 3.0, 6.0, "happy", 0)]
    assert moment_of(2.0, 4.0, m) is m[0]  # 1 of 2 s inside
    assert moment_of(1.5, 3.5, m) is None
    plan = session_plan(["neutral", "happy"], takes=2, seconds=4.0)
    assert [(p.label, p.start_s, p.end_s) for p in plan] == [("neutral", 3.0, 7.0), ("happy", 9.0, 13.0),
                                                             ("neutral", 15.0, 19.0), ("happy", 21.0, 25.0)]


# --------------------------------------------------------------------------- real RAVDESS speech


def _clips(actor: int, per_label: int, labels=("neutral", "happy", "sad", "angry")):
    from training.eval.recordings import ravdess_speech_clips

    clips = [c for c in ravdess_speech_clips(DATA.parent.parent) if c.speaker == actor]
    return [c for lab in labels for c in [c for c in clips if c.label == lab][:per_label]]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    from training.eval.recordings import write_recording

    root = tmp_path_factory.mktemp("adapt")
    rec = write_recording(_clips(actor=3, per_label=3), root / "me.wav", pause_s=0.5)
    moments = root / "me.csv"
    with moments.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["start_s", "end_s", "label"])
        for s in rec.spans[::3] + rec.spans[1::3]:  # 2 of the 3 clips of each label
            w.writerow([f"{s.t_start_s:.3f}", f"{s.t_end_s:.3f}", s.clip.label])
    base = root / "base"
    shutil.copytree(DEFAULT, base)
    user = root / "me_bundle"
    proc = _cli("adapt", "--bundle", str(base), "--media", str(rec.path), "--moments", str(moments), "--out", str(user))
    return {"root": root, "rec": rec, "moments": moments, "base": base, "user": user, "stderr": proc.stderr}


@needs_data
def test_adapt_from_a_file_writes_a_small_user_bundle(session):
    from edge_mer.bundle import Bundle

    user = session["user"]
    manifest = json.loads((user / "manifest.json").read_text())
    assert manifest["kind"] == "user" and manifest["base"]["name"] == json.loads((session["base"] / "manifest.json").read_text())["name"]
    a = manifest["adaptation"]
    assert a["moments"] == 8 and a["moments_per_label"] == {"neutral": 2, "happy": 2, "sad": 2, "angry": 2}
    assert set(a["heads"]) == {"audio"}  # an audio recording reaches the audio head only
    assert a["stores"] == "features and labels only"
    # no copy of the encoders: the user bundle is a manifest and one small array file
    files = [p for p in user.rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["audio.npz", "manifest.json"] and sum(p.stat().st_size for p in files) < 100_000
    assert not any(p.suffix in (".wav", ".jpg", ".onnx") for p in files)
    b = Bundle.load(user)
    assert b.user_root == user and b.labels == Bundle.load(session["base"]).labels
    info = _cli("info", str(user)).stdout
    assert "adapted on  8 labelled moments (neutral 2, happy 2, sad 2, angry 2)" in info
    # the person's feature statistics (the whole session's windows) start the per-user normalisation
    windows = a["heads"]["audio"]["user_statistics_windows"]
    assert windows > a["heads"]["audio"]["windows"]
    assert f"person      audio: per-user statistics start from {windows} windows of this person" in info


@needs_data
def test_run_with_the_user_bundle_applies_exactly_the_fit(session):
    """Parity: the events of `edge-mer run --bundle USER` equal the residual applied by hand to
    the base bundle's own head probabilities of the same windows."""
    from edge_mer.adapt import head_windows, load_residuals, replay_events, session_stats
    from edge_mer.bundle import Bundle
    from edge_mer.config import load_config

    rec = session["rec"].path
    base = Bundle.load(session["base"])
    user = Bundle.load(session["user"])
    cfg = load_config()
    base_events = replay_events(base.root, rec, has_video=False)
    r = load_residuals(user)["audio"]
    # the person's statistics, from the whole adaptation session, start the per-user normalisation
    stats = session_stats(base, [base_events], cfg.runtime)["audio"]
    assert r.user is not None and r.user.windows == stats.windows
    np.testing.assert_allclose(r.user.mean, stats.mean, rtol=1e-5, atol=1e-6)
    hw = head_windows(base, base_events, cfg.runtime, {"audio": r.user})["audio"]
    expected = {k: apply_residual(p, z, r) for k, p, z in zip(hw.event, hw.probs, hw.z)}
    events = [json.loads(x) for x in _cli("run", "--bundle", str(session["user"]), "--audio", str(rec), "--fast").stdout.splitlines()]
    assert len(events) == len(base_events)
    checked = 0
    for k, e in enumerate(events):
        if k in expected:
            got = np.array([e["per_modality"]["audio"][lab] for lab in base.labels])
            np.testing.assert_allclose(got, expected[k], atol=2e-4)
            checked += 1
    assert checked > 10
    # and the adaptation changed something: it reads this person differently from the base
    assert any(np.abs(expected[k] - p).max() > 1e-3 for k, p in zip(hw.event, hw.probs))


@needs_data
def test_bad_adapt_inputs_are_one_line_errors(session, tmp_path):
    rec = session["rec"]

    def moments(rows):
        path = tmp_path / f"m{len(list(tmp_path.iterdir()))}.csv"
        path.write_text("start_s,end_s,label\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
        return str(path)

    cases = {
        "unknown label 'joyful'": [(1.0, 3.0, "joyful"), (4.0, 6.0, "sad")],
        "is outside me.wav": [(1.0, 3.0, "happy"), (40.0, 900.0, "sad")],
        "at least two labels": [(1.0, 3.0, "happy"), (5.0, 7.0, "happy")],
        "no window of it reached a head": [(1.0, 1.2, "happy"), (5.0, 8.0, "sad")],
    }
    for needle, rows in cases.items():
        proc = _cli("adapt", "--bundle", str(session["base"]), "--media", str(rec.path), "--moments", moments(rows),
                    "--out", str(tmp_path / "u"), check=False)
        assert proc.returncode == 2, (needle, proc.stderr)
        assert needle in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, (needle, proc.stderr)
        assert not (tmp_path / "u").exists()  # nothing half-written


@needs_data
def test_a_changed_base_bundle_is_refused(session, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(session["base"], base)
    user = tmp_path / "user"
    shutil.copytree(session["user"], user)
    manifest = json.loads((user / "manifest.json").read_text())
    manifest["base"]["path"] = "../base"
    (user / "manifest.json").write_text(json.dumps(manifest))
    assert _cli("info", str(user), check=False).returncode == 0
    m = json.loads((base / "manifest.json").read_text())
    m["name"] = "someone else's"
    (base / "manifest.json").write_text(json.dumps(m))
    proc = _cli("run", "--bundle", str(user), "--audio", str(session["rec"].path), "--fast", check=False)
    assert proc.returncode != 0 and "changed since the adaptation" in proc.stderr and proc.stderr.count("\n") == 1


@needs_data
def test_live_guided_session_rehearsed_on_a_recording(tmp_path):
    """The guided session (prompts timed from the source's own clock, the runtime's live path) with
    a recording laid out on the session's plan, played at real speed as the source."""
    import soundfile as sf

    from edge_mer.media import load_audio

    plan = session_plan(["neutral", "angry"], takes=2, seconds=3.0)
    end = max(m.end_s for m in plan) + 1.5
    wave = np.zeros(int(end * 16000), np.float32)
    clips = {lab: _clips(actor=5, per_label=2, labels=(lab,)) for lab in ("neutral", "angry")}
    used = {lab: 0 for lab in clips}
    for m in plan:
        clip = clips[m.label][used[m.label]]
        used[m.label] += 1
        x = load_audio(clip.path, 16000)[: int(3.0 * 16000)]
        wave[int(m.start_s * 16000): int(m.start_s * 16000) + len(x)] = x
    rec = tmp_path / "session.wav"
    sf.write(rec, wave, 16000)
    user = tmp_path / "live_user"
    # The session also serves the dashboard: its prompts reach a page (an SSE client here).
    proc = subprocess.Popen([sys.executable, "-m", "edge_mer", "adapt", "--bundle", str(DEFAULT), "--replay", str(rec),
                             "--labels", "neutral,angry", "--takes", "2", "--seconds", "3", "--http", "0", "--out", str(user)],
                            cwd=REPO, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    notices: list[str] = []
    lines: list[str] = []

    def listen(url: str) -> None:
        import urllib.request

        with urllib.request.urlopen(url + "events", timeout=60) as resp:
            kind = None
            for raw in resp:
                line = raw.decode("utf-8").rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: ") and kind == "notice":
                    notices.append(json.loads(line[6:])["text"])
                elif not line:
                    kind = None
                if kind == "end":
                    return

    import re
    import threading

    listener = None
    for line in proc.stderr:
        lines.append(line)
        found = re.search(r"dashboard on (http://\S+/)", line)
        if found and listener is None:
            listener = threading.Thread(target=listen, args=(found.group(1),), daemon=True)
            listener.start()
    assert proc.wait(timeout=300) == 0, "".join(lines)[-2000:]
    stderr = "".join(lines)
    assert "in 1 s: neutral (1/4)" in stderr and "in 1 s: angry (4/4)" in stderr
    assert listener is not None
    listener.join(timeout=10)
    assert any("in 1 s: neutral (1/4)" in n for n in notices) and any("angry (4/4)" in n for n in notices), notices
    a = json.loads((user / "manifest.json").read_text())["adaptation"]
    assert a["source"] == "live session" and a["moments_per_label"] == {"neutral": 2, "angry": 2}
    assert a["heads"]["audio"]["windows"] >= 8
    # the whole session (prompts and gaps included) gives the person's statistics, label-free
    assert a["heads"]["audio"]["user_statistics_windows"] >= a["heads"]["audio"]["windows"]
    events = _cli("run", "--bundle", str(user), "--audio", str(rec), "--fast").stdout.splitlines()
    assert events and all("probs" in json.loads(e) for e in events)
