"""Dataset readers on small generated files in each dataset's real naming and format: ids,
speakers, media roles, transcripts, labels kept apart, and bad names reported."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import shared_data
from edge_mer.errors import MediaError
from media_fixtures import make_csd
from training.data.crema_d import CremaDReader, parse_crema_name
from training.data.manifest import ManifestReader
from training.data.mosei import EMOTIONS, MoseiReader, load_folds, read_csd_metadata
from training.data.ravdess import AU_COLUMNS, RavdessReader, load_action_units, load_landmark_csv, parse_ravdess_name


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


# --------------------------------------------------------------------------- RAVDESS


def test_ravdess_reader_roles_ids_and_labels(tmp_path):
    _touch(tmp_path / "Actor_12" / "03-01-05-02-01-01-12.flac")
    _touch(tmp_path / "Actor_12" / "03-01-05-02-01-02-12.wav")
    _touch(tmp_path / "video" / "01-01-05-02-01-01-12.mp4")
    _touch(tmp_path / "video" / "02-01-05-02-01-01-12.mp4")
    _touch(tmp_path / "video" / "02-01-05-02-01-01-12.csv").write_text("frame, timestamp\n")
    _touch(tmp_path / "video" / "song_take3.mp4")  # not a RAVDESS name
    _touch(tmp_path / "03-01-09-01-01-01-01.wav")  # emotion 09 is out of range
    _touch(tmp_path / "notes.txt")  # not media: ignored
    reader = RavdessReader(tmp_path)
    clips = {c.id: c for c in reader.clips()}
    assert sorted(clips) == ["ravdess/01-01-05-02-01-01-12", "ravdess/02-01-05-02-01-01-12",
                             "ravdess/03-01-05-02-01-01-12", "ravdess/03-01-05-02-01-02-12"]
    audio_only = clips["ravdess/03-01-05-02-01-01-12"]
    assert set(audio_only.media) == {"audio"} and audio_only.speaker == "ravdess_actor12"
    assert audio_only.transcript == "Kids are talking by the door"
    av = clips["ravdess/01-01-05-02-01-01-12"]
    assert av.media["audio"] == av.media["video"] and "landmarks_csv" not in av.media
    assert av.meta["clip_key"] == audio_only.meta["clip_key"]  # the same performance
    video_only = clips["ravdess/02-01-05-02-01-01-12"]
    assert set(video_only.media) == {"video", "landmarks_csv"}
    assert not hasattr(audio_only, "label")  # labels never ride on the clip
    labels = reader.labels()
    assert labels["ravdess/03-01-05-02-01-01-12"] == {"label": "angry", "emotion": 5, "intensity": 2}
    failed = sorted(f.path.rsplit("/", 1)[-1] for f in reader.failures)
    assert failed == ["03-01-09-01-01-01-01.wav", "song_take3.mp4"]


def test_ravdess_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(MediaError, match="RAVDESS directory not found"):
        RavdessReader(tmp_path / "nope")


def test_load_action_units_from_generated_csv(tmp_path):
    header = ["clip", "matching_audio_wav", "actor", "emotion_code", *AU_COLUMNS, "audio_000"]
    rows = [["01-01-03-01-02-01-07", "x.wav", "07", "03", *[str(i / 10) for i in range(35)], "9"]]
    path = tmp_path / "au.csv"
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    aus = load_action_units(path)
    key = parse_ravdess_name("03-01-03-01-02-01-07").clip_key
    assert list(aus) == [key]
    np.testing.assert_allclose(aus[key], np.arange(35) / 10, rtol=1e-6)
    (tmp_path / "bad.csv").write_text("clip,foo\n01-01-03-01-02-01-07,1\n")
    with pytest.raises(MediaError, match="missing columns"):
        load_action_units(tmp_path / "bad.csv")


@pytest.mark.data
def test_load_action_units_real_csv_matches_audio_files():
    aus = load_action_units(shared_data("ravdess", "openface_au", "au_audio_per_clip.csv"))
    assert len(aus) == 1200
    audio = RavdessReader(shared_data("ravdess", "audio_speech"))
    keys = {c.meta["clip_key"] for c in audio.clips()}
    assert keys == set(aus)  # every audio clip has its AUs and vice versa
    values = np.stack(list(aus.values()))
    assert values.shape == (1200, 35) and values.dtype == np.float32
    assert values[:, :17].max() <= 5.0 and 0.0 <= values[:, 17:].min() and values[:, 17:].max() <= 1.0


def test_load_landmark_csv_keeps_tracked_frames(tmp_path):
    cols = ["frame", "timestamp", "confidence", "success"] + [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
    lines = [", ".join(cols)]  # OpenFace writes ", " separators
    for f in range(3):
        vals = [f + 1, f / 30, 0.9, 0 if f == 1 else 1] + [100 + i + f for i in range(68)] + [200 + i for i in range(68)]
        lines.append(", ".join(str(v) for v in vals))
    path = tmp_path / "01-01-01-01-01-01-01.csv"
    path.write_text("\n".join(lines) + "\n")
    t, pts = load_landmark_csv(path)
    np.testing.assert_allclose(t, [0.0, 2 / 30], rtol=1e-6)
    assert pts.shape == (2, 68, 2) and pts[1, 5, 0] == 107 and pts[1, 5, 1] == 205


# --------------------------------------------------------------------------- CREMA-D


def test_crema_d_merges_formats_and_labels(tmp_path):
    _touch(tmp_path / "VideoFlash" / "1001_DFA_ANG_XX.flv")
    _touch(tmp_path / "AudioWAV" / "1001_DFA_ANG_XX.wav")
    _touch(tmp_path / "AudioMP3" / "1002_IEO_HAP_HI.mp3")
    _touch(tmp_path / "VideoMP4" / "1003_TSI_SAD_LO.mp4")
    _touch(tmp_path / "AudioMP3" / "1002_IEO_XYZ_HI.mp3")
    (tmp_path / "labels.tsv").write_text("path\tclip\tcrowd_vote_voice\nx\t1001_DFA_ANG_XX\tA\n")
    reader = CremaDReader(tmp_path)
    clips = {c.id: c for c in reader.clips()}
    assert sorted(clips) == ["crema-d/1001_DFA_ANG_XX", "crema-d/1002_IEO_HAP_HI", "crema-d/1003_TSI_SAD_LO"]
    ang = clips["crema-d/1001_DFA_ANG_XX"]
    assert ang.media["video"].endswith(".flv") and ang.media["audio"].endswith(".wav")
    assert ang.speaker == "crema-d_1001" and ang.transcript == "Don't forget a jacket"
    assert set(clips["crema-d/1002_IEO_HAP_HI"].media) == {"audio"}
    mp4 = clips["crema-d/1003_TSI_SAD_LO"]
    assert mp4.media["audio"] == mp4.media["video"]
    labels = reader.labels()
    assert labels["crema-d/1001_DFA_ANG_XX"] == {"label": "anger", "level": "unspecified", "crowd_vote_voice": "A"}
    assert labels["crema-d/1003_TSI_SAD_LO"]["level"] == "low"
    assert [f.path.rsplit("/", 1)[-1] for f in reader.failures] == ["1002_IEO_XYZ_HI.mp3"]
    with pytest.raises(ValueError):
        parse_crema_name("1001_DFA_ANG.flv")


# --------------------------------------------------------------------------- generic manifest


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_manifest_of_three_files(tmp_path, fmt):
    for name in ("rec/a.wav", "rec/b.mp4", "rec/c.flac"):
        _touch(tmp_path / name)
    rows = [
        {"path": "rec/a.wav", "speaker": "ann", "transcript": "hello there", "label": "happy"},
        {"path": "rec/b.mp4", "speaker": "bob", "transcript": "", "label": ""},
        {"path": str(tmp_path / "rec/c.flac"), "speaker": "ann", "id": "third take"},
    ]
    path = tmp_path / f"mine.{fmt}"
    if fmt == "csv":
        cols = ["path", "speaker", "transcript", "label", "id"]
        path.write_text("\n".join([",".join(cols)] + [",".join(r.get(c, "") for c in cols) for r in rows]) + "\n")
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    reader = ManifestReader(path)
    clips = list(reader.clips())
    assert [c.id for c in clips] == ["mine/rec/a", "mine/rec/b", "mine/third_take"]
    assert [c.speaker for c in clips] == ["ann", "bob", "ann"]
    assert clips[0].transcript == "hello there" and clips[1].transcript is None
    assert set(clips[0].media) == {"audio"} and set(clips[1].media) == {"audio", "video"}
    assert clips[2].media["audio"] == str(tmp_path / "rec/c.flac")
    assert reader.labels() == {"mine/rec/a": {"label": "happy"}}


def test_manifest_errors_name_the_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"path": "a.wav", "speaker": "x"}\n{"path": "b.wav"}\n')
    with pytest.raises(MediaError, match=r"m.jsonl:2: 'speaker' is empty"):
        list(ManifestReader(path).clips())
    path.write_text('{"path": "a.txt", "speaker": "x"}\n')
    with pytest.raises(MediaError, match="unknown media type"):
        list(ManifestReader(path).clips())


# --------------------------------------------------------------------------- CMU-MOSEI


def make_mosei(root):
    """Two videos in the SDK layout: labels (7 numbers per segment), timestamped words, folds."""
    labels = {
        "vidA": (np.array([[1.0, 2.0, 0, 0, 0.33, 0, 0], [-1.0, 0, 1.0, 0.66, 0, 0, 0]]), [[0.0, 2.0], [2.0, 4.5]]),
        "vidB-x_1": (np.array([[0.0, 0, 0, 0, 0, 0, 0]]), [[1.0, 3.0]]),
    }
    make_csd(root / "CMU_MOSEI_Labels.csd", "All Labels", labels, {"root name": "All Labels", "dimension names": "x"})
    words = {
        "vidA": (np.array([[b"i"], [b"sp"], [b"love"], [b"it"], [b"not"], [b"today"]]),
                 [[0.1, 0.3], [0.3, 0.5], [0.5, 1.0], [1.0, 1.9], [2.2, 2.6], [2.6, 3.4]]),
        "vidB-x_1": (np.array([[b"sp"]]), [[1.0, 3.0]]),
    }
    make_csd(root / "CMU_MOSEI_TimestampedWords.csd", "words", words)
    (root / "cmu_mosei_std_folds.py").write_text(
        "standard_train_fold = ['vidA']\nstandard_valid_fold = []\nstandard_test_fold = ['vidB-x_1']\n")


def test_mosei_segments_words_labels_and_folds(tmp_path):
    make_mosei(tmp_path)
    _touch(tmp_path / "Videos" / "vidA.mp4")
    reader = MoseiReader(tmp_path)
    clips = list(reader.clips())
    assert [c.id for c in clips] == ["mosei/vidA/0", "mosei/vidA/1", "mosei/vidB-x_1/0"]
    assert [c.transcript for c in clips] == ["i love it", "not today", None]
    assert (clips[1].start_s, clips[1].end_s) == (2.0, 4.5)
    assert clips[0].media == {"video": str(tmp_path / "Videos" / "vidA.mp4"), "audio": str(tmp_path / "Videos" / "vidA.mp4")}
    assert clips[2].media == {} and clips[0].speaker == "mosei_vidA"
    labels = reader.labels()
    assert labels["mosei/vidA/0"]["label"] == ["happy", "surprise"]
    assert labels["mosei/vidA/1"]["label"] == ["sad", "anger"] and labels["mosei/vidA/1"]["sentiment"] == -1.0
    assert labels["mosei/vidB-x_1/0"]["label"] == [] and labels["mosei/vidB-x_1/0"]["fold"] == "test"
    assert set(labels["mosei/vidA/0"]["intensity"]) == set(EMOTIONS)
    assert read_csd_metadata(tmp_path / "CMU_MOSEI_Labels.csd")["root name"] == "All Labels"


def test_mosei_folds_json_and_conflicts(tmp_path):
    (tmp_path / "f.json").write_text(json.dumps({"train": ["a"], "valid": ["b"], "test": ["a"]}))
    with pytest.raises(MediaError, match="both"):
        load_folds(tmp_path / "f.json")
    (tmp_path / "g.json").write_text(json.dumps({"train": ["a"], "test": ["c"]}))
    assert load_folds(tmp_path / "g.json") == {"a": "train", "c": "test"}


def test_mosei_rejects_a_non_csd_file(tmp_path):
    (tmp_path / "CMU_MOSEI_Labels.csd").write_bytes(b"not hdf5 at all")
    with pytest.raises(MediaError, match="cannot read as HDF5"):
        list(MoseiReader(tmp_path).clips())
