"""The measured review loop: train on noisy labels -> flag -> a reviewer decides the top K -> retrain.

For each data set and seed, all through the `dermlow` command line (subprocesses):

1. `clean`: train on the true labels; `noisy`: train with `--flip-labels 0.2`.
2. For K = 5, 10, 20 % of the training set: `dermlow review export noisy --top N` gives the N
   images with the highest flag score; an oracle reviewer (the true label, from the manifest's
   `original_label`) relabels the flipped ones and confirms the others, written as a CSV and
   recorded with `dermlow review import --reviewer oracle` into a review database of its own;
   then `dermlow train ... --flip-labels 0.2 --review DB` retrains on the corrected labels.
3. The baseline a flag score must beat: the same with N training images drawn at random.

Reports per K: precision and recall of the reviewed set for the flipped labels, and test
balanced accuracy (at the best validation epoch; validation labels are clean) of clean, noisy,
noisy + review of the top K, noisy + review of K random images, mean +- std over seeds.
Reruns skip finished runs and resume interrupted ones.

    python benchmarks/review_loop.py --out runs/review-loop            # demo + digits, seeds 0 1 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
FLIP = 0.2
SETUPS = {
    # the synthetic ISIC 2018 set of `dermlow data demo` (1000 images), resnet10t from scratch, small images
    "demo": ["--config", "configs/demo.yaml", "--set", "data.image_size=48", "--set", "data.crop_size=40",
             "--epochs", "10", "--set", "optim.milestones=[7]", "--workers", "0"],
    # scikit-learn's 8x8 digits, LeNet-5, the bench setup shortened to 30 epochs
    "digits": ["--config", "configs/bench/lenet5-digits.yaml", "--dataset", "digits", "--epochs", "30",
               "--set", "optim.milestones=[20]"],
}


def dermlow(*args: str, log: Path | None = None) -> str:
    """Run `python -m dermlow ARGS`; its output (also appended to `log`), or exit on failure."""
    cmd = [sys.executable, "-m", "dermlow", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if log is not None:
        with log.open("a") as f:
            f.write("$ dermlow " + " ".join(args) + "\n" + proc.stdout + proc.stderr + "\n")
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): dermlow {' '.join(args)}\n{proc.stderr[-3000:]}")
    return proc.stdout


def train(setup: list[str], folder: Path, name: str, seed: int, extra: list[str], log: Path) -> Path:
    """Train (or resume, or skip when finished) run `folder/name`."""
    run = folder / name
    if (run / "done").exists():
        return run
    t0 = time.time()
    if (run / "config.yaml").exists():
        dermlow("train", "--resume", str(run), log=log)
    else:
        dermlow("train", *setup, "--device", "cpu", "--seed", str(seed), "--out", str(folder), "--name", name,
                *extra, log=log)
    print(f"  {run}: {time.time() - t0:.0f} s", flush=True)
    return run


def oracle(noisy: Path, image_ids: list[str], out: Path) -> pd.DataFrame:
    """The oracle reviewer's decisions CSV: relabel a flipped label to the true class, else confirm."""
    classes = pd.read_json(noisy / "classes.json", typ="series")["codes"]
    m = pd.read_csv(noisy / "manifest.csv", dtype={"image_id": str}).set_index("image_id").loc[image_ids]
    wrong = m["label"] != m["original_label"]
    frame = pd.DataFrame({"image_id": image_ids, "decision": np.where(wrong, "relabel", "confirm"),
                          "label": [classes[t] if w else "" for t, w in zip(m["original_label"], wrong, strict=True)],
                          "note": "oracle (true label)"})
    frame.to_csv(out, index=False)
    return m.assign(wrong=wrong)


def test_bacc(run: Path, epoch: str = "best") -> float:
    """Test balanced accuracy at the epoch with the best validation balanced accuracy (`best`, what
    dermlow reports) or at the last epoch (`last`)."""
    metrics = pd.read_csv(run / "metrics.csv")
    row = metrics["val_bacc"].idxmax() if epoch == "best" else metrics.index[-1]
    return float(metrics.loc[row, "test_bacc"])


def one_seed(name: str, seed: int, ks: list[int], out: Path) -> list[dict]:
    setup = SETUPS[name]
    if name == "demo":
        setup = [*setup, "--data-dir", str(out / "data" / "demo1000"), "--set", f"data.cache_dir={out / 'cache'}"]
    else:
        setup = [*setup, "--set", f"data.data_dir={out / 'data' / 'bench'}"]
    folder = out / name / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "commands.log"
    clean = train(setup, folder, "clean", seed, [], log)
    noisy = train(setup, folder, "noisy", seed, ["--flip-labels", str(FLIP)], log)
    manifest = pd.read_csv(noisy / "manifest.csv", dtype={"image_id": str})
    train_rows = manifest[manifest["split"] == "train"]
    flipped_total = int(train_rows["flipped"].sum())
    rows = []
    for k in ks:
        n = int(round(k / 100 * len(train_rows)))
        ranked = folder / f"top{k}.csv"
        dermlow("review", "export", str(noisy), "--format", "csv", "--top", str(n), "--out", str(ranked), log=log)
        picks = {"top": pd.read_csv(ranked, dtype={"image_id": str})["image_id"].tolist(),
                 "random": np.random.default_rng([seed, k]).choice(train_rows["image_id"], n, replace=False).tolist()}
        row = {"dataset": name, "seed": seed, "K %": k, "reviewed": n, "flipped": flipped_total,
               "clean": test_bacc(clean), "noisy": test_bacc(noisy),
               "clean last": test_bacc(clean, "last"), "noisy last": test_bacc(noisy, "last")}
        for how, ids in picks.items():
            db = folder / f"{how}{k}.sqlite"
            if not db.exists():
                decided = oracle(noisy, ids, folder / f"oracle_{how}{k}.csv")
                dermlow("review", "import", str(noisy), str(folder / f"oracle_{how}{k}.csv"), "--reviewer", "oracle",
                        "--review-db", str(db), log=log)
            else:
                decided = oracle(noisy, ids, folder / f"oracle_{how}{k}.csv")
            run = train(setup, folder, f"review-{how}{k}", seed, ["--flip-labels", str(FLIP), "--review", str(db)], log)
            found = int(decided["wrong"].sum())
            row |= {f"{how} precision": found / n, f"{how} recall": found / flipped_total, how: test_bacc(run),
                    f"{how} last": test_bacc(run, "last")}
        rows.append(row)
    return rows


def prepare_data(out: Path, datasets: list[str]) -> None:
    if "demo" in datasets and not (out / "data" / "demo1000").exists():
        dermlow("data", "demo", "--out", str(out / "data" / "demo1000"), "--n-images", "1000", "--seed", "0")


def table(results: pd.DataFrame, epoch: str = "") -> str:
    """Mean +- std over seeds per data set and K; balanced accuracy in % (`epoch` " last": at the
    last epoch instead of the best validation epoch)."""
    if epoch:
        names = ("clean", "noisy", "top", "random")
        results = results.drop(columns=list(names)).rename(columns={f"{c}{epoch}": c for c in names})
    lines = ["| data | K | reviewed | flips found (top K: precision / recall) | random K: precision / recall | "
             "BAcc clean | noisy | noisy + review top K | noisy + review K random | points per 100 reviewed (top / random) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (name, k), g in results.groupby(["dataset", "K %"], sort=False):
        def ms(col: str, scale: float = 100.0, g=g) -> str:
            v = g[col] * scale
            return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v.mean():.1f}"
        gain = {h: (g[h] - g["noisy"]) * 100 / g["reviewed"] * 100 for h in ("top", "random")}
        lines.append(f"| {name} | {k} % | {g['reviewed'].mean():.0f} | {ms('top precision')} / {ms('top recall')} | "
                     f"{ms('random precision')} / {ms('random recall')} | {ms('clean')} | {ms('noisy')} | {ms('top')} | "
                     f"{ms('random')} | {gain['top'].mean():.2f} / {gain['random'].mean():.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/review-loop"))
    p.add_argument("--datasets", nargs="+", default=["demo", "digits"], choices=list(SETUPS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--ks", type=int, nargs="+", default=[5, 10, 20], help="review budgets, % of the training set")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per training process")
    args = p.parse_args()
    os.environ.update({"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
                       "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                       "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"})
    out = args.out.resolve()
    prepare_data(out, args.datasets)
    rows = []
    for name in args.datasets:
        for seed in args.seeds:
            print(f"{name} seed {seed}", flush=True)
            rows += one_seed(name, seed, args.ks, out)
            results = pd.DataFrame(rows)
            results.to_csv(out / "results.csv", index=False)
    text = (f"Test balanced accuracy at the best validation epoch:\n\n{table(results)}\n\n"
            f"At the last epoch:\n\n{table(results, ' last')}\n")
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
