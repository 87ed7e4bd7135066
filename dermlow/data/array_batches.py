"""In-memory benchmark images (MNIST, CIFAR, digits) made into batches a whole batch at a time.

No per-item work and no loader processes: an epoch indexes the uint8 image tensor (moved once
to the training device) with `seeding.epoch_rows`, scales and augments each batch on that device,
and normalises it. A batch's augmentation is drawn from one generator seeded by
`seeding.batch_seed(seed, epoch, rank, step)`, so the batches are a pure function of
(seed, epoch), on any device. The random numbers themselves are drawn on the CPU, so a CPU and
a GPU run of one seed see the same crops and flips.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from dermlow.data.seeding import batch_seed, epoch_rows

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # images, labels, manifest indices


def _per_channel(values: Sequence[float] | None, channels: int, default: float) -> torch.Tensor:
    v = torch.tensor([default] if values is None else list(values), dtype=torch.float32)
    if v.numel() not in (1, channels):
        raise ValueError(f"need 1 or {channels} normalisation values, got {v.numel()}")
    return v.expand(channels).reshape(channels, 1, 1).clone()


class PadCropFlip:
    """The standard CIFAR augmentation for a batch (B x C x H x W): a random H x W crop of each
    image zero-padded by `pad` on every side, mirrored left-right with probability 1/2. Offsets
    and flips come from `generator` (a CPU generator); the pixels move on the batch's device."""

    def __init__(self, pad: int = 4):
        if pad < 0:
            raise ValueError(f"pad must be >= 0, got {pad}")
        self.pad = pad

    def __call__(self, x: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        b, _, h, w = x.shape
        offsets = torch.randint(0, 2 * self.pad + 1, (b, 2), generator=generator).to(x.device)
        flips = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        padded = torch.nn.functional.pad(x, (self.pad,) * 4)
        rows = offsets[:, :1] + torch.arange(h, device=x.device)  # B x H
        cols = torch.arange(w, device=x.device).expand(b, w)
        cols = torch.where(flips[:, None], w - 1 - cols, cols) + offsets[:, 1:]  # B x W
        batch = torch.arange(b, device=x.device)[:, None, None]
        return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()

    def __repr__(self) -> str:
        return f"PadCropFlip(pad={self.pad})"


class ArrayDataset:
    """uint8 images (NHW or NHWC) with labels and manifest indices. `batch(rows)` gives
    (images B x C x H x W float32 scaled to [0, 1], augmented when a generator is given, then
    normalised with mean/std (None: none); labels; indices); `dataset[row]` is one row, unaugmented.
    """

    def __init__(self, images: np.ndarray, labels: Sequence[int], indices: Sequence[int], *,
                 augment: Callable[..., torch.Tensor] | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
            raise ValueError(f"expected uint8 images shaped NHW or NHWC (C 1 or 3), got {images.dtype} {images.shape}")
        if images.ndim == 3:
            images = images[..., None]
        self.images = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
        self.labels = torch.tensor(np.asarray(labels, dtype=np.int64))
        self.indices = torch.tensor(np.asarray(indices, dtype=np.int64))
        if not len(self.images) == len(self.labels) == len(self.indices):
            raise ValueError(f"{len(self.images)} images, {len(self.labels)} labels, {len(self.indices)} indices")
        channels = self.images.shape[1]
        self.augment = augment
        self.mean, self.std = _per_channel(mean, channels, 0.0), _per_channel(std, channels, 1.0)

    def __len__(self) -> int:
        return len(self.indices)

    def batch(self, rows: torch.Tensor, *, generator: torch.Generator | None = None,
              images: torch.Tensor | None = None) -> Batch:
        """The rows `rows` as a batch; `images` is this dataset's image tensor, possibly moved to a
        device (the batch is made there); `generator` seeds the augmentation (None: no augmentation)."""
        images = self.images if images is None else images
        x = images[rows.to(images.device)].float().div_(255.0)
        if generator is not None and self.augment is not None:
            x = self.augment(x, generator=generator)
        x = (x - self.mean.to(x.device)) / self.std.to(x.device)
        return x, self.labels[rows], self.indices[rows]

    def __getitem__(self, row: int) -> tuple[torch.Tensor, int, int]:
        x, y, i = self.batch(torch.tensor([int(row)]))
        return x[0], int(y[0]), int(i[0])


class ArrayBatches:
    """The batches of an ArrayDataset for one process, an epoch at a time (`set_epoch`), in
    `epoch_rows` order, made on `device`. Iterable like a DataLoader, with `.dataset` and len()."""

    def __init__(self, dataset: ArrayDataset, *, batch_size: int, shuffle: bool, seed: int, epoch: int,
                 drop_last: bool = False, rank: int = 0, world: int = 1, device: torch.device | str | None = None,
                 passes: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.dataset, self.batch_size, self.shuffle, self.seed, self.epoch = dataset, batch_size, shuffle, seed, epoch
        self.drop_last, self.rank, self.world, self.passes = drop_last, rank, world, passes
        self.device = torch.device(device) if device is not None else dataset.images.device
        self._images: torch.Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order and augmentation the next iteration yields."""
        self.epoch = epoch

    @property
    def rows(self) -> int:
        """Rows of one epoch on this rank (before drop_last): the progress bar's total."""
        return -(-len(self.dataset) * self.passes // self.world)

    def __len__(self) -> int:
        return self.rows // self.batch_size if self.drop_last else -(-self.rows // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        if self._images is None:  # once per loader: the whole uint8 array on the device
            self._images = self.dataset.images.to(self.device)
        rows = torch.tensor(epoch_rows(len(self.dataset), shuffle=self.shuffle, seed=self.seed, epoch=self.epoch,
                                       rank=self.rank, world=self.world, passes=self.passes), dtype=torch.int64)
        augment = self.dataset.augment is not None
        for step in range(len(self)):
            chunk = rows[step * self.batch_size:(step + 1) * self.batch_size]
            generator = None
            if augment:
                generator = torch.Generator().manual_seed(batch_seed(self.seed, self.epoch, self.rank, step))
            yield self.dataset.batch(chunk, generator=generator, images=self._images)
