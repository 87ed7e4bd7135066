"""Benchmark arrays as batches: the dataset contract, the batch CIFAR augmentation, seeded epochs."""

import numpy as np
import pytest
import torch
from conftest import needs_cuda

from dermlow.data.array_batches import ArrayBatches, ArrayDataset, PadCropFlip
from dermlow.data.loading import make_loader
from dermlow.data.seeding import batch_seed, epoch_permutation, epoch_rows


def _cifar_like(n: int = 12, seed: int = 1) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return ArrayDataset(images, rng.integers(0, 3, n), np.arange(100, 100 + n), augment=PadCropFlip(2),
                        mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.4])


def _epoch(loader) -> list:
    return [(x.clone(), y.clone(), i.clone()) for x, y, i in loader]


def _assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya, ia), (xb, yb, ib) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)


def test_array_dataset_contract():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    ds = ArrayDataset(gray, labels=[0, 1, 2, 0, 1, 2], indices=[5, 4, 3, 2, 1, 0], mean=[0.5], std=[0.5])
    x, y, i = ds[1]
    assert x.dtype == torch.float32 and x.shape == (1, 8, 8) and (y, i) == (1, 4)
    torch.testing.assert_close(x[0], torch.from_numpy(gray[1] / 255.0 * 2 - 1).float())
    color = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    x, _, _ = ArrayDataset(color, [0] * 4, range(4))[2]
    assert x.shape == (3, 8, 8)
    torch.testing.assert_close(x, torch.from_numpy(color[2].transpose(2, 0, 1) / 255.0).float())
    with pytest.raises(ValueError, match="uint8"):
        ArrayDataset(color.astype(np.float32), [0] * 4, range(4))
    with pytest.raises(ValueError, match="labels"):
        ArrayDataset(color, [0] * 3, range(4))


def test_unaugmented_batches_equal_the_per_image_formula_bitwise():
    """What the per-item loader computed before batches: (uint8 / 255 - mean) / std, image by image."""
    ds = _cifar_like()
    ds.augment = None
    (x, y, i), *_ = _epoch(make_loader(ds, batch_size=12, shuffle=True, seed=3, epoch=2, num_workers=0))
    rows = epoch_permutation(12, seed=3, epoch=2)
    for k, row in enumerate(rows.tolist()):
        expected = (ds.images[row].float().div_(255.0) - ds.mean) / ds.std
        assert torch.equal(x[k], expected) and y[k] == ds.labels[row] and i[k] == 100 + row


def test_pad_crop_flip_matches_slicing_with_the_same_draws():
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    pad = 4
    out = PadCropFlip(pad)(x, generator=torch.Generator().manual_seed(11))
    draws = torch.Generator().manual_seed(11)  # the same draws, in the same order, checked by plain slicing
    offsets = torch.randint(0, 2 * pad + 1, (64, 2), generator=draws)
    flips = torch.rand(64, generator=draws) < 0.5
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    for k in range(64):
        top, left = offsets[k].tolist()
        crop = padded[k, :, top:top + 8, left:left + 8]
        assert torch.equal(out[k], crop.flip(2) if flips[k] else crop)
    assert 20 < int(flips.sum()) < 44 and len({tuple(o) for o in offsets.tolist()}) > 30


def test_pad_crop_flip_covers_every_offset_and_both_mirrors():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).expand(400, 1, 4, 4)
    out = PadCropFlip(1)(x, generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x[0], (1, 1, 1, 1))
    candidates = [w for t in range(3) for s in range(3) for w in (padded[:, t:t + 4, s:s + 4],) for w in (w, w.flip(2))]
    seen = {next(c for c, w in enumerate(candidates) if torch.equal(o, w)) for o in out}
    assert seen == set(range(18))
    assert PadCropFlip(0)(x[:2], generator=torch.Generator()).shape == (2, 1, 4, 4)
    with pytest.raises(ValueError, match="pad"):
        PadCropFlip(-1)


def test_batches_depend_only_on_seed_epoch_and_step():
    ds = _cifar_like()
    state = torch.get_rng_state()
    kw = dict(batch_size=5, shuffle=True, seed=2)
    a = _epoch(make_loader(ds, epoch=3, num_workers=0, **kw))
    _assert_same(a, _epoch(make_loader(ds, epoch=3, num_workers=2, **kw)))  # workers are not used for arrays
    loader = make_loader(ds, epoch=4, num_workers=0, **kw)
    b = _epoch(loader)
    loader.set_epoch(3)
    _assert_same(a, _epoch(loader))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(torch.cat([i for _, _, i in a]) - 100, epoch_permutation(12, seed=2, epoch=3))
    assert not torch.equal(torch.cat([x for x, _, _ in a]), torch.cat([x for x, _, _ in b]))
    # batch `step` is the augmentation seeded by batch_seed(seed, epoch, rank 0, step) of its rows
    rows = epoch_permutation(12, seed=2, epoch=3)
    for step, (x, _, _) in enumerate(a):
        seeded = torch.Generator().manual_seed(batch_seed(2, 3, 0, step))
        assert torch.equal(x, ds.batch(rows[5 * step:5 * step + 5], generator=seeded)[0]), step


def test_batches_shard_and_drop_last_like_the_data_loader():
    ds = _cifar_like(n=11)
    parts = [ArrayBatches(ds, batch_size=2, shuffle=True, seed=0, epoch=1, rank=r, world=2) for r in (0, 1)]
    seen = [torch.cat([i for _, _, i in p]).tolist() for p in parts]
    assert [len(s) for s in seen] == [6, 6] and len(parts[0]) == 3
    assert sorted(set(seen[0] + seen[1])) == list(range(100, 111))
    assert seen[0] == [100 + r for r in epoch_rows(11, shuffle=True, seed=0, epoch=1, rank=0, world=2)]
    dropped = ArrayBatches(ds, batch_size=4, shuffle=False, seed=0, epoch=1, drop_last=True)
    assert len(dropped) == 2 and [len(y) for _, y, _ in dropped] == [4, 4]
    assert [len(y) for _, y, _ in ArrayBatches(ds, batch_size=4, shuffle=False, seed=0, epoch=1)] == [4, 4, 3]


@needs_cuda("tests/test_array_batches.py::test_batches_on_the_gpu_equal_those_on_the_cpu")
def test_batches_on_the_gpu_equal_those_on_the_cpu():
    ds = _cifar_like(n=40)
    kw = dict(batch_size=16, shuffle=True, seed=5, epoch=2, num_workers=0)
    cpu = _epoch(make_loader(ds, device="cpu", **kw))
    gpu = [(x.cpu(), y, i) for x, y, i in _epoch(make_loader(ds, device="cuda", **kw))]
    _assert_same(cpu, gpu)


@pytest.mark.parametrize(("passes", "world"), [(1, 1), (3, 1), (1, 2), (3, 2)])
def test_rows_is_what_an_epoch_yields_on_each_rank(passes, world):
    """`rows`, the progress bar's total, counts the images an epoch really yields."""
    ds = _cifar_like(n=11)
    for rank in range(world):
        loader = make_loader(ds, batch_size=4, shuffle=True, seed=0, epoch=1, num_workers=0, rank=rank,
                             world=world, passes=passes)
        assert loader.rows == sum(len(y) for _, y, _ in loader) == -(-11 * passes // world)
