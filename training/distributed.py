"""torchrun-compatible distributed setup: one call that returns a small frozen object.

``torchrun --nproc_per_node 2 -m training.train ...`` sets RANK, LOCAL_RANK and WORLD_SIZE; a plain
``python -m training.train`` runs as a single process. NCCL serves CUDA, gloo the CPU (so the
tests can run DDP with two CPU processes).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist

from edge_mer.errors import DeviceError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 logs, writes checkpoints and CSV lines."""
        return self.rank == 0


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"train.device must be auto, cpu or cuda, got '{pref}'")
    if pref == "cuda" and not torch.cuda.is_available():
        raise DeviceError("train.device=cuda but no CUDA GPU is visible")
    if pref == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Read the torchrun variables and start the process group when there are several ranks."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_pref, local_rank)
    if world > 1 and not torch_dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch_dist.init_process_group(backend=backend, rank=rank, world_size=world)
        log.info("rank %d/%d on %s (%s)", rank, world, device, backend)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=device)


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """The mean of ``value`` over the ranks (the value itself in a single process)."""
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    torch_dist.all_reduce(t)
    return float(t.item()) / info.world_size


def barrier(info: DistInfo) -> None:
    if info.distributed:
        torch_dist.barrier()


def shutdown(info: DistInfo, synchronize: bool = True) -> None:
    """End the process group. With ``synchronize`` (a rank that finished its work normally) the
    ranks first meet at a barrier, so that no rank tears its gloo pairs down while another is still
    in its last collective (that race aborted a worker now and then with "terminate called without
    an active exception"); a rank leaving on an error skips it rather than wait for ranks that
    may never come."""
    if info.distributed and torch_dist.is_initialized():
        if synchronize:
            torch_dist.barrier()
        torch_dist.destroy_process_group()
