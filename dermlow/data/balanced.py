"""Class-balanced batches for a meta set (Meta-Weight-Net's clean meta batches)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dermlow.data.array_batches import ArrayDataset
from dermlow.data.loading import SampleKey
from dermlow.data.seeding import mix
from dermlow.errors import UserError

_BALANCED = 5  # stream tag, unlike the tags of dermlow.data.loading


class BalancedBatches(Sampler):
    """Endless class-balanced batches of rows (a batch sampler): every batch holds `per_class` =
    max(1, batch_size // classes) rows of each class present, drawn without replacement within
    the batch (with replacement only when a class has fewer rows), seeded by (seed, epoch, rank).

    Meta-Weight-Net's meta batches: "clean and class-balanced" whatever the meta set's counts.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, *, seed: int, epoch: int, rank: int = 0,
                 keys: bool = True):
        labels = np.asarray(labels)
        if len(labels) == 0:
            raise UserError("the meta set is empty: no class has enough training images to give to it.")
        self.members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        self.per_class = max(1, int(batch_size) // len(self.members))
        self.seed, self.epoch, self.rank, self.keys = seed, epoch, rank, keys

    def __iter__(self) -> Iterator[list]:
        state = np.random.SeedSequence([_BALANCED, self.seed, self.epoch, self.rank]).generate_state(2, np.uint32)
        generator = torch.Generator().manual_seed(int(state[1]) << 32 | int(state[0]))
        while True:
            rows: list[int] = []
            for members in self.members:
                if self.per_class <= len(members):
                    pick = torch.randperm(len(members), generator=generator)[: self.per_class]
                else:
                    pick = torch.randint(len(members), (self.per_class,), generator=generator)
                rows.extend(members[pick.numpy()].tolist())
            yield [SampleKey(r, self.seed, self.epoch) for r in rows] if self.keys else rows


def balanced_loader(dataset: Dataset | ArrayDataset, batch_size: int, *, seed: int, epoch: int,
                    rank: int = 0) -> Iterable:
    """Endless class-balanced batches of `dataset` (which has `labels`), made in this process.

    Augmented as the dataset augments training images: a ManifestDataset per image from the
    `SampleKey`s; an ArrayDataset per batch (its `augment`, e.g. CIFAR's pad-crop-flip), drawn
    from a generator seeded by (seed, epoch, rank), so the meta batches of an epoch are reproducible."""
    if isinstance(dataset, ArrayDataset):
        return _array_batches(dataset, BalancedBatches(dataset.labels.numpy(), batch_size, seed=seed, epoch=epoch,
                                                       rank=rank, keys=False), mix(_BALANCED, seed, epoch, rank))
    keys = bool(getattr(dataset, "accepts_sample_keys", False))
    sampler = BalancedBatches(dataset.labels, batch_size, seed=seed, epoch=epoch, rank=rank, keys=keys)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=0)


def _array_batches(dataset: ArrayDataset, sampler: BalancedBatches, seed: int) -> Iterator:
    generator = torch.Generator().manual_seed(seed)  # on the CPU, as ArrayBatches draws its augmentation
    for rows in sampler:
        yield dataset.batch(torch.tensor(rows), generator=generator)
