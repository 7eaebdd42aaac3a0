"""Property-based checks (Hypothesis) of the edges a user can reach: generated ``--set`` overrides
at the config loader, truncated and byte-flipped media at the decoder, and both at ``edge-mer run``.
Whatever is thrown: the exit code is one of the documented ones (0, 2 config, 3 media/input), stderr
is one line (no traceback), and no file outside the run's own output is created or replaced."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="needs the PyPI package hypothesis (the dev extra)")
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from run_fixtures import make_bundle  # noqa: E402

from edge_mer.config import Config, load_config  # noqa: E402
from edge_mer.errors import ConfigError  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "crema-d_1001_DFA_six_emotions.mp4"
EXIT_CODES = {0, 2, 3}

# Real keys (and a few that are not), values of every shape a typo or a script could produce.
KEYS = ["face.scale_factor", "face.min_face_size_px", "face.detect_every_n", "face.min_face_fraction",
        "face.thresholds", "face.image_size", "audio.n_mels", "audio.sample_rate_hz", "window.window_s",
        "window.hop_s", "runtime.threads", "runtime.queue_size", "runtime.queue_max_mb", "runtime.drop_policy",
        "runtime.vad_threshold", "runtime.vad_min_speech_fraction", "runtime.smoothing_tau_s",
        "runtime.max_frame_side_px", "runtime.precision", "text.asr", "text.context_s", "face.nope", "nope.key"]
VALUES = st.one_of(
    st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "true", "false", "[]", "[1, 2]", "[0.5, 0.5, 0.5]", '"x"', "oldest", "newest", "auto",
                     "int8", "whisper", "vosk", "1e400", "-0", "None", "{}", "[[1]]"]),
    # Any text a command line can carry: an argument cannot hold a NUL byte (exec refuses it before
    # edge-mer runs), so generating one tests the test harness, not the program.
    st.text(st.characters(exclude_characters="\x00"), max_size=12))


def _one_line(err: str) -> bool:
    """One error line (log WARNING lines beside it, such as where the events so far were kept, are
    allowed) and no traceback."""
    import re

    lines = [line for line in err.strip().splitlines()
             if line.strip() and not re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (WARNING|INFO) ", line)]
    return len(lines) <= 1 and "Traceback" not in err


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
def test_config_overrides_load_or_fail_in_one_line(pairs):
    overrides = [f"{k}={v}" for k, v in pairs]
    try:
        cfg = load_config([], overrides)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert isinstance(cfg, Config)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("prop") / "b", ["audio"], [["audio"]])


SAMPLE_BYTES = SAMPLE.read_bytes()


def _run(argv: list[str]) -> tuple[int, str]:
    """``edge-mer ARGV`` in a fresh process whose address space is capped at 6 GB: a generated
    input that made the runtime allocate without bound fails this test (MemoryError, a traceback)
    instead of taking the test machine down."""
    import resource
    import subprocess
    import sys

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))

    proc = subprocess.run([sys.executable, "-m", "edge_mer", *argv], capture_output=True, text=True, timeout=300,
                          preexec_fn=cap, cwd=REPO)
    return proc.returncode, proc.stderr


@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0.0, 1.0), flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=40),
       suffix=st.sampled_from([".mp4", ".flac", ".wav", ".mp3"]), as_video=st.booleans())
# found by this test: a header byte zeroed leaves the audio stream without a codec context, and
# probing it raised AttributeError (a traceback) instead of "corrupt media"
@example(cut=0.2, flips=[(0.09966098388819791, 0)], suffix=".mp4", as_video=False)
def test_damaged_media_at_the_cli(bundle, tmp_path_factory, cut, flips, suffix, as_video):
    tmp = tmp_path_factory.mktemp("damaged")
    data = bytearray(SAMPLE_BYTES[: int(len(SAMPLE_BYTES) * cut)])
    for pos, value in flips:
        if data:
            data[min(len(data) - 1, int(pos * len(data)))] = value
    media = tmp / f"clip{suffix}"
    media.write_bytes(bytes(data))
    out = tmp / "events.jsonl"
    before = sorted(os.listdir(tmp))
    rc, err = _run(["run", "--bundle", str(bundle), "--video" if as_video else "--audio", str(media), "--fast",
                    "--out", str(out), "--set", "runtime.threads=1"])
    assert rc in EXIT_CODES, err
    assert _one_line(err) or rc == 0, err  # a successful run may log warnings (a truncated file says so)
    assert "Traceback" not in err
    after = set(os.listdir(tmp)) - set(before)
    # a run that stops on a damaged file keeps its events so far as FILE.partial (and says so)
    # (and its run config beside it); never a file of that name that looks complete
    allowed = {"events.jsonl", "events.jsonl.run_config.toml"}
    if rc != 0:
        allowed = {"events.jsonl.partial", "events.jsonl.run_config.toml"}
    assert after <= allowed, (rc, err, after)
    assert media.read_bytes() == bytes(data)  # the input is never touched


@pytest.mark.slow
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=2))
def test_overrides_at_the_cli(bundle, tmp_path_factory, pairs):
    tmp = tmp_path_factory.mktemp("over")
    out = tmp / "events.jsonl"
    argv = ["run", "--bundle", str(bundle), "--audio", str(SAMPLE), "--fast", "--out", str(out)]
    for k, v in pairs:
        argv += ["--set", f"{k}={v}"]
    rc, err = _run(argv)
    assert rc in EXIT_CODES, err
    assert "Traceback" not in err, err
    if rc != 0:
        assert _one_line(err), err
        assert not out.exists()
