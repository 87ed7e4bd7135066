"""Write synthetic, schema-exact run directories for the reader, flag and app tests.

No network is trained: every image gets a simulated logit trajectory over the epochs,

    z_e = a_e * clarity * (onehot(true) + mix * onehot(confuser)) + prior + mem_e * onehot(given) + noise_e

where a_e grows as the "network" learns the true pattern, `prior` favours frequent classes,
and the memorisation term mem_e pushes towards the *given* label from 40% of training on
(training images only). A flipped label therefore behaves like a real flip: low p(given label),
large gradient norm g and a high LOW weight early, then partly memorised late. Hard cases mix in
a confusing class and have low clarity, so they are suspicious but are not flips. From the
softmax of z the factory derives loss, g = ||p - onehot||^2, p_true, predicted and the LOW
weights (the QP's closed form, per shuffled mini-batch), and writes every file of
docs/run_directory.md with the writers of dermlow.rundir.files, plus real PNG/JPEG images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from dermlow.metrics import classification_metrics
from dermlow.rundir import files

CODES = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
NAMES = [
    "Melanoma",
    "Melanocytic nevus",
    "Basal cell carcinoma",
    "Actinic keratosis / Bowen's disease",
    "Benign keratosis",
    "Dermatofibroma",
    "Vascular lesion",
]
COUNTS = (30, 110, 16, 10, 20, 8, 10)  # per class, all splits; imbalanced like ISIC 2018
DX_TYPES = ["histo", "follow_up", "consensus", "confocal"]  # HAM10000's dx_type values
HUES = [(60, 35, 30), (120, 75, 50), (170, 90, 110), (150, 60, 50), (110, 90, 60), (140, 100, 80), (170, 40, 60)]


def low_projection(g: np.ndarray, lam: float) -> np.ndarray:
    """LOW weights of one batch: Euclidean projection of 1 + g/(2 lam) onto {w >= 0, sum w = M}."""
    v = 1.0 + g / (2.0 * lam)
    m = len(v)
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - m
    k = np.nonzero(u - css / np.arange(1, m + 1) > 0)[0][-1]
    return np.maximum(v - css[k] / (k + 1), 0.0)


def _lesions(counts: tuple[int, ...], rng: np.random.Generator) -> pd.DataFrame:
    """image_id, lesion_id, true class; some lesions have 2-3 sibling images."""
    rows, lesion = [], 0
    for c, n in enumerate(counts):
        made = 0
        while made < n:
            size = min(int(rng.choice([1, 1, 1, 2, 3])), n - made)
            rows += [(lesion, c)] * size
            made += size
            lesion += 1
    frame = pd.DataFrame(rows, columns=["lesion", "true"])
    frame["image_id"] = [f"ISIC_{i:07d}" for i in range(len(frame))]
    frame["lesion_id"] = [f"HAM_{k:07d}" for k in frame["lesion"]]
    confirm = np.random.default_rng(lesion).choice(DX_TYPES, size=lesion, p=[0.5, 0.35, 0.1, 0.05])  # not `rng`: its draws stay as before
    frame["dx_type"] = confirm[frame["lesion"].to_numpy()]  # one confirmation type per lesion, as HAM10000
    return frame


def _split(frame: pd.DataFrame, rng: np.random.Generator, val: float, test: float) -> np.ndarray:
    """train / val / test by lesion, stratified by class."""
    split = np.empty(len(frame), dtype=object)
    for _, group in frame.groupby("true"):
        lesions = rng.permutation(group["lesion"].unique())
        n_test, n_val = round(test * len(lesions)), round(val * len(lesions))
        names = ["test"] * n_test + ["val"] * n_val + ["train"] * (len(lesions) - n_test - n_val)
        where = dict(zip(lesions, names, strict=True))
        split[group.index] = group["lesion"].map(where).to_numpy()
    return split


def _flip(true: np.ndarray, train: np.ndarray, frac: float, k: int, rng: np.random.Generator):
    """Given labels and the flipped mask: a seeded `frac` of training labels moved to another class."""
    given, flipped = true.copy(), np.zeros(len(true), dtype=bool)
    idx = np.flatnonzero(train)
    chosen = rng.choice(idx, size=int(round(frac * len(idx))), replace=False)
    given[chosen] = (true[chosen] + rng.integers(1, k, size=len(chosen))) % k
    flipped[chosen] = True
    return given, flipped


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def simulate_probs(true, given, train, counts, epochs, rng, *, hard_frac=0.1, noise=1.0, memorise=8.0,
                   learn=4.0, prior=1.0):
    """Softmax probabilities [E, N, C] of the simulated trajectories (see the module docstring)."""
    n, k = len(true), len(counts)
    clarity = rng.uniform(0.7, 1.3, n)
    hard = rng.random(n) < hard_frac
    clarity[hard] = rng.uniform(0.3, 0.6, hard.sum())
    confuser = (true + rng.integers(1, k, n)) % k
    mix = np.where(hard, rng.uniform(0.5, 0.9, n), 0.0)
    base = np.eye(k)[true] + mix[:, None] * np.eye(k)[confuser]
    prior = prior * np.log(np.asarray(counts) / np.sum(counts))
    e = np.arange(1, epochs + 1)[:, None, None]
    learn = learn * (1 - np.exp(-e / (0.25 * epochs)))
    mem = memorise * np.clip((e - 0.4 * epochs) / (0.6 * epochs), 0, None)
    sample_noise = noise * rng.standard_normal((1, n, k))  # what this image looks like: fixed
    z = learn * clarity[None, :, None] * base[None] + prior + sample_noise + noise * rng.standard_normal((epochs, n, k))
    z = z + mem * train[None, :, None] * np.eye(k)[given][None]
    return _softmax(z)


def _weight_rows(probs, given, index, image_ids, *, lam, batch_size, weighting, rng) -> pd.DataFrame:
    """sample_weights.parquet rows for all epochs: loss, g, LOW weights per shuffled batch."""
    frames = []
    n, k = probs.shape[1], probs.shape[2]
    onehot = np.eye(k)[given]
    for ep in range(probs.shape[0]):
        p = probs[ep]
        g = ((p - onehot) ** 2).sum(axis=1)
        weight = np.ones(n)
        if weighting == "low":
            order = rng.permutation(n)
            for start in range(0, n, batch_size):
                batch = order[start : start + batch_size]
                weight[batch] = low_projection(g[batch], lam)
        p_true = p[np.arange(n), given]
        others = p.copy()
        others[np.arange(n), given] = -1.0
        frames.append(pd.DataFrame({
            "epoch": ep + 1, "index": index, "image_id": image_ids, "label": given,
            "loss": -np.log(np.clip(p_true, 1e-12, None)), "g": g, "weight": weight, "p_true": p_true,
            "predicted": p.argmax(axis=1), "other": others.argmax(axis=1), "p_other": others.max(axis=1),
        }))
    return pd.concat(frames, ignore_index=True)


def _draw(path: Path, label: int, size: int, rng: np.random.Generator) -> None:
    """A small dermoscopy-like picture: a dark irregular blob on skin tone, hue by class."""
    skin = np.array([225, 180, 160]) + rng.integers(-15, 15, 3)
    img = Image.new("RGB", (size, size), tuple(int(v) for v in skin))
    draw = ImageDraw.Draw(img)
    r = size * rng.uniform(0.22, 0.38)
    cx, cy = size / 2 + rng.uniform(-4, 4), size / 2 + rng.uniform(-4, 4)
    draw.ellipse([cx - r, cy - r * 0.8, cx + r, cy + r * 0.8], fill=HUES[label % len(HUES)])
    draw.ellipse([cx - r / 3, cy - r / 4, cx + r / 4, cy + r / 3], fill=tuple(v // 2 for v in HUES[label % len(HUES)]))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def _epoch_metrics(probs, weights, split, true, epochs) -> pd.DataFrame:
    """metrics.csv rows computed from the simulated probabilities."""
    rows = []
    for ep in range(epochs):
        w = weights[weights["epoch"] == ep + 1]
        row = {"epoch": ep + 1, "lr": 0.01, "seconds": 1.0,
               "train_loss": float((w["weight"] * w["loss"]).mean()), "train_loss_unweighted": float(w["loss"].mean()),
               "train_acc": float((w["predicted"] == w["label"]).mean())}
        for name in ("val", "test"):
            mask = split == name
            m = classification_metrics(true[mask], probs[ep][mask])
            row |= {f"{name}_{key}": value for key, value in m.items()}
        row |= {"weight_std": float(w["weight"].std()), "weight_max": float(w["weight"].max()),
                "weight_zero_frac": float((w["weight"] == 0).mean()),
                "pred_majority_frac": float(np.bincount(probs[ep][split == "val"].argmax(1)).max() / (split == "val").sum())}
        rows.append(row)
    return pd.DataFrame(rows)


def _config(name, *, epochs, lam, weighting, loss, batch_size, seed, flip_frac, data_dir) -> dict:
    return {
        "data": {"dataset": "isic2018", "data_dir": str(data_dir), "split": "lesion", "flip_labels": flip_frac},
        "model": {"name": "test_resnet", "pretrained": False},
        "optim": {"epochs": epochs, "batch_size": batch_size, "lr": 0.01},
        "loss": {"name": loss},
        "weighting": {"name": weighting, "lam": lam},
        "run": {"name": name, "seed": seed},
    }


def make_run(
    root: str | Path,
    name: str = "run",
    *,
    counts: tuple[int, ...] = COUNTS,
    epochs: int = 8,
    written_epochs: int | None = None,
    flip_frac: float = 0.0,
    hard_frac: float = 0.1,
    seed: int = 0,
    lam: float = 1.0,
    batch_size: int = 16,
    weighting: str = "low",
    loss: str = "ce",
    images: bool = True,
    image_size: int = 40,
    extra_columns: bool = False,
    relative_paths: bool = False,
    dx_type: bool = True,
    sim: dict | None = None,
) -> Path:
    """Write run directory `root/name` and return its path.

    `written_epochs` < `epochs` leaves a run "still training" (no `done`, fewer metric rows;
    0 writes no weight log at all). `extra_columns` adds the optional `other` / `p_other`
    columns to the weight log. `relative_paths` stores image paths relative to data.data_dir.
    `sim` overrides `simulate_probs` keywords (noise, memorise, learn, prior).
    """
    rng = np.random.default_rng(seed)
    k = len(counts)
    run_dir = Path(root) / name
    data_dir = Path(root) / f"{name}_images"
    frame = _lesions(counts, rng)
    split = _split(frame, rng, 0.15, 0.2)
    true = frame["true"].to_numpy()
    train = split == "train"
    given, flipped = _flip(true, train, flip_frac, k, rng)
    index = np.arange(len(frame))
    suffix = [".jpg" if i % 3 == 0 else ".png" for i in index]
    rel = [f"{iid}{s}" for iid, s in zip(frame["image_id"], suffix, strict=True)]
    manifest = pd.DataFrame({
        "index": index, "image_id": frame["image_id"],
        "path": rel if relative_paths else [str(data_dir / r) for r in rel],
        "label": given, "label_name": [CODES[c] for c in given], "split": split, "lesion_id": frame["lesion_id"],
    })
    if dx_type:
        manifest["dx_type"] = frame["dx_type"]
    if flip_frac > 0:
        manifest["flipped"] = flipped
        manifest["original_label"] = true
    if images:
        for r, t in zip(rel, true, strict=True):
            _draw(data_dir / r, int(t), image_size, rng)
    probs = simulate_probs(true, given, train, counts, epochs, rng, hard_frac=hard_frac, **(sim or {}))
    tr = np.flatnonzero(train)
    weights = _weight_rows(probs[:, tr], given[tr], tr, frame["image_id"].to_numpy()[tr],
                           lam=lam, batch_size=batch_size, weighting=weighting, rng=rng)
    metrics = _epoch_metrics(probs, weights, split, true, epochs)
    done_epochs = epochs if written_epochs is None else written_epochs
    cfg = _config(name, epochs=epochs, lam=lam, weighting=weighting, loss=loss, batch_size=batch_size,
                  seed=seed, flip_frac=flip_frac, data_dir=data_dir)
    files.write_yaml(run_dir / files.CONFIG, cfg)
    files.write_csv(run_dir / files.MANIFEST, manifest)
    files.write_json(run_dir / files.CLASSES, {"codes": CODES[:k], "names": NAMES[:k]})
    if done_epochs == 0:
        return run_dir
    columns = [c for c in files.WEIGHT_SCHEMA.names if extra_columns or c not in OPTIONAL]
    _write_weights(run_dir, weights[weights["epoch"] <= done_epochs][columns], extra_columns)
    files.write_csv(run_dir / files.METRICS, metrics[metrics["epoch"] <= done_epochs])
    best = int(metrics["val_bacc"][:done_epochs].to_numpy().argmax())
    for fname, part in ((files.PREDICTIONS, "test"), (files.PREDICTIONS_VAL, "val")):
        mask = split == part
        pred = pd.DataFrame(probs[best][mask], columns=CODES[:k])
        pred.insert(0, "image", frame["image_id"][mask].to_numpy())
        files.write_csv(run_dir / fname, pred)
    if done_epochs == epochs:
        files.write_text(run_dir / files.DONE, "")
    return run_dir


OPTIONAL = ("other", "p_other")  # columns that logs written before they existed lack


def _write_weights(run_dir: Path, rows: pd.DataFrame, extra: bool) -> None:
    """One row group per epoch, through the run-folder writer (or an older, narrower schema)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = run_dir / files.WEIGHTS
    if extra:
        for ep, group in rows.groupby("epoch"):
            files.append_weight_rows(path, group, keep_epochs_below=int(ep))
        return
    schema = pa.schema([f for f in files.WEIGHT_SCHEMA if f.name not in OPTIONAL])
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for _, group in rows.groupby("epoch"):
            writer.write_table(pa.Table.from_pandas(group, schema=schema, preserve_index=False))


def make_hostile_run(root: str | Path, name: str, *, text: str, epochs: int = 4, **kwargs) -> tuple[Path, str]:
    """A factory run whose strings were edited by hand, as an untrusted run folder can be: the
    training image with the highest mean weight gets image id `text`, class 1 gets code and name
    `text` + " code" / " name", the run name and that image's lesion id and dx_type become `text` too.
    Returns (run folder, the image id)."""
    import pyarrow.parquet as pq

    from dermlow.rundir import reader

    run_dir = make_run(root, name, epochs=epochs, **{"extra_columns": True, **kwargs})
    summary = reader.weight_summary(run_dir)
    old = reader.ranked_by_weight(summary, 1, highest=True)["image_id"].iloc[0]
    manifest = reader.read_manifest(run_dir)
    hit = manifest["image_id"] == old
    manifest.loc[hit, "image_id"], manifest.loc[hit, "lesion_id"], manifest.loc[hit, "dx_type"] = text, text, text
    files.write_csv(run_dir / files.MANIFEST, manifest)
    table = pq.read_table(run_dir / files.WEIGHTS).to_pandas()
    table.loc[table["image_id"] == old, "image_id"] = text
    for epoch, group in table.groupby("epoch"):  # rewritten with one row group per epoch, as training does
        files.append_weight_rows(run_dir / files.WEIGHTS, group, keep_epochs_below=int(epoch))
    classes = {"codes": list(CODES), "names": list(NAMES)}
    classes["codes"][1], classes["names"][1] = text + " code", text + " name"
    files.write_json(run_dir / files.CLASSES, classes)
    config = reader.load_run(run_dir).config
    config["run"]["name"] = text
    files.write_yaml(run_dir / files.CONFIG, config)
    return run_dir, text
