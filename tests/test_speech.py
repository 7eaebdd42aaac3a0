"""Speech detection (Silero VAD through ONNX Runtime, :mod:`edge_mer.stream.speech`): real speech
windows are kept, noise and tones are not, the stream's state follows overlapping windows exactly
and starts afresh on a gap, bad input gives one-line errors, the bundle carries the detector, and
``edge-mer run`` on pink noise reports "no speech" instead of an emotion."""

from __future__ import annotations

import json
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
from run_fixtures import make_bundle

from conftest import REPO, shared_data
from edge_mer.bundle import Bundle, file_entry, write_manifest
from edge_mer.cli import main
from edge_mer.config import RuntimeCfg, WindowCfg
from edge_mer.errors import BundleError, ConfigError, EdgeMerError
from edge_mer.stream.sources import AudioChunk
from edge_mer.stream.speech import SpeechDetector
from edge_mer.stream.windower import Windower

SR = 16000
VAD_FILE = REPO / "models" / "default" / "detectors" / "silero_vad.onnx"
MIN_FRACTION = RuntimeCfg().vad_min_speech_fraction
# Normal-intensity RAVDESS clips of three actors (neutral, happy, angry).
CLIPS = ("Actor_01/03-01-01-01-01-01-01.flac", "Actor_08/03-01-03-01-02-01-08.flac", "Actor_15/03-01-05-01-01-02-15.flac")


@pytest.fixture(scope="module")
def detector() -> SpeechDetector:
    if not VAD_FILE.is_file():
        pytest.skip(f"needs the shipped Silero VAD at {VAD_FILE}, which is absent here")
    return SpeechDetector.from_file(VAD_FILE, RuntimeCfg(threads=1))


def windows_of(x: np.ndarray, chunk_s: float = 0.1):
    """The runtime's windows (2 s every 0.5 s) of a signal fed in chunks."""
    w = Windower(WindowCfg(window_s=2.0, hop_s=0.5), SR, has_video=False, has_audio=True)
    step = int(chunk_s * SR)
    out = []
    for a in range(0, x.size, step):
        out += w.push(AudioChunk(a / SR, a // step, x[a : a + step]))
    return out + w.flush()


def fractions(detector: SpeechDetector, x: np.ndarray) -> list[float]:
    stream = detector.create_stream(SR)
    return [stream(w.audio, int(round(w.t_start_s * SR))) for w in windows_of(x)]


def pink_noise(seconds: float, dbfs: float, seed: int = 0) -> np.ndarray:
    n = int(seconds * SR)
    spec = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    x = np.fft.irfft(spec / np.sqrt(np.maximum(np.fft.rfftfreq(n, 1 / SR), 20.0)), n)
    x -= x.mean()
    return (x * 10 ** (dbfs / 20) / np.sqrt(np.mean(x**2))).astype(np.float32)


def tone(seconds: float, dbfs: float) -> np.ndarray:
    """A 220 Hz tone with five harmonics (an organ-like note)."""
    t = np.arange(int(seconds * SR)) / SR
    x = sum(np.sin(2 * np.pi * 220 * k * t) / k for k in range(1, 6))
    return (x * 10 ** (dbfs / 20) / np.sqrt(np.mean(x**2))).astype(np.float32)


def write_wav(path: Path, x: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(SR)
        fh.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def test_real_speech_windows_are_kept(detector):
    from edge_mer.media import load_audio

    root = shared_data("ravdess", "audio_speech")
    for clip in CLIPS:
        f = fractions(detector, load_audio(root / clip, SR))
        # Every window of these 3.3-3.7 s clips holds at least 0.8 s of the utterance.
        assert len(f) >= 3 and all(x >= MIN_FRACTION for x in f), (clip, f)


def test_noise_and_a_tone_are_not_speech(detector):
    for name, x in (("pink noise -54 dBFS", pink_noise(6.0, -54)), ("pink noise -20 dBFS", pink_noise(6.0, -20, 1)),
                    ("220 Hz tone -20 dBFS", tone(6.0, -20))):
        f = fractions(detector, x)
        assert len(f) == 9 and max(f) < MIN_FRACTION, (name, f)


def test_overlapping_windows_give_what_the_whole_signal_gives(detector):
    # Noise, a tone and a louder burst: frame probabilities that vary (the state matters).
    x = np.concatenate([pink_noise(1.3, -40), tone(1.1, -25), pink_noise(2.2, -22, 2), tone(1.0, -30)])
    whole = detector.create_stream(SR)
    whole.update(x, 0)
    assert whole.frames_processed == x.size // 512
    stream = detector.create_stream(SR)
    windows = windows_of(x)
    for w in windows:
        start = int(round(w.t_start_s * SR))
        got = stream(w.audio, start)
        end = start + w.audio.size
        np.testing.assert_array_equal(stream.probabilities(start, end), whole.probabilities(start, end))
        assert got == whole.fraction(start, end)
        assert whole.probabilities(start, end).size in (61, 62)  # the 32 ms frames wholly inside 2 s
    assert stream.resets == 0
    # each frame went through the model once, however many windows it was in
    assert stream.frames_processed == int(round(windows[-1].t_end_s * SR)) // 512


def test_a_gap_or_a_jump_back_starts_a_fresh_state(detector):
    x = np.concatenate([tone(2.5, -25), pink_noise(6.0, -30)])
    stream = detector.create_stream(SR)
    stream(x[:32000], 0)
    stream(x[8000:40000], 8000)
    assert stream.resets == 0
    # windows 2 and 3 dropped, yet window 4 starts before the samples processed so far end: no reset
    stream(x[24000:56000], 24000)
    assert stream.resets == 0
    # a gap: the next window starts after everything processed
    later = 80000
    got = stream(x[later : later + 32000], later)
    assert stream.resets == 1
    fresh = detector.create_stream(SR)
    assert got == fresh(x[later : later + 32000], later)
    np.testing.assert_array_equal(stream.probabilities(later, later + 32000), fresh.probabilities(later, later + 32000))
    # time going back (a restarted source)
    stream(x[:32000], 0)
    assert stream.resets == 2


def test_bad_input_gives_one_line_errors(detector):
    for rate in (22050, 44100, 48000):
        with pytest.raises(ConfigError) as exc:
            detector.create_stream(rate)
        msg = str(exc.value)
        assert "\n" not in msg and f"{rate} Hz" in msg and "16000 or 8000" in msg
    assert detector.create_stream(8000).frame_samples == 256
    with pytest.raises(ConfigError, match="vad_threshold"):
        detector.create_stream(SR, threshold=1.5)
    stream = detector.create_stream(SR)
    with pytest.raises(EdgeMerError, match="one channel"):
        stream(np.zeros((2, 32000), np.float32), 0)
    with pytest.raises(EdgeMerError, match="float samples"):
        stream(np.zeros(32000, np.int16), 0)
    with pytest.raises(BundleError, match="model file not found"):
        SpeechDetector.from_file(REPO / "nope.onnx")


def test_bundle_carries_the_detector(tmp_path):
    if not VAD_FILE.is_file():
        pytest.skip(f"needs the shipped Silero VAD at {VAD_FILE}")
    bundle = make_bundle(tmp_path / "b", ["audio"], [["audio"]])
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "detectors").mkdir(exist_ok=True)
    shutil.copy(VAD_FILE, bundle / "detectors" / "silero_vad.onnx")
    manifest["detectors"] = {"vad": file_entry(bundle, "detectors/silero_vad.onnx", type="silero_vad")}
    write_manifest(bundle, manifest)
    assert Bundle.load(bundle).manifest["detectors"]["vad"]["file"] == "detectors/silero_vad.onnx"
    bad = dict(manifest, detectors={"vad": "detectors/silero_vad.onnx"})
    (bundle / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(BundleError, match="detectors.vad must be a file entry"):
        Bundle.load(bundle)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with (bundle / "detectors" / "silero_vad.onnx").open("r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00\x01\x02\x03")
    with pytest.raises(BundleError, match="checksum mismatch for detectors/silero_vad.onnx"):
        Bundle.load(bundle)


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_on_pink_noise_reports_no_speech(tmp_path, capsys):
    if not VAD_FILE.is_file():
        pytest.skip(f"needs the shipped default bundle's Silero VAD at {VAD_FILE}")
    noise = write_wav(tmp_path / "pink.wav", pink_noise(4.0, -54))
    out = tmp_path / "ev.jsonl"
    assert main(["run", "--audio", str(noise), "--fast", "--out", str(out), "--set", "runtime.threads=1"]) == 0
    events = _events(out)
    assert len(events) == 5
    assert all(e["absent"]["audio"] == "no speech" and e["label"] is None for e in events)
    # with runtime.vad off, the same noise is above the silence floor and read as an emotion
    assert main(["run", "--audio", str(noise), "--fast", "--out", str(out), "--set", "runtime.threads=1",
                 "--set", "runtime.vad=false"]) == 0
    assert all("audio" in e["modalities"] for e in _events(out))
    # a bad setting is a one-line error naming it
    capsys.readouterr()
    assert main(["run", "--audio", str(noise), "--fast", "--out", str(out), "--set", "runtime.vad_min_speech_fraction=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runtime.vad_min_speech_fraction = 2.0 is out of range (valid: 0 to 1)" in err[0]


def test_a_bundle_without_a_detector_keeps_the_silence_gate_only(tmp_path):
    bundle = make_bundle(tmp_path / "b", ["audio"], [["audio"]])
    noise = write_wav(tmp_path / "pink.wav", pink_noise(3.0, -54))
    out = tmp_path / "ev.jsonl"
    assert main(["run", "--bundle", str(bundle), "--audio", str(noise), "--fast", "--out", str(out)]) == 0
    assert all("audio" in e["modalities"] for e in _events(out))
