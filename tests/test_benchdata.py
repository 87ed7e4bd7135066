"""Benchmark readers on small files written here in the official formats; the imbalance construction."""

import gzip
import io
import pickle
import struct
import tarfile
import urllib.request

import numpy as np
import pytest

from dermlow.data import arrays
from dermlow.data.arrays import (
    NAMES,
    class_counts,
    download_mnist,
    imbalance,
    imbalance_caps,
    load_benchmark,
    load_cifar,
    load_digits_split,
    load_mnist,
    read_idx,
)
from dermlow.errors import UserError

# Official MNIST training-set class counts and the example of Section 4.1.1 of the paper.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
PAPER_EXAMPLE = [47, 23, 3000, 12, 1500, 94, 750, 6000, 375, 188]  # 11,989 samples


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tests must not download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


# ------------------------------------------------------------------------------------------ IDX


def idx_bytes(arr: np.ndarray, code: int) -> bytes:
    """IDX by hand: two zero bytes, dtype code, ndim, big-endian uint32 dims, big-endian data."""
    head = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write(path, data: bytes, gz: bool):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips(tmp_path, gz):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write(tmp_path / "img", idx_bytes(images, 0x08), gz)), images)
    ints = np.array([-70000, 1, 258], dtype=np.int32)  # multi-byte values check the byte order
    out = read_idx(write(tmp_path / "int", idx_bytes(ints, 0x0C), gz))
    assert out.tolist() == ints.tolist() and out.dtype == np.int32
    floats = np.array([[0.5, -2.25]], dtype=np.float32)
    assert read_idx(write(tmp_path / "f", idx_bytes(floats, 0x0D), gz)).tolist() == [[0.5, -2.25]]


def test_read_idx_header_is_parsed_by_hand():
    raw = b"\x00\x00\x08\x01" + struct.pack(">I", 3) + b"\x07\x08\x09"
    assert arrays.parse_idx(raw).tolist() == [7, 8, 9]


def test_truncated_idx_names_file_and_sizes(tmp_path):
    data = idx_bytes(np.zeros((5, 28, 28), np.uint8), 0x08)[:-10]
    path = write(tmp_path / "train-images-idx3-ubyte", data, gz=False)
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.*truncated.*needs 3920 data bytes, found 3910"):
        read_idx(path)


def test_truncated_gzip_and_bad_magic(tmp_path):
    blob = gzip.compress(idx_bytes(np.arange(4000, dtype=np.int32), 0x0C))
    path = tmp_path / "labels.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(UserError, match="labels.gz.*truncated or damaged"):
        read_idx(path)
    (tmp_path / "junk").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(UserError, match="junk: not an IDX file"):
        read_idx(tmp_path / "junk")


# ---------------------------------------------------------------------------------------- MNIST


def fake_mnist(folder, counts_train, counts_test=(2,) * 10, gz=True):
    """Writes the four files; image i carries (i % 251) in every pixel so subsets can be checked."""
    for prefix, counts in (("train", counts_train), ("t10k", counts_test)):
        y = np.repeat(np.arange(10, dtype=np.uint8), counts)
        x = np.broadcast_to((np.arange(len(y)) % 251).astype(np.uint8)[:, None, None], (len(y), 28, 28))
        suffix = ".gz" if gz else ""
        write(folder / f"{prefix}-images-idx3-ubyte{suffix}", idx_bytes(np.ascontiguousarray(x), 0x08), gz)
        write(folder / f"{prefix}-labels-idx1-ubyte{suffix}", idx_bytes(y, 0x08), gz)
    return folder


@pytest.mark.parametrize("layout,gz", [("", False), ("MNIST/raw", True)])
def test_load_mnist_layouts(tmp_path, layout, gz):
    fake_mnist(tmp_path / layout if layout else tmp_path, [3] * 10, gz=gz)
    data = load_mnist(tmp_path)
    x, y = data["train"]
    assert x.shape == (30, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int64
    assert y.tolist() == np.repeat(np.arange(10), 3).tolist()
    assert data["test"][0].shape == (20, 28, 28)


def test_missing_mnist_says_where_and_download(tmp_path):
    with pytest.raises(UserError, match=r"t10k-labels-idx1-ubyte\[\.gz\].*MNIST/raw.*--download"):
        load_mnist(tmp_path)


def test_download_mnist_fetches_official_urls(tmp_path, monkeypatch):
    source = fake_mnist(tmp_path / "served", [2] * 10)
    asked = []

    def serve(url, timeout):
        asked.append(url)
        return io.BytesIO((source / url.rsplit("/", 1)[1]).read_bytes())

    monkeypatch.setattr(urllib.request, "urlopen", serve)
    download_mnist(tmp_path / "dest")
    assert sorted(asked) == sorted(arrays.MNIST_URL + f"{p}-{k}-idx{n}-ubyte.gz"
                                   for p in ("train", "t10k") for k, n in (("images", 3), ("labels", 1)))
    assert load_mnist(tmp_path / "dest")["train"][0].shape == (20, 28, 28)
    assert not list((tmp_path / "dest").glob("*.part"))


# ------------------------------------------------------------------------------------ imbalance


def test_caps_reproduce_the_papers_example():
    k = [7, 8, 1, 9, 2, 6, 3, 0, 4, 5]  # the exponents behind the paper's example
    caps = imbalance_caps(np.array(MNIST_TRAIN_COUNTS), np.array(k), max_per_class=6000)
    assert caps.tolist() == PAPER_EXAMPLE and caps.sum() == 11989


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_imbalanced_mnist_keeps_floor_n_over_2_to_the_k(tmp_path, seed):
    counts = [600 + 37 * c for c in range(10)]
    fake_mnist(tmp_path, counts)
    data = load_benchmark("mnist-imbalanced", tmp_path, seed=seed)
    k = np.random.default_rng(seed).permutation(10)  # recomputed independently
    expected = [counts[c] // 2 ** k[c] for c in range(10)]
    assert data.counts.tolist() == expected and data.k.tolist() == k.tolist()
    assert class_counts(data.train_y, 10).tolist() == expected
    # kept images are the original ones of their class: pixel value = original index % 251
    original_y = np.repeat(np.arange(10), counts)
    idx = imbalance(original_y, seed=seed)
    assert np.array_equal(data.train_x[:, 0, 0], (idx % 251).astype(np.uint8))
    assert np.array_equal(original_y[idx], data.train_y)
    assert data.test_y.tolist() == np.repeat(np.arange(10), 2).tolist()  # test stays balanced
    assert (data.in_chans, data.image_size, data.classes[3]) == (1, 28, "3")


def test_imbalance_indices_sorted_unique_and_seeded():
    labels = np.random.default_rng(0).integers(0, 10, size=5000)
    a, b, c = imbalance(labels, seed=3), imbalance(labels, seed=3), imbalance(labels, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.all(np.diff(a) > 0)
    assert sorted(class_counts(labels[a], 10) > 0) == [True] * 10


def test_imbalance_keeps_at_least_one_and_hundred_class_analogue():
    caps = imbalance_caps(np.array([100, 3, 0]), np.array([9, 9, 0]))
    assert caps.tolist() == [1, 1, 0]  # floor would give 0 and 0: a class never vanishes
    k = arrays.imbalance_exponents(100, np.random.default_rng(5))
    assert np.bincount(k).tolist() == [10] * 10  # ten classes share each power of two
    labels = np.repeat(np.arange(100), 600)
    kept = class_counts(labels[imbalance(labels, seed=5)], 100)
    assert kept.tolist() == (600 // 2**k).tolist()


def test_class_counts():
    assert class_counts(np.array([0, 2, 2, 4]), 6).tolist() == [1, 0, 2, 0, 1, 0]
    with pytest.raises(ValueError):
        class_counts(np.array([0, 6]), 6)


# --------------------------------------------------------------------------------------- digits


def test_digits_split_seeded_and_stratified():
    a, b, c = load_digits_split(0), load_digits_split(0), load_digits_split(1)
    assert np.array_equal(a["test"][1], b["test"][1]) and np.array_equal(a["test"][0], b["test"][0])
    assert not np.array_equal(a["test"][0], c["test"][0])
    x, y = a["train"]
    assert len(y) + len(a["test"][1]) == 1797 and len(a["test"][1]) == 599
    assert x.dtype == np.uint8 and x.shape[1:] == (8, 8) and x.max() == 255 and x.min() == 0
    whole = class_counts(np.concatenate([y, a["test"][1]]), 10)
    assert np.all(np.abs(class_counts(a["test"][1], 10) - whole / 3) <= 1)


def test_digits_imbalanced_benchmark():
    d = load_benchmark("digits-imbalanced", "unused", seed=2)
    full = load_benchmark("digits", "unused", seed=2)
    base = class_counts(full.train_y, 10)
    assert d.counts.tolist() == np.maximum(base // 2**d.k, 1).tolist()
    assert np.array_equal(d.test_y, full.test_y) and d.image_size == 8 and d.in_chans == 1


def test_unknown_benchmark_lists_valid_names():
    with pytest.raises(ValueError, match="mnist-imbalanced.*") as info:
        load_benchmark("svhn", "data", seed=0)
    assert all(n in str(info.value) for n in NAMES) and "cifar10-imbalanced" in NAMES


# ---------------------------------------------------------------------------------------- CIFAR


def cifar_images(n: int, offset: int) -> np.ndarray:
    """HWC uint8 images with distinct R, G, B planes so the channel order is checked."""
    x = np.zeros((n, 32, 32, 3), np.uint8)
    for i in range(n):
        x[i, ..., 0], x[i, ..., 1], x[i, 0, :, 2] = offset + i, 100 + i, 200
    return x


def to_rows(x: np.ndarray) -> np.ndarray:  # the official layout: R plane, G plane, B plane
    return x.transpose(0, 3, 1, 2).reshape(len(x), 3072)


def fake_cifar(root, num_classes: int, protocol: int = 2):
    spec = arrays.CIFAR[num_classes]
    folder = root / spec["folder"]
    folder.mkdir(parents=True)
    names = [f"class{c}".encode() for c in range(num_classes)]
    (folder / spec["meta"]).write_bytes(pickle.dumps({spec["names"]: names}, protocol=protocol))
    for j, name in enumerate(spec["train"] + spec["test"]):
        labels = [(3 * j + i) % num_classes for i in range(4)]
        batch = {b"batch_label": b"x", b"data": to_rows(cifar_images(4, 10 * j)), spec["labels"]: labels}
        if num_classes == 100:
            batch[b"coarse_labels"] = [0] * 4
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return folder


@pytest.mark.parametrize("num_classes,protocol", [(10, 2), (10, 5), (100, 2)])
def test_load_cifar_folder(tmp_path, num_classes, protocol):
    fake_cifar(tmp_path, num_classes, protocol)
    splits, names = load_cifar(tmp_path, num_classes)
    x, y = splits["train"]
    n_train = 4 * len(arrays.CIFAR[num_classes]["train"])
    assert x.shape == (n_train, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    n_batches = len(arrays.CIFAR[num_classes]["train"])
    expected = np.concatenate([cifar_images(4, 10 * j) for j in range(n_batches)])
    assert np.array_equal(x, expected) and y[:4].tolist() == [0, 1, 2, 3]
    assert names[:2] == ["class0", "class1"] and len(names) == num_classes
    assert np.array_equal(splits["test"][0], cifar_images(4, 10 * n_batches))
    assert splits["test"][1].tolist() == [(3 * n_batches + i) % num_classes for i in range(4)]


def test_load_cifar_from_archive_and_benchmark(tmp_path):
    folder = fake_cifar(tmp_path / "src", 10)
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    data = load_benchmark("cifar10", tmp_path, seed=0)
    assert data.train_x.shape == (20, 32, 32, 3) and (data.in_chans, data.image_size) == (3, 32)
    assert data.counts.tolist() == class_counts(data.train_y, 10).tolist() and data.k is None
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:300])
    with pytest.raises(UserError, match="cifar-10-python.tar.gz.*truncated or damaged"):
        load_cifar(tmp_path, 10)


def test_bad_cifar_pickles_are_user_errors(tmp_path):
    folder = fake_cifar(tmp_path, 10)
    batch = folder / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(UserError, match="data_batch_2: not a readable CIFAR python pickle"):
        load_cifar(tmp_path, 10)
    batch.write_bytes(np.random.default_rng(0).bytes(2000))
    with pytest.raises(UserError, match="data_batch_2"):
        load_cifar(tmp_path, 10)
    batch.write_bytes(pickle.dumps({b"data": __import__("os").getcwd}))  # a global that is not numpy
    with pytest.raises(UserError, match="refusing to load"):
        load_cifar(tmp_path, 10)
    batch.unlink()
    with pytest.raises(UserError, match="data_batch_2"):
        load_cifar(tmp_path, 10)


def test_missing_cifar_mentions_archive_and_download(tmp_path):
    with pytest.raises(UserError, match=r"cifar-100-python.tar.gz.*--download"):
        load_benchmark("cifar100-imbalanced", tmp_path, seed=0)


def test_a_cifar_run_trains_on_batch_augmented_images(tmp_path):
    """The CIFAR path end to end: official files -> manifest -> PadCropFlip batches -> a run folder."""
    import pandas as pd
    import torch

    from dermlow import config
    from dermlow.data.array_batches import PadCropFlip
    from dermlow.data.seeding import batch_seed, epoch_rows
    from dermlow.training.loop import train
    from dermlow.training.session import start_session

    fake_cifar(tmp_path / "data", 10)
    flags = [f"data.data_dir={tmp_path / 'data'}", "data.dataset=cifar10", "data.val_fraction=0.2",
             "model.name=lenet5", "model.pretrained=false", "optim.epochs=2", "optim.batch_size=8",
             "optim.milestones=[2]", f"run.out={tmp_path / 'runs'}", "run.device=cpu", "data.cache_dir=null"]
    cfg = config.resolve(config.Config().to_dict(), config.parse_overrides(flags))
    session = start_session(cfg)
    train_set = session.datasets["train"]
    assert isinstance(train_set.augment, PadCropFlip) and session.datasets["val"].augment is None
    rows = torch.tensor(epoch_rows(len(train_set), shuffle=True, seed=0, epoch=1)[:8])
    first = next(iter(session.train_loader(1)))[0]
    seeded = torch.Generator().manual_seed(batch_seed(0, 1, 0, 0))
    assert torch.equal(first, train_set.batch(rows, generator=seeded)[0])
    assert not torch.equal(first, train_set.batch(rows)[0])  # augmented
    run = train(config.resolve(cfg.to_dict(), config.parse_overrides(["run.name=cifar"])))
    assert pd.read_csv(run / "metrics.csv")["epoch"].tolist() == [1, 2]
