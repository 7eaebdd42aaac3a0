"""Pretraining on tiny sets: the batch size and the validation split adapt to the data (or the run
is refused with one line naming the fix), streams the cache lacks are dropped, and a resumed
adapted run is byte-identical to the uninterrupted one."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import torch

from edge_mer.config import load_config
from edge_mer.errors import ConfigError
from training import checkpoint as ckpt
from training.datasets import ClipStore
from training.train import PretrainData, main, pretrain

from train_fixtures import make_cache, small_overrides


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _args(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "training.train"]


def _store(n: int) -> ClipStore:
    rng = np.random.default_rng(0)
    ids = [f"synth/c{i:02d}" for i in range(n)]
    return ClipStore(logmels={i: rng.normal(size=(128, 120)).astype(np.float32) for i in ids},
                     vectors={"au": {i: rng.normal(size=35).astype(np.float32) for i in ids}})


def test_tiny_cache_lowers_the_batch_and_trains_without_a_useless_validation(tmp_path, caplog):
    cache = make_cache(tmp_path / "cache", n=6)
    out = tmp_path / "run"
    over = small_overrides(["audio", "landmarks"], epochs=2, batch=32, val=0.1)  # 0.1 x 6 clips = 1 held out
    with caplog.at_level(logging.INFO, logger="training.train"):
        assert main(["--cache", str(cache), "--out", str(out), *_args(over)]) == 0
    warnings = _warnings(caplog)
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("train.val_fraction=0.1 holds out 1 of 6 clips") and "last epoch is kept" in warnings[0]
    assert warnings[1] == "train.batch_size=32: 6 training clips for 1 process(es); using train.batch_size=6"
    assert not any("n/a" in r.getMessage() for r in caplog.records)
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["epoch"] == 2 and meta["step"] == 2  # one batch of all six clips per epoch
    assert meta["config"]["train"]["batch_size"] == 6 and meta["config"]["train"]["val_fraction"] == 0.0
    assert meta["adapted"]["train.batch_size"]["from"] == 32 and meta["adapted"]["train.val_fraction"]["from"] == 0.1
    assert "batch_size = 6" in (out / "run_config.toml").read_text()
    with (out / "log.csv").open() as fh:
        assert [r["val_loss"] for r in csv.DictReader(fh)] == ["", ""]
    assert ckpt.read_meta(out / "last")["epoch"] == 2  # the last epoch is the selected one


def test_adapted_run_resumes_byte_identically(tmp_path):
    store = _store(5)
    ids = sorted(store.logmels)
    over = small_overrides(["audio", "au"], epochs=3, batch=32, val=0.1) + ["train.seed=2"]
    full = pretrain(load_config([], over), PretrainData(store, ids), tmp_path / "full")
    assert full["batch_size"] == 5 and full["val_clips"] == 0 and full["steps"] == 3
    pretrain(load_config([], over + ["train.epochs=1"]), PretrainData(store, ids), tmp_path / "split")
    resumed = pretrain(load_config([], over), PretrainData(store, ids), tmp_path / "split")
    assert resumed["steps"] == 3
    a, b = ckpt.read_tensors(tmp_path / "full" / "last"), ckpt.read_tensors(tmp_path / "split" / "last")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    # The data changed under the run: the adapted batch would differ, so the resume is refused.
    with pytest.raises(ckpt.CheckpointError, match="train.batch_size=5"):
        pretrain(load_config([], over + ["train.epochs=4"]), PretrainData(store, ids[:4]), tmp_path / "split")


def test_speaker_batches_shrink_to_the_largest_speaker_or_are_refused(tmp_path, caplog):
    store = _store(8)
    ids = sorted(store.logmels)
    speakers = {i: ("a" if k < 3 else "b") for k, i in enumerate(ids)}  # 3 and 5 clips
    over = small_overrides(["audio", "au"], epochs=1, batch=32) + ["train.batch_by=speaker"]
    with caplog.at_level(logging.WARNING, logger="training.train"):
        summary = pretrain(load_config([], over), PretrainData(store, ids, speakers=speakers), tmp_path / "spk")
    assert summary["batch_size"] == 5 and summary["steps"] == 1
    assert _warnings(caplog) == ["train.batch_size=32: the largest speaker has 5 training clips for 1 process(es) "
                                 "(train.batch_by=speaker); using train.batch_size=5"]
    lonely = {i: f"s{k}" for k, i in enumerate(ids)}  # one clip per speaker: no pair within a speaker
    with pytest.raises(ConfigError, match=r"needs at least 2: add clips, set train.batch_by='clip'$"):
        pretrain(load_config([], over), PretrainData(store, ids, speakers=lonely), tmp_path / "lonely")


def test_a_single_clip_is_refused_with_the_fix(tmp_path, capsys):
    cache = make_cache(tmp_path / "cache", n=1)
    over = small_overrides(["audio", "landmarks"], epochs=1, batch=32, val=0.1)
    assert main(["--cache", str(cache), "--out", str(tmp_path / "o"), *_args(over)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["training.train: error: train.batch_size=32: 1 training clips for 1 process(es), "
                   "and a contrastive batch needs at least 2: add clips"]
    assert not (tmp_path / "o").exists()


def _drop_text(cache):
    from training.cache import merge, open_cache, write_clip

    c = open_cache(cache)
    for clip_id in c.ids:
        arrays = {k: v for k, v in c.load(clip_id).items() if k != "text"}
        row = {**c.index(clip_id), "streams": ["audio", "face", "landmarks"], "text_source": None}
        write_clip(cache, clip_id, arrays, row)
    merge(cache)
    return cache


def test_a_stream_the_cache_lacks_is_dropped_with_a_warning(tmp_path, caplog, capsys):
    cache = _drop_text(make_cache(tmp_path / "cache", n=4))
    out = tmp_path / "run"
    over = small_overrides(["audio", "landmarks", "text"], epochs=1, batch=2)
    with caplog.at_level(logging.INFO, logger="training.train"):
        assert main(["--cache", str(cache), "--out", str(out), *_args(over)]) == 0
    assert _warnings(caplog) == ["train.modalities: dropping text (the cache has no text: preprocess with "
                                 "text.vosk_model set or give transcripts); pretraining audio+landmarks"]
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["streams"] == ["audio", "landmarks"] and set(meta["encoders"]) == {"audio", "landmarks"}
    assert meta["config"]["train"]["modalities"] == ["audio", "landmarks"]
    assert not any(k.startswith(("encoders.text", "projectors.text")) for k in ckpt.read_tensors(out))
    with (out / "log.csv").open() as fh:
        assert not any("text" in k for k in next(csv.DictReader(fh)))  # no text pair was trained
    # Fewer than two streams left: refused, with the reason.
    capsys.readouterr()
    over = small_overrides(["audio", "text"], epochs=1, batch=2)
    assert main(["--cache", str(cache), "--out", str(tmp_path / "o2"), *_args(over)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the cache has no text" in err[0] and "fewer than two streams remain" in err[0]
    # Named pairs that all need the dropped stream: refused rather than trained on a zero loss.
    over = small_overrides(["audio", "landmarks", "text"], epochs=1, batch=2) + ["loss.pairs=['audio-text']"]
    assert main(["--cache", str(cache), "--out", str(tmp_path / "o3"), *_args(over)]) == 2
    assert "loss.pairs=['audio-text']: no pair left" in capsys.readouterr().err
