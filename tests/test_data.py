"""Image reading, the on-disk preprocessing cache, datasets and seeded loaders."""

import os

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

import dermlow.data.loading as data_mod
from dermlow.data.loading import ImageCache, ManifestDataset, SampleKey, make_loader, read_image
from dermlow.data.seeding import epoch_permutation
from dermlow.data.transforms import eval_transform, normalise_batch, preprocess, to_input, train_transform
from dermlow.errors import UserError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
SIZE = 32


def _rgb(seed: int, h: int = 36, w: int = 48) -> np.ndarray:
    """A smooth, asymmetric, colour-cast RGB image."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 90 + 60 * np.sin(xx / (5 + seed % 3)) * np.cos(yy / 7) + xx
    image = np.stack([base * 1.2, base, base * 0.6], axis=-1) + rng.normal(0, 4, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _write(path, rgb: np.ndarray) -> str:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return str(path)


@pytest.fixture
def manifest(tmp_path) -> pd.DataFrame:
    rows = []
    for i in range(10):
        ext = "png" if i % 2 else "jpg"
        path = _write(tmp_path / f"ISIC_{i:07d}.{ext}", _rgb(i))
        rows.append({"index": 100 + 7 * i, "image_id": f"ISIC_{i:07d}", "path": path, "label": i % 3,
                     "label_name": f"c{i % 3}", "split": "train", "lesion_id": f"L{i}"})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)


def test_read_image_rgb_order_gray_and_rgba(tmp_path):
    rgb = _rgb(0)
    np.testing.assert_array_equal(read_image(_write(tmp_path / "a.png", rgb)), rgb)
    gray = rgb[..., 0]
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    np.testing.assert_array_equal(read_image(tmp_path / "g.png"), np.repeat(gray[..., None], 3, axis=2))
    bgra = np.dstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), np.full(gray.shape, 128, np.uint8)])
    cv2.imwrite(str(tmp_path / "t.png"), bgra)
    np.testing.assert_array_equal(read_image(tmp_path / "t.png"), rgb)


def test_read_image_missing_or_corrupt_names_the_file(tmp_path):
    with pytest.raises(UserError, match="nope.jpg.*not found"):
        read_image(tmp_path / "nope.jpg")
    (tmp_path / "bad.jpg").write_bytes(b"not an image at all")
    with pytest.raises(UserError, match="bad.jpg.*cannot decode"):
        read_image(tmp_path / "bad.jpg")


def test_dataset_returns_manifest_index_label_and_tensor(manifest):
    ds = ManifestDataset(manifest, transform=eval_transform(crop_size=24, mean=MEAN, std=STD), image_size=SIZE)
    assert len(ds) == 10
    for row in range(len(ds)):
        image, label, index = ds[row]
        assert image.dtype == torch.float32 and image.shape == (3, 24, 24)
        assert (label, index) == (manifest.loc[row, "label"], manifest.loc[row, "index"])
    assert isinstance(ds[0][1], int) and isinstance(ds[0][2], int)


def test_manifest_missing_column_is_a_user_error(manifest):
    with pytest.raises(UserError, match="path"):
        ManifestDataset(manifest.drop(columns=["path"]), transform=None)


def test_cache_hit_is_identical_to_uncached_path(manifest, tmp_path, monkeypatch):
    t = eval_transform(crop_size=SIZE, mean=MEAN, std=STD)
    cache = ImageCache(tmp_path / "cache", image_size=SIZE)
    plain = ManifestDataset(manifest, transform=t, image_size=SIZE)
    cached = ManifestDataset(manifest, transform=t, image_size=SIZE, cache=cache)
    first = [cached[i][0] for i in range(len(cached))]  # misses: fill the cache
    monkeypatch.setattr(data_mod, "read_image", _must_not_decode)
    for i in range(len(cached)):  # hits: no decoding at all
        assert torch.equal(cached[i][0], first[i])
        np.testing.assert_array_equal(cache.get(manifest.loc[i, "path"], manifest.loc[i, "image_id"]),
                                      preprocess(cv2.cvtColor(cv2.imread(manifest.loc[i, "path"]), cv2.COLOR_BGR2RGB),
                                                 image_size=SIZE))
    monkeypatch.undo()
    for i in range(len(plain)):
        assert torch.equal(plain[i][0], first[i])


def _must_not_decode(path):
    raise AssertionError(f"decoded {path} although it is cached")


def test_cache_invalidated_when_source_rewritten(tmp_path):
    cache = ImageCache(tmp_path / "cache", image_size=SIZE)
    path = _write(tmp_path / "x.png", _rgb(1))
    np.testing.assert_array_equal(cache.get(path, "x"), preprocess(_rgb(1), image_size=SIZE))
    _write(path, _rgb(2))
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # coarse-mtime filesystems
    np.testing.assert_array_equal(cache.get(path, "x"), preprocess(_rgb(2), image_size=SIZE))


def test_cache_parameters_select_separate_folders(tmp_path):
    path = _write(tmp_path / "x.png", _rgb(3))
    small, large = ImageCache(tmp_path / "c", image_size=16), ImageCache(tmp_path / "c", image_size=SIZE)
    other_p = ImageCache(tmp_path / "c", image_size=16, p=2)
    assert len({small.root, large.root, other_p.root}) == 3
    assert small.get(path, "x").shape == (16, 16, 3)
    assert large.get(path, "x").shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(other_p.get(path, "x"), preprocess(_rgb(3), image_size=16, p=2))
    with pytest.raises(ValueError, match="16px"):
        ManifestDataset(pd.DataFrame({"index": [0], "image_id": ["x"], "path": [path], "label": [0]}),
                        transform=None, image_size=SIZE, cache=small)


def test_half_written_cache_files_are_never_read(tmp_path, monkeypatch):
    cache = ImageCache(tmp_path / "cache", image_size=SIZE)
    path = _write(tmp_path / "x.png", _rgb(4))
    expected = preprocess(_rgb(4), image_size=SIZE)
    target = cache.file_for(path, "x")
    # 1. killed between writing and renaming: only a temporary file exists
    (target.parent / f".{target.name}.123.deadbeef.tmp").write_bytes(b"\x93NUMPY garbage")
    monkeypatch.setattr(data_mod.os, "replace", _killed)
    with pytest.raises(KeyboardInterrupt):
        cache.get(path, "x")
    monkeypatch.undo()
    assert not target.exists()
    np.testing.assert_array_equal(cache.get(path, "x"), expected)
    # 2. a truncated file under the final name (e.g. a crash without write-back): recomputed, repaired
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    np.testing.assert_array_equal(cache.get(path, "x"), expected)
    np.testing.assert_array_equal(np.load(target), expected)


def _killed(src, dst):
    raise KeyboardInterrupt


def test_cache_build_fills_then_skips(manifest, tmp_path, monkeypatch):
    cache = ImageCache(tmp_path / "cache", image_size=SIZE)
    assert cache.build(manifest, workers=2, progress=False) == len(manifest)
    assert len(list(cache.root.glob("*.npy"))) == len(manifest)
    monkeypatch.setattr(data_mod, "read_image", _must_not_decode)
    assert cache.build(manifest, workers=2, progress=False) == 0
    monkeypatch.undo()
    broken = manifest.copy()
    broken.loc[3, "path"] = str(tmp_path / "gone.jpg")
    with pytest.raises(UserError, match="gone.jpg"):
        cache.build(broken, workers=2, progress=False)


def test_epoch_permutation_is_a_pure_function_of_seed_and_epoch():
    p = epoch_permutation(50, seed=3, epoch=1)
    assert sorted(p.tolist()) == list(range(50))
    assert torch.equal(p, epoch_permutation(50, seed=3, epoch=1))
    assert not torch.equal(p, epoch_permutation(50, seed=3, epoch=2))
    assert not torch.equal(p, epoch_permutation(50, seed=4, epoch=1))
    # golden: changing the seeding scheme would silently change resumed runs
    assert epoch_permutation(8, seed=0, epoch=1).tolist() == GOLDEN_PERMUTATION


GOLDEN_PERMUTATION = [7, 1, 4, 5, 2, 3, 0, 6]


def _batches(loader):
    return [(x.clone(), y.clone(), i.clone()) for x, y, i in loader]


def _assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya, ia), (xb, yb, ib) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)


def test_loader_order_and_augmentation_depend_only_on_seed_and_epoch(manifest):
    ds = ManifestDataset(manifest, transform=train_transform(crop_size=24, mean=MEAN, std=STD), image_size=SIZE)
    state = torch.get_rng_state()
    kw = dict(batch_size=4, shuffle=True, seed=7)
    e1 = _batches(make_loader(ds, epoch=1, num_workers=0, **kw))
    _assert_same(e1, _batches(make_loader(ds, epoch=1, num_workers=0, **kw)))
    e2 = _batches(make_loader(ds, epoch=2, num_workers=0, **kw))
    persistent = make_loader(ds, epoch=1, num_workers=2, **kw)  # one loader, its workers kept, 2 epochs
    _assert_same(e1, _batches(persistent))
    persistent.set_epoch(2)
    _assert_same(e2, _batches(persistent))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's global RNG is untouched
    order1 = torch.cat([i for _, _, i in e1]).tolist()
    assert sorted(order1) == sorted(manifest["index"])
    assert torch.cat([i for _, _, i in e2]).tolist() != order1
    unshuffled = _batches(make_loader(ds, epoch=1, num_workers=0, batch_size=4, shuffle=False, seed=7))
    assert torch.cat([i for _, _, i in unshuffled]).tolist() == manifest["index"].tolist()


def test_augmentation_varies_by_epoch_and_flips_independently(manifest):
    ds = ManifestDataset(manifest.iloc[:1], transform=train_transform(crop_size=SIZE, mean=MEAN, std=STD),
                         image_size=SIZE)
    x = ds.load(0)
    base = eval_transform(crop_size=SIZE, mean=MEAN, std=STD)(image=x)["image"]
    flips = {"none": base, "h": base.flip(2), "v": base.flip(1), "hv": base.flip(1).flip(2)}
    seen = []
    for epoch in range(40):
        out = ds[SampleKey(0, seed=1, epoch=epoch)][0]
        assert torch.equal(out, ds[SampleKey(0, seed=1, epoch=epoch)][0])
        seen.append(next(k for k, v in flips.items() if torch.equal(out, v)))
    assert set(seen) == set(flips)  # identical seeds per flip would only ever give none / hv
    assert torch.equal(ds[0][0], ds[0][0])  # plain row keys are deterministic too


def test_uint8_batches_travel_as_nhwc_and_reach_the_model_unchanged(manifest):
    ds = ManifestDataset(manifest, transform=train_transform(crop_size=24, mean=MEAN, std=STD, normalise=False),
                         image_size=SIZE)
    images, labels, index = next(iter(make_loader(ds, batch_size=4, shuffle=True, seed=1, epoch=1, num_workers=0)))
    rows = epoch_permutation(len(ds), seed=1, epoch=1)[:4].tolist()
    items = [ds[SampleKey(r, seed=1, epoch=1)] for r in rows]
    expected = torch.stack([x for x, _, _ in items])
    assert torch.equal(images, expected) and images.dtype == torch.uint8
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
    assert labels.tolist() == [y for _, y, _ in items] and index.tolist() == [i for _, _, i in items]
    for channels_last in (False, True):
        x = to_input(images, torch.device("cpu"), (MEAN, STD), channels_last=channels_last)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert x.is_contiguous(memory_format=layout) and torch.equal(x, normalise_batch(expected, MEAN, STD))


class _WhoLoads(torch.utils.data.Dataset):
    """Each item: the process that loaded it and the epoch of its key."""

    accepts_sample_keys = True

    def __len__(self) -> int:
        return 8

    def __getitem__(self, key: SampleKey) -> tuple[int, int]:
        return os.getpid(), key.epoch


def test_loader_workers_persist_across_epochs():
    loader = make_loader(_WhoLoads(), batch_size=2, shuffle=True, seed=0, epoch=1, num_workers=2)
    pids, epochs = {}, {}
    for epoch in (1, 2, 3):
        loader.set_epoch(epoch)
        batches = list(loader)
        pids[epoch] = {int(p) for pid, _ in batches for p in pid}
        epochs[epoch] = {int(e) for _, e in batches for e in e}
    assert epochs == {1: {1}, 2: {2}, 3: {3}}
    assert len(pids[1]) == 2 and pids[1] == pids[2] == pids[3] and os.getpid() not in pids[1]


def test_loader_over_a_plain_dataset_gets_int_rows_in_seeded_order():
    ds = torch.utils.data.TensorDataset(torch.arange(20))
    order = torch.cat([b[0] for b in make_loader(ds, batch_size=6, shuffle=True, seed=5, epoch=2, num_workers=0)])
    assert torch.equal(order, epoch_permutation(20, seed=5, epoch=2))
