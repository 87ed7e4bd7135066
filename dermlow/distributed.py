"""Multi-process training with PyTorch's own engine (torchrun + DistributedDataParallel).

`torchrun --nproc-per-node N -m dermlow train ...` sets RANK / WORLD_SIZE / LOCAL_RANK; dermlow
then joins the process group (NCCL on GPUs, gloo on CPU), shards every epoch's seeded order
across processes, and gathers per-sample records and evaluation outputs to rank 0, which alone
writes the run folder. Padding samples (added so that every process takes the same number of
steps) are dropped when gathering, so each image appears exactly once per epoch.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def env_world_size() -> int:
    """WORLD_SIZE set by torchrun (1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_env(device_name: str) -> torch.device:
    """Join the process group torchrun describes and return this process's device."""
    use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    log.debug("rank %d of %d on %s", dist.get_rank(), dist.get_world_size(), device)
    return device


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        dist.barrier()


def shard(rows: list[int], rank_: int, world_: int) -> list[int]:
    """This rank's share of an epoch order, padded by wrapping so every rank gets the same count."""
    if world_ == 1:
        return rows
    total = -(-len(rows) // world_) * world_
    padded = list(rows)
    while len(padded) < total:
        padded += rows[: total - len(padded)]
    return padded[rank_::world_]


def gather_arrays(parts: dict[str, np.ndarray], *, key: str = "index") -> dict[str, np.ndarray]:
    """All ranks' arrays concatenated on rank 0, each `key` value kept once (drops padding).

    Order: rank 0's rows first, then rank 1's, ... with later duplicates removed. Non-main ranks
    get their own arrays back (they write nothing).
    """
    if not active():
        return parts
    everything: list[dict[str, np.ndarray] | None] = [None] * world()
    dist.all_gather_object(everything, parts)
    if not is_main():
        return parts
    merged = {k: np.concatenate([p[k] for p in everything]) for k in parts}
    _, first = np.unique(merged[key], return_index=True)
    keep = np.sort(first)
    return {k: v[keep] for k, v in merged.items()}


def gather_objects(obj: object) -> list:
    """Every rank's `obj`, in rank order (a one-element list without distribution)."""
    if not active():
        return [obj]
    out: list = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def launch(nproc: int, argv: list[str]) -> int:
    """`dermlow train --nproc N ...`: re-run the same command under torchrun with N processes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "dermlow", *argv]
    log.info("launching: %s", " ".join(cmd))
    return subprocess.call(cmd)


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
