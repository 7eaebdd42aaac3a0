"""Pretraining: all four raw-media encoders end to end, exact resume, no label on the way."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from edge_mer.config import load_config
from training import checkpoint as ckpt
from training.cache import Cache
from training.datasets import ClipStore, ContrastiveDataset, CropSpec, check_label_free, collate_streams
from training.eval.probe import fit_linear_probe
from training.train import PretrainData, main, pretrain

from train_fixtures import make_cache, small_overrides


def _args(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.slow
def test_smoke_four_raw_media_encoders_save_resume_probe(tmp_path, monkeypatch):
    cache = make_cache(tmp_path / "cache")
    streams = ["audio", "face", "landmarks", "text"]

    # Nothing in pretraining may read a label: make any attempt fail loudly.
    def no_labels(self):
        raise AssertionError("pretraining read the labels")

    monkeypatch.setattr(Cache, "labels", no_labels)
    monkeypatch.setattr(Cache, "label_records", no_labels)
    out = tmp_path / "run"
    assert main(["--cache", str(cache), "--out", str(out), *_args(small_overrides(streams, epochs=1))]) == 0
    for name in (ckpt.MODEL_FILE, ckpt.META_FILE, ckpt.STATE_FILE, "run_config.toml", "log.csv", "last/checkpoint.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "checkpoint.json").read_text())
    assert meta["streams"] == streams and meta["epoch"] == 1 and meta["step"] == 2
    assert set(meta["encoders"]) == set(streams)
    assert meta["config"]["train"]["modalities"] == streams

    # Resume: a second epoch continues from last/ (the log keeps epoch 1 and adds epoch 2).
    assert main(["--cache", str(cache), "--out", str(out), *_args(small_overrides(streams, epochs=2))]) == 0
    with (out / "log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_loss/audio-face", "train_loss/landmarks-text"} <= set(rows[0])
    assert ckpt.read_meta(out / "last")["step"] == 4

    # Probe: frozen features of the four encoders, concatenated, into a linear probe.
    monkeypatch.undo()
    encoders = ckpt.load_encoders(out)
    assert all(not e.training for e in encoders.values())
    from training.datasets import load_cache_store

    cfg = load_config([], small_overrides(streams))
    store, ids = load_cache_store(cache, tuple(streams))
    data = ContrastiveDataset(store, ids, tuple(streams), CropSpec(1.0, 3, 4, 16), fixed=True)
    batch = collate_streams([data[i] for i in range(len(data))])
    with torch.no_grad():
        feats = np.hstack([encoders[s](**batch["inputs"][s]).numpy() for s in streams])
    assert feats.shape == (8, 4 * cfg.encoder.feature_dim)
    labels = Cache(cache).labels()
    y = np.array([labels[i] for i in ids])
    probe = fit_linear_probe(feats, y, c=1.0)
    assert probe.predict_proba(feats).shape == (8, 2)


def _store(n: int = 12) -> ClipStore:
    rng = np.random.default_rng(0)
    ids = [f"synth/c{i:02d}" for i in range(n)]
    return ClipStore(logmels={i: rng.normal(size=(128, 120)).astype(np.float32) for i in ids},
                     vectors={"au": {i: rng.normal(size=35).astype(np.float32) for i in ids}})


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    store = _store()
    ids = sorted(store.logmels)
    data = PretrainData(store, ids)
    over = small_overrides(["audio", "au"], epochs=3, batch=4, val=0.25) + ["train.seed=3"]
    full = pretrain(load_config([], over), data, tmp_path / "full")
    # "Interrupted" after epoch 1, then resumed to epoch 3 with the same config.
    pretrain(load_config([], over[:-1] + ["train.epochs=1", "train.seed=3"]), data, tmp_path / "split")
    resumed = pretrain(load_config([], over), data, tmp_path / "split")
    assert full["steps"] == resumed["steps"] == 6
    a = ckpt.read_tensors(tmp_path / "full" / "last")
    b = ckpt.read_tensors(tmp_path / "split" / "last")
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert ckpt.read_meta(tmp_path / "full")["best_val_loss"] == ckpt.read_meta(tmp_path / "split")["best_val_loss"]


def test_au_stats_come_from_training_clips_only(tmp_path):
    store = _store()
    ids = sorted(store.logmels)
    over = small_overrides(["audio", "au"], epochs=1, batch=4, val=0.25)
    pretrain(load_config([], over), PretrainData(store, ids), tmp_path / "r")
    mean = ckpt.read_tensors(tmp_path / "r")["encoders.au.input_mean"].numpy()
    from training.train import split_validation

    train_ids, val_ids = split_validation(ids, 0.25, 0)
    assert np.allclose(mean, np.mean([store.vectors["au"][i] for i in train_ids], axis=0), atol=1e-5)
    assert not np.allclose(mean, np.mean([store.vectors["au"][i] for i in ids], axis=0), atol=1e-5)


def test_pretraining_items_carry_no_label():
    store = _store(4)
    data = ContrastiveDataset(store, sorted(store.logmels), ("audio", "au"), CropSpec(crop_s=0.5))
    batch = collate_streams([data[i] for i in range(4)])
    assert set(batch) == {"inputs", "present"}
    assert set(batch["inputs"]) == {"audio", "au"}
    check_label_free(batch)
    with pytest.raises(ValueError, match="labels must never reach"):
        check_label_free({**batch, "label": torch.zeros(4)})
    with pytest.raises(ValueError, match="labels must never reach"):
        check_label_free({"inputs": {"audio": {"logmel": torch.zeros(1), "y": torch.zeros(1)}}, "present": {}})


def test_crops_are_deterministic_per_epoch_and_differ_between_epochs():
    store = _store(2)
    data = ContrastiveDataset(store, sorted(store.logmels), ("audio", "audio_view2"), CropSpec(crop_s=0.5), seed=1)
    first = data[0]
    assert torch.equal(first["audio"]["logmel"], data[0]["audio"]["logmel"])
    assert first["audio"]["logmel"].shape == (128, 50)
    data.set_epoch(1)
    assert not torch.equal(first["audio"]["logmel"], data[0]["audio"]["logmel"])


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["--cache", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--set", "train.modalities=['audio','au']"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("training.train: error:") and "nope" in err and "\n" not in err
    cache = make_cache(tmp_path / "cache", n=4)
    assert main(["--cache", str(cache), "--out", str(tmp_path / "o"), "--set", "train.modalities=['audio','au']"]) != 0
    assert "--au-csv" in capsys.readouterr().err
    assert main(["--cache", str(cache), "--out", str(tmp_path / "o"), "--set", "train.batch_size=2",
                 "--set", "encoder.options=['audio_tcn.hiden=3']"]) != 0
    assert "unknown key 'hiden'" in capsys.readouterr().err
    assert not (tmp_path / "o" / "checkpoint.json").exists()


def test_speaker_batches_hold_one_speaker_and_split_across_ranks():
    from training.distributed import DistInfo
    from training.train import epoch_batches

    groups = [f"s{i % 3}" for i in range(30)]  # 3 speakers, 10 clips each
    one = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    batches = epoch_batches(30, 4, 0, 0, one, groups)
    assert len(batches) == 6 and all(len(b) == 4 for b in batches)  # 2 full batches per speaker
    assert all(len({groups[i] for i in b}) == 1 for b in batches)
    assert sorted(i for b in batches for i in b) == sorted(set(i for b in batches for i in b))  # no clip twice
    assert batches == epoch_batches(30, 4, 0, 0, one, groups)
    assert batches != epoch_batches(30, 4, 1, 0, one, groups)
    ranks = [epoch_batches(30, 4, 0, 0, DistInfo(rank=r, local_rank=r, world_size=2, device=torch.device("cpu")), groups)
             for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3
    assert not {i for b in ranks[0] for i in b} & {i for b in ranks[1] for i in b}


def test_speaker_batching_trains_and_needs_speaker_ids(tmp_path):
    from edge_mer.errors import ConfigError

    store = _store()
    ids = sorted(store.logmels)
    over = small_overrides(["audio", "au"], epochs=1, batch=2, val=0.25) + ["train.batch_by=speaker"]
    with pytest.raises(ConfigError, match="no speaker ids"):
        pretrain(load_config([], over), PretrainData(store, ids), tmp_path / "none")
    speakers = {i: f"spk{k % 2}" for k, i in enumerate(ids)}
    summary = pretrain(load_config([], over), PretrainData(store, ids, speakers=speakers), tmp_path / "spk")
    assert summary["steps"] > 0
    with pytest.raises(ConfigError, match="batch_by must be"):
        pretrain(load_config([], over[:-1] + ["train.batch_by=actor"]), PretrainData(store, ids, speakers=speakers), tmp_path / "bad")


def test_normalise_per_speaker_standardises_each_speakers_inputs_by_their_own_clips():
    from training.datasets import normalise_per_speaker

    rng = np.random.default_rng(0)
    store = ClipStore()
    speakers = {}
    for spk, (level, spread) in {"a": (-20.0, 1.0), "b": (5.0, 4.0)}.items():
        for k in range(3):
            cid = f"{spk}{k}"
            store.logmels[cid] = rng.normal(level, spread, size=(4, 30 + 10 * k)).astype(np.float32)
            store.vectors.setdefault("au", {})[cid] = rng.normal(level, spread, size=5).astype(np.float32)
            speakers[cid] = spk
    store.vectors["au"]["loner"] = np.ones(5, np.float32)  # a clip without a speaker is dropped
    out = normalise_per_speaker(store, speakers)
    assert "loner" not in out.vectors["au"] and set(out.logmels) == set(speakers)
    for spk in "ab":
        frames = np.concatenate([out.logmels[c] for c in speakers if speakers[c] == spk], axis=1)
        np.testing.assert_allclose(frames.mean(axis=1), 0.0, atol=1e-5)
        np.testing.assert_allclose(frames.std(axis=1), 1.0, atol=1e-4)
        au = np.stack([out.vectors["au"][c] for c in speakers if speakers[c] == spk])
        np.testing.assert_allclose(au.mean(axis=0), 0.0, atol=1e-5)
    # the input store is left as it was
    assert store.logmels["a0"].mean() < -10


def test_speaker_norm_pretrains_on_standardised_inputs_and_writes_the_input_prior(tmp_path, monkeypatch):
    from training.datasets import load_cache_store, logmel_speaker_prior, speaker_logmel_stats
    from training.train import read_input_prior

    cache = make_cache(tmp_path / "cache")
    monkeypatch.setattr(Cache, "labels", lambda self: (_ for _ in ()).throw(AssertionError("pretraining read the labels")))
    out = tmp_path / "run"
    over = small_overrides(["audio", "text"], epochs=1) + ["train.speaker_norm=true"]
    assert main(["--cache", str(cache), "--out", str(out), *_args(over)]) == 0
    mean, std = read_input_prior(out, "audio")
    store, ids = load_cache_store(cache, ("audio",))
    speakers = {i: f"spk{k % 4}" for k, i in enumerate(sorted(ids))}
    ref_mean, ref_std = logmel_speaker_prior(store, speakers)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-5)
    np.testing.assert_allclose(std, ref_std, rtol=1e-5)
    # within plus between speakers: wider than any one speaker's own spread
    within = np.stack([np.sqrt(v) for _, v in speaker_logmel_stats(store, speakers).values()])
    assert np.all(std >= within.min(axis=0) - 1e-6)
    assert json.loads((out / "checkpoint.json").read_text())["config"]["train"]["speaker_norm"] is True


def test_speaker_norm_needs_a_speaker_for_every_clip(tmp_path, capsys):
    import json as _json

    cache = make_cache(tmp_path / "cache", n=4)
    index = cache / "index.jsonl"
    if index.is_file():
        rows = [_json.loads(line) for line in index.read_text().splitlines()]
        rows[0]["speaker"] = ""
        index.write_text("".join(_json.dumps(r) + "\n" for r in rows))
    else:
        pytest.skip("cache index format changed")
    over = small_overrides(["audio", "text"], epochs=1, batch=2) + ["train.speaker_norm=true"]
    assert main(["--cache", str(cache), "--out", str(tmp_path / "o"), *_args(over)]) == 2
    assert "train.speaker_norm" in capsys.readouterr().err
