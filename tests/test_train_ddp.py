"""DDP: two CPU processes (gloo), as torchrun would start them."""

from __future__ import annotations

import socket

import pytest
import torch.multiprocessing as mp

from training import checkpoint as ckpt

from train_fixtures import ddp_worker


@pytest.mark.slow
def test_two_process_gloo_pretraining(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(ddp_worker, args=(2, port, str(tmp_path / "run")), nprocs=2, join=True)
    meta = ckpt.read_meta(tmp_path / "run" / "last")
    # 12 training clips dealt to 2 ranks, batch 2 per rank: 3 steps per epoch, 2 epochs.
    assert meta["epoch"] == 2 and meta["step"] == 6
    state = ckpt.read_trainer_state(tmp_path / "run" / "last")
    assert len(state["rng"]) == 2  # every rank's RNG state is kept for an exact resume
    assert (tmp_path / "run" / "log.csv").read_text().count("\n") == 3
