"""The paper's benchmark data (MNIST, CIFAR-10/100, imbalanced MNIST) read from the official files.

Nothing is downloaded unless asked (`download=True`, the CLI's `--download`), and then only from
the official hosts. scikit-learn's bundled 8x8 digits stand in for MNIST offline.

Imbalanced variants follow Section 4.1.1 of the paper: class c keeps a random subset of at most
N_C / 2^k_c of its training samples, with the exponents k a random permutation of 0..9 drawn anew
per seed. N_C is the paper's common 6000 for MNIST (array_manifest.PAPER_MAX_PER_CLASS; its example
[47, 23, 3000, 12, 1500, 94, 750, 6000, 375, 188] is reproduced exactly) and each class's own
count for the other sets. The paper reports test error on the standard test sets, so only the
training set is made imbalanced; the test set stays as published.
"""

from __future__ import annotations

import gzip
import importlib
import io
import logging
import os
import pickle
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dermlow.errors import UserError

log = logging.getLogger(__name__)

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR = {
    10: {"folder": "cifar-10-batches-py", "archive": "cifar-10-python.tar.gz", "meta": "batches.meta",
         "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
         "labels": b"labels", "names": b"label_names"},
    100: {"folder": "cifar-100-python", "archive": "cifar-100-python.tar.gz", "meta": "meta",
          "train": ["train"], "test": ["test"], "labels": b"fine_labels", "names": b"fine_label_names"},
}
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
Split = tuple[np.ndarray, np.ndarray]


# ------------------------------------------------------------------------------------------ IDX
def _read_maybe_gzip(path: Path) -> bytes:
    """A file's bytes, gunzipped when it starts with the gzip magic number."""
    try:
        raw = path.read_bytes()
        return gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    except (EOFError, OSError) as exc:  # gzip.BadGzipFile and zlib.error are OSError / EOFError
        raise UserError(f"{path}: cannot read ({exc}); the file is truncated or damaged, fetch it again") from exc


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode IDX bytes (LeCun's MNIST format): 0x0000, dtype code, ndim, big-endian uint32 dims."""
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in IDX_DTYPES:
        raise UserError(f"{source}: not an IDX file (bad magic number {data[:4].hex()}); expected an "
                        "official MNIST file such as train-images-idx3-ubyte(.gz)")
    dtype, ndim = np.dtype(IDX_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{source}: truncated IDX header ({len(data)} of {header} bytes); fetch the file again")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected, actual = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize, len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        raise UserError(f"{source}: IDX file {what}: header {dims} needs {expected} data bytes, found "
                        f"{actual}; fetch the file again")
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file, gzipped or not, validating its size against its header."""
    path = Path(path)
    return parse_idx(_read_maybe_gzip(path), str(path))


# ---------------------------------------------------------------------------------------- MNIST
def _find_mnist(root: Path, base: str) -> Path | None:
    """The file `base` or `base.gz` in root, root/mnist or root/MNIST/raw (torchvision's layout)."""
    for folder in (root, root / "mnist", root / "MNIST" / "raw"):
        for name in (base, base + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def load_mnist(root: str | Path) -> dict[str, Split]:
    """MNIST from the four official IDX files: {"train": (x uint8 [N,28,28], y int64), "test": ...}."""
    root = Path(root)
    found = {b: _find_mnist(root, b) for pair in MNIST_FILES.values() for b in pair}
    missing = [b for b, p in found.items() if p is None]
    if missing:
        raise UserError(f"MNIST files not found in {root}: {', '.join(m + '[.gz]' for m in missing)}. Put the "
                        f"official files there (or in {root / 'MNIST' / 'raw'}); they are at {MNIST_URL}, "
                        "or rerun with --download")
    out = {}
    for split, (img_name, lab_name) in MNIST_FILES.items():
        x, y = read_idx(found[img_name]), read_idx(found[lab_name])
        if x.ndim != 3 or x.shape[1:] != (28, 28) or x.dtype != np.uint8:
            raise UserError(f"{found[img_name]}: expected uint8 images [N, 28, 28], got {x.dtype} {x.shape}")
        if y.ndim != 1 or len(y) != len(x) or (len(y) and y.max() > 9):
            raise UserError(f"{found[lab_name]}: expected {len(x)} labels in 0..9, got shape {y.shape}")
        out[split] = (x, y.astype(np.int64))
    return out


# ---------------------------------------------------------------------------------------- CIFAR
class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that builds only numpy arrays, never arbitrary objects (pickles can run code)."""

    NUMPY = {"multiarray._reconstruct", "multiarray.scalar", "numeric._frombuffer"}

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype")}:
            return super().find_class(module, name)
        short = module.removeprefix("numpy.core.").removeprefix("numpy._core.")
        if short != module and f"{short}.{name}" in self.NUMPY:
            for prefix in ("numpy._core.", "numpy.core."):  # numpy 2 renamed numpy.core
                try:
                    return getattr(importlib.import_module(prefix + short), name)
                except ImportError:
                    continue
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_cifar_pickle(blob: bytes, source: str) -> dict:
    """Decode one official CIFAR python pickle (a dict with bytes keys); UserError if garbled."""
    try:
        d = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as exc:  # truncated or garbled pickles raise many different types
        raise UserError(f"{source}: not a readable CIFAR python pickle ({type(exc).__name__}: {exc}); "
                        "the file is truncated or damaged, fetch the official archive again") from exc
    if not isinstance(d, dict):
        raise UserError(f"{source}: expected a pickled dict, got {type(d).__name__}")
    return d


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read ({exc}); restore the official CIFAR files there") from exc


def _cifar_source(root: Path, num_classes: int) -> Callable[[str], tuple[bytes, str]] | None:
    """A reader name -> (bytes, display name) over the extracted folder or the .tar.gz, if present."""
    spec = CIFAR[num_classes]
    for base in (root, root / f"cifar{num_classes}"):
        for folder in (base / spec["folder"], base):
            if (folder / spec["meta"]).is_file():
                return lambda name, folder=folder: (_read_file(folder / name), str(folder / name))
        archive = base / spec["archive"]
        if archive.is_file():
            members = _read_tar(archive, spec)
            return lambda name, archive=archive: members[name]
    return None


def _read_tar(archive: Path, spec: dict) -> dict[str, tuple[bytes, str]]:
    """All batches and the meta file from the official .tar.gz, without extracting to disk."""
    out = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in [spec["meta"], *spec["train"], *spec["test"]]:
                member = f"{spec['folder']}/{name}"
                handle = tar.extractfile(member)
                if handle is None:
                    raise KeyError(member)
                out[name] = (handle.read(), f"{archive}:{member}")
    except KeyError as exc:
        raise UserError(f"{archive}: missing {exc} in the archive; fetch the official archive again") from exc
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"{archive}: cannot read the archive ({exc}); it is truncated or damaged, "
                        "fetch it again") from exc
    return out


def _cifar_batch(blob: bytes, source: str, label_key: bytes) -> Split:
    """x uint8 [N, 32, 32, 3] and y int64 from one batch pickle (rows are R, G, B planes of 32x32)."""
    d = load_cifar_pickle(blob, source)
    if b"data" not in d or label_key not in d:
        raise UserError(f"{source}: not a CIFAR batch (needs keys b'data' and {label_key!r}, has "
                        f"{sorted(d)[:6]}); fetch the official archive again")
    data, labels = np.asarray(d[b"data"]), np.asarray(d[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise UserError(f"{source}: expected uint8 data [N, 3072] and N labels, got {data.dtype} "
                        f"{data.shape} and {labels.shape}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), labels


def load_cifar(root: str | Path, num_classes: int = 10) -> tuple[dict[str, Split], list[str]]:
    """CIFAR-10/100 from the official python pickles (folder or .tar.gz): splits and class names.

    CIFAR-100 uses the 100 fine labels. x is uint8 [N, 32, 32, 3] (HWC, RGB).
    """
    if num_classes not in CIFAR:
        raise ValueError(f"num_classes must be 10 or 100, got {num_classes}")
    root, spec = Path(root), CIFAR[num_classes]
    read = _cifar_source(root, num_classes)
    if read is None:
        raise UserError(f"CIFAR-{num_classes} not found in {root}: put {spec['archive']} there (from "
                        f"{CIFAR_URL}{spec['archive']}) or its extracted {spec['folder']}/ folder, or rerun "
                        "with --download")
    meta = load_cifar_pickle(*read(spec["meta"]))
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(spec["names"], [])]
    if len(names) != num_classes:
        raise UserError(f"{read(spec['meta'])[1]}: expected {num_classes} names under {spec['names']!r}, "
                        f"found {len(names)}; is this the CIFAR-{num_classes} archive?")
    splits = {}
    for split in ("train", "test"):
        parts = [_cifar_batch(*read(name), spec["labels"]) for name in spec[split]]
        x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise UserError(f"CIFAR-{num_classes} {split} labels outside 0..{num_classes - 1} in {root}")
        splits[split] = (x, y)
    return splits, names


# ------------------------------------------------------------------------------------- download
def _fetch(url: str, dest: Path) -> None:
    """Download url to dest through a temporary file, so an interrupted download leaves nothing."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    log.info("downloading %s -> %s", url, dest)
    try:
        with urllib.request.urlopen(url, timeout=60) as response, part.open("wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise UserError(f"could not download {url} ({exc}); fetch it by hand into {dest.parent}") from exc
    os.replace(part, dest)


def download_mnist(root: str | Path) -> None:
    """Fetch the four official MNIST .gz files into root (skipping those already there)."""
    root = Path(root)
    for base in (b for pair in MNIST_FILES.values() for b in pair):
        if _find_mnist(root, base) is None:
            _fetch(MNIST_URL + base + ".gz", root / (base + ".gz"))


def download_cifar(root: str | Path, num_classes: int = 10) -> None:
    """Fetch the official CIFAR-10/100 python archive into root unless the data are already there."""
    root = Path(root)
    if _cifar_source(root, num_classes) is None:
        archive = CIFAR[num_classes]["archive"]
        _fetch(CIFAR_URL + archive, root / archive)


# --------------------------------------------------------------------------------------- digits
def load_digits_split(seed: int, test_fraction: float = 1 / 3) -> dict[str, Split]:
    """scikit-learn's bundled 8x8 digits (offline), seeded stratified train/test split.

    x is uint8 [N, 8, 8], the 0..16 intensities scaled to 0..255.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = np.round(digits.images * (255 / 16)).astype(np.uint8)
    y = digits.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_fraction, stratify=y, random_state=seed)
    return {"train": (xtr, ytr), "test": (xte, yte)}


# ------------------------------------------------------------------------------------ imbalance
def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Number of samples of each class 0..num_classes-1 (int64 [num_classes])."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got {labels.min()}..{labels.max()}")
    return np.bincount(labels, minlength=num_classes)


def imbalance_exponents(num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """k_c in 0..9 per class: a random permutation of 0..9 for 10 classes (the paper).

    For other class counts, k_c = perm(C)[c] * 10 // C: for 100 classes ten classes share each
    power of two (k_c = perm(100)[c] // 10).
    """
    return rng.permutation(num_classes) * 10 // num_classes


def imbalance_caps(counts: np.ndarray, k: np.ndarray, *, max_per_class: int | None = None,
                   min_per_class: int = 1) -> np.ndarray:
    """Per-class sample caps: floor(N_c / 2^k_c), never below min(min_per_class, N_c).

    With `max_per_class` = M the cap is instead min(N_c, round(M / 2^k_c)) with halves rounded up,
    the reading that reproduces the paper's example exactly (M = 6000 gives 6000, 3000, ..., 12).
    """
    counts, k = np.asarray(counts, dtype=np.int64), np.asarray(k, dtype=np.int64)
    if max_per_class is None:
        caps = counts // (2**k)
    else:
        caps = np.minimum(counts, np.floor(max_per_class / 2.0**k + 0.5).astype(np.int64))
    return np.maximum(caps, np.minimum(min_per_class, counts))


def imbalance(labels: np.ndarray, *, seed: int, num_classes: int | None = None,
              max_per_class: int | None = None, min_per_class: int = 1) -> np.ndarray:
    """Sorted indices of the samples kept in the paper's imbalanced construction.

    k = imbalance_exponents(C, np.random.default_rng(seed)) (the generator's first draw); each
    class then keeps a random subset of imbalance_caps(...) samples drawn from the same generator.
    """
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    rng = np.random.default_rng(seed)
    k = imbalance_exponents(num_classes, rng)
    caps = imbalance_caps(class_counts(labels, num_classes), k, max_per_class=max_per_class,
                          min_per_class=min_per_class)
    kept = [rng.choice(np.flatnonzero(labels == c), size=caps[c], replace=False) for c in range(num_classes)]
    return np.sort(np.concatenate(kept)).astype(np.int64)


# ---------------------------------------------------------------------------------- load by name
@dataclass
class BenchData:
    """A benchmark as numpy arrays; `k` holds the exponents of an imbalanced training set."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    counts: np.ndarray
    in_chans: int
    image_size: int
    k: np.ndarray | None = None


def _load_base(base: str, root: Path, seed: int, download: bool) -> tuple[dict[str, Split], list[str]]:
    """The splits and class names of a balanced benchmark (name without -imbalanced)."""
    if base == "digits":
        return load_digits_split(seed), [str(d) for d in range(10)]
    if base == "mnist":
        if download:
            download_mnist(root)
        return load_mnist(root), [str(d) for d in range(10)]
    num_classes = int(base.removeprefix("cifar"))
    if download:
        download_cifar(root, num_classes)
    return load_cifar(root, num_classes)


BASES = ("cifar10", "cifar100", "digits", "mnist")
NAMES = sorted([*BASES, *(f"{b}-imbalanced" for b in BASES)])


def load_benchmark(name: str, root: str | Path, *, seed: int, download: bool = False,
                   max_per_class: int | None = None) -> BenchData:
    """Load a benchmark by name; `<name>-imbalanced` subsamples the training set only (the paper).

    `seed` drives the digits split and the imbalance; `max_per_class` is N_C of the caps (None:
    each class's own count; see imbalance_caps, and array_manifest.resolve_max_per_class for the per-benchmark
    defaults a run applies). Files live in `root` (see load_mnist / load_cifar).
    """
    base = name.removesuffix("-imbalanced")
    if name not in NAMES:
        raise ValueError(f"unknown benchmark {name!r}; valid names: {', '.join(NAMES)}")
    splits, classes = _load_base(base, Path(root), seed, download)
    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    k = None
    if name.endswith("-imbalanced"):
        keep = imbalance(train_y, seed=seed, num_classes=len(classes), max_per_class=max_per_class)
        k = imbalance_exponents(len(classes), np.random.default_rng(seed))
        train_x, train_y = train_x[keep], train_y[keep]
    counts = class_counts(train_y, len(classes))
    log.info("%s: %d train / %d test images, train counts %s", name, len(train_y), len(test_y), counts.tolist())
    return BenchData(name=name, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y,
                     classes=classes, counts=counts, in_chans=1 if train_x.ndim == 3 else train_x.shape[-1],
                     image_size=train_x.shape[1], k=k)
