"""Seeds and sample order of an epoch, as pure functions of (run seed, epoch).

The order of an epoch is `epoch_permutation(n, seed, epoch)`. An ISIC image's augmentation is
drawn from `item_seed(seed, epoch, manifest index)`; a benchmark batch's from
`batch_seed(seed, epoch, rank, step)`. Nothing here reads or moves a global random state, so
batches do not depend on the number of loader workers, on which weighting method runs, or on
whether a run was resumed.
"""

from __future__ import annotations

import numpy as np
import torch

from dermlow.distributed import shard

# Stream tags keep the permutation, item, loader, worker and batch seeds of one (seed, epoch) unrelated.
PERMUTATION, ITEM, LOADER, WORKER, BATCH = 1, 2, 3, 4, 5


def mix(*words: int) -> int:
    """A 64-bit seed that is a pure function of non-negative integers (numpy SeedSequence hashing)."""
    if any(w < 0 for w in words):
        raise ValueError(f"seeds, epochs and indices must be non-negative, got {words}")
    lo, hi = np.random.SeedSequence(list(words)).generate_state(2, np.uint32)
    return int(hi) << 32 | int(lo)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of the sample with manifest index `index` in epoch `epoch` of run seed `seed`."""
    return mix(ITEM, seed, epoch, index)


def batch_seed(seed: int, epoch: int, rank: int, step: int) -> int:
    """The augmentation seed of batch `step` (0-based) of process `rank` in epoch `epoch`."""
    return mix(BATCH, seed, epoch, rank, step)


def epoch_permutation(n: int, seed: int, epoch: int, pass_: int = 0) -> torch.Tensor:
    """Order of the n training samples in an epoch: a pure function of (seed, epoch); `pass_` > 0
    gives the further, independent orders of an epoch that passes over the data several times."""
    words = (PERMUTATION, seed, epoch) if pass_ == 0 else (PERMUTATION, seed, epoch, pass_)
    generator = torch.Generator().manual_seed(mix(*words))
    return torch.randperm(n, generator=generator)


def epoch_rows(n: int, *, shuffle: bool, seed: int, epoch: int, rank: int = 0, world: int = 1,
               passes: int = 1) -> list[int]:
    """Rows of process `rank` in an epoch: `epoch_permutation` order (row order if not shuffled),
    dealt out over `world` processes and padded by wrapping so every process takes as many steps.
    `passes` = k > 1 (shuffled only): k independent orders one after the other, the first being
    the order of a one-pass epoch."""
    if passes < 1 or (passes > 1 and not shuffle):
        raise ValueError(f"passes must be >= 1 (and > 1 only when shuffling), got {passes}")
    rows = ([r for k in range(passes) for r in epoch_permutation(n, seed, epoch, k).tolist()] if shuffle
            else list(range(n)))
    return shard(rows, rank, world)
