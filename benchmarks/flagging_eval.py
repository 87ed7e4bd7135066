"""How well do `dermlow flag`'s scores find deliberately flipped labels? (docs/flagging.md)

Run:  .venv/bin/python benchmarks/flagging_eval.py [--data digits demo] [--seeds 0 1 2] [--out runs/flagging]

For each data set and seed it
1. trains two runs with 10% of the training labels flipped (`data.flip_labels`, seeded), one
   with weighting `low` (lam 1) and one with `none` (plain CE; g is still logged);
2. for the seeds in --cv-seeds (default: all), trains K (default 5) plain-CE models with
   dermlow's own training loop, each on all training images but one fold (the noisy labels
   kept), and reads the held-out fold's class probabilities from the model with the best
   validation balanced accuracy (predictions.csv of a fold run whose `test` split is the
   held-out fold): out-of-sample probabilities for cleanlab. Fold runs train for the run's own
   epochs, except on the demo data (6 epochs, CPU budget; see docs/flagging.md);
3. scores both runs (`dermlow.bench.flag_eval.evaluate_flags`: the combined score, each component, the
   cheap per-sample scores; plus the `alt:` scores considered and not chosen) and cleanlab
   (`dermlow.bench.flag_eval.cleanlab_quality`), and prints markdown tables: mean +- sd over seeds per
   data set and weighting, and each score's AP shortfall against the best single score of
   each run. Everything trains on the CPU.

Data: `digits` is scikit-learn's 8x8 digits (balanced, 10 classes) with LeNet-5, 60 epochs at
lr 0.03 (the training set, flips included, is fitted by the end); `demo` is the synthetic ISIC
2018 set of `dermlow data demo` (600 images, imbalanced, 7 classes) with configs/demo.yaml
(resnet10t, 80 px), written to --demo-dir when missing. Runs that finished are reused, so an
interrupted evaluation continues where it stopped. Results are kept in <out>/flag_results.csv
(rows of the same data set, seed and weighting replaced), and the printed tables summarise
everything stored there, so several calls add up to one report.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from dermlow import config
from dermlow.bench import flag_eval
from dermlow.rundir import files, flag_scores, reader
from dermlow.training import loop

log = logging.getLogger("flagging_eval")
ROOT = Path(__file__).resolve().parent.parent

DIGITS = {
    "data": {"dataset": "digits", "val_fraction": 0.2, "num_workers": 0},
    "model": {"name": "lenet5", "pretrained": False},
    "optim": {"epochs": 60, "batch_size": 64, "lr": 0.03, "momentum": 0.9, "weight_decay": 0.0,
              "milestones": [1000]},
    "loss": {"name": "ce"},
}


CV_EPOCHS = {"demo": 6}
"""Epochs of each cleanlab fold run where it is not the run's own (CPU budget; docs/flagging.md)."""


def setup_layer(data: str, args: argparse.Namespace) -> dict:
    """The configuration layer of one data set (before seed, weighting and flips)."""
    if data == "digits":
        layer = {k: dict(v) for k, v in DIGITS.items()}
        layer["data"]["data_dir"] = str(args.digits_dir)
        return layer
    if data == "demo":
        layer = config.read_yaml(ROOT / "configs" / "demo.yaml")
        layer["data"] = {**layer["data"], "data_dir": str(ensure_demo(args.demo_dir)), "num_workers": 0}
        return layer
    raise SystemExit(f"unknown data set {data!r}: use digits or demo")


def ensure_demo(folder: Path) -> Path:
    """The 600-image synthetic ISIC 2018 set (seed 0), written once."""
    from dermlow.data.demo import make_demo

    if not (folder / "README_DEMO.txt").exists():
        make_demo(folder, year=2018, n_images=600, seed=0)
    return folder


def run_layer(base: dict, *, seed: int, weighting: str, name: str, out: Path, flip: float) -> dict:
    """`base` with the run's seed, weighting (lam 1), label flips, CPU device and folder."""
    layer = {k: dict(v) for k, v in base.items()}
    layer["data"]["flip_labels"] = flip
    layer["weighting"] = {"name": weighting, "lam": 1.0} if weighting == "low" else {"name": weighting}
    layer["run"] = {**layer.get("run", {}), "seed": seed, "device": "cpu", "out": str(out), "name": name}
    return layer


def train_once(layer: dict) -> Path:
    """Train the run named in `layer` unless it finished before (resume a partial one)."""
    cfg = config.resolve(layer)
    run_dir = Path(cfg.run.out) / cfg.run.name
    if (run_dir / files.DONE).exists():
        return run_dir
    start = time.perf_counter()
    resume = run_dir if files.is_run_dir(run_dir) else None
    loop.train(cfg, resume=resume)
    log.info("trained %s in %.0f s", run_dir.name, time.perf_counter() - start)
    return run_dir


def fold_of(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A seeded stratified fold number (0..folds-1) per image."""
    from sklearn.model_selection import StratifiedKFold

    out = np.empty(len(labels), dtype=np.int64)
    min_count = np.bincount(labels).min()
    splitter = StratifiedKFold(n_splits=min(folds, max(2, int(min_count))), shuffle=True, random_state=seed)
    for f, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        out[held] = f
    return out


def cross_validated_probs(run_dir: Path, base: dict, *, folds: int, epochs: int, out: Path) -> pd.DataFrame:
    """Out-of-sample probabilities of every training image of `run_dir` (index, label, flipped,
    then one column per class) from `folds` plain-CE fold runs trained with dermlow's loop.

    A fold run is started by hand from the noisy run's manifest (its flipped labels kept, no
    new flips): the held-out fold becomes its `test` split, validation stays, the real test
    split is left out; `loop.train(cfg, resume=folder)` then trains it from epoch 1.
    """
    manifest = reader.read_manifest(run_dir)
    trained = manifest[manifest["split"] == "train"]
    noisy_cfg = config.resolve(config.upgrade(config.read_yaml(run_dir / files.CONFIG)))
    fold = fold_of(trained["label"].to_numpy(), folds, noisy_cfg.run.seed)
    parts = []
    for f in range(int(fold.max()) + 1):
        name = f"{run_dir.name}-cv{folds}x{epochs}-{f}"
        layer = run_layer(base, seed=noisy_cfg.run.seed, weighting="none", name=name, out=out, flip=0.0)
        layer["optim"]["epochs"] = epochs
        cfg = config.resolve(layer)
        fold_dir = out / name
        if not (fold_dir / files.DONE).exists():
            if not files.is_run_dir(fold_dir):
                split = manifest["split"].where(manifest["split"] != "test", "")
                split.loc[trained.index[fold == f]] = "test"
                write_fold_run(fold_dir, cfg, manifest.assign(split=split)[split != ""], run_dir)
            start = time.perf_counter()
            loop.train(cfg, resume=fold_dir)
            log.info("trained %s in %.0f s", name, time.perf_counter() - start)
        parts.append(pd.read_csv(fold_dir / files.PREDICTIONS, dtype={"image": str}))
    probs = pd.concat(parts, ignore_index=True).rename(columns={"image": "image_id"})
    keep = trained[["index", "image_id", "label", "flipped"]]
    return keep.merge(probs, on="image_id", how="left", validate="one_to_one").drop(columns="image_id")


def write_fold_run(fold_dir: Path, cfg: config.Config, manifest: pd.DataFrame, noisy_dir: Path) -> None:
    """The start files of a run folder (manifest, classes, config; config last, as training does)."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    files.write_csv(fold_dir / files.MANIFEST, manifest)
    (fold_dir / files.CLASSES).write_text((noisy_dir / files.CLASSES).read_text())
    files.write_yaml(fold_dir / files.CONFIG, cfg.to_dict())


def cleanlab_rows(cv: pd.DataFrame, protocol: str) -> list[dict]:
    """cleanlab's label-quality ranking and find_label_issues set on the cross-validated probabilities."""
    probs = cv.drop(columns=["index", "label", "flipped"]).to_numpy(dtype=float)
    q = flag_eval.cleanlab_quality(cv["label"].to_numpy(), probs, cv["flipped"].to_numpy(dtype=bool))
    return [{"score": f"cleanlab label quality ({protocol})", "ap": q["ap"], "precision_at_k": q["precision_at_k"]},
            {"score": f"cleanlab find_label_issues ({protocol})", "ap": np.nan, "precision_at_k": np.nan,
             "found": q["found"], "found_precision": q["found_precision"], "found_recall": q["found_recall"]}]


V1_SHARES = {"weight_excess": 0.25, "above1_excess": 1 / 12, "contradiction": 1 / 3, "misclassified": 1 / 3}
"""The score's shares before this study (mean weight, share above 1, 1 - mean p, share misclassified)."""


def _v1_excess(summary: pd.DataFrame, column: str) -> pd.Series:
    """The class reference before this study: a class with < 5 agreed images used its own median."""
    agreed, label = summary["misclassified"] <= 0.5, summary["label"]
    ref = summary[column].where(agreed).groupby(label).transform("median")
    whole = summary.groupby("label")[column].transform("median")
    return summary[column] - ref.where(agreed.groupby(label).transform("sum") >= 5, whole)


def alternatives(run_dir: Path) -> list[dict]:
    """Scores considered and not chosen (docs/flagging.md): what each change of the default did."""
    summary = reader.weight_summary(run_dir)
    truth = summary["flipped"].to_numpy(dtype=bool)
    k = int(truth.sum())
    v1 = (0.25 * _v1_excess(summary, "weight_mean").rank(pct=True)
          + 1 / 12 * _v1_excess(summary, "weight_above1").rank(pct=True)
          + 1 / 3 * (1 - summary["p_true_mean"]).rank(pct=True) + 1 / 3 * summary["misclassified"].rank(pct=True))
    rows = [{"score": "alt: previous default (v1)", **flag_eval.ranking_quality(truth, v1.to_numpy(), k)}]
    for name, shares in [("alt: v1 shares, new class reference", V1_SHARES),
                         ("alt: combined + 1 - mean p (thirds)", {"weight_excess": 1, "loss_excess": 1, "contradiction": 1})]:
        scored = flag_scores.flag_scores(summary, shares=shares)  # sorted by its own rank: truth from the same frame
        rows.append({"score": name, **flag_eval.ranking_quality(scored["flipped"].to_numpy(dtype=bool),
                                                            scored["score"].to_numpy(), k)})
    return rows


def evaluate(data: str, seed: int, args: argparse.Namespace) -> pd.DataFrame:
    """All rows (score x weighting) of one data set and seed."""
    base = setup_layer(data, args)
    out = args.out / data
    frames = []
    cv = None
    for weighting in args.weightings:
        name = f"{data}-flip{args.flip:g}-{weighting}-seed{seed}"
        run_dir = train_once(run_layer(base, seed=seed, weighting=weighting, name=name, out=out, flip=args.flip))
        ev = pd.concat([flag_eval.evaluate_flags(run_dir), pd.DataFrame(alternatives(run_dir))], ignore_index=True)
        ev[["k", "flipped", "images"]] = ev[["k", "flipped", "images"]].ffill()
        if cv is None and args.folds > 1 and seed in (args.cv_seeds or [seed]):
            epochs = args.cv_epochs or CV_EPOCHS.get(data) or config.resolve(base).optim.epochs
            cv = cross_validated_probs(run_dir, base, folds=args.folds, epochs=epochs, out=out)
            protocol = f"{args.folds}-fold CV, {epochs} epochs"
        frames.append(ev.assign(weighting=weighting))
    if cv is not None:
        meta = frames[0][["k", "flipped", "images"]].iloc[0].to_dict()
        frames.append(pd.DataFrame(cleanlab_rows(cv, protocol)).assign(weighting="(separate CE folds)", **meta))
    epochs = config.resolve(base).optim.epochs
    return pd.concat(frames, ignore_index=True).assign(data=data, seed=seed, epochs=epochs)


def markdown(frame: pd.DataFrame, columns: list[str]) -> str:
    """A plain markdown table (no tabulate dependency)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in frame[columns].itertuples(index=False):
        lines.append("| " + " | ".join(_cell(v) for v in row) + " |")
    return "\n".join(lines)


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.3f}"
    return str(value)


def summarise(results: pd.DataFrame) -> str:
    """Mean +- sd over seeds of AP and P@k per data set, weighting and score, best AP first."""
    parts = []
    for (data, weighting), group in results.groupby(["data", "weighting"], sort=False):
        agg = group.groupby("score", sort=False).agg(
            ap=("ap", "mean"), ap_sd=("ap", "std"), pk=("precision_at_k", "mean"), pk_sd=("precision_at_k", "std"),
            seeds=("seed", "nunique"), k=("k", "mean"))
        agg = agg.sort_values("ap", ascending=False).reset_index()
        agg["AP"] = [f"{m:.3f} ± {s:.3f}" if s == s else f"{m:.3f}" for m, s in zip(agg["ap"], agg["ap_sd"], strict=True)]
        agg["P@k"] = [f"{m:.3f} ± {s:.3f}" if s == s else f"{m:.3f}" for m, s in zip(agg["pk"], agg["pk_sd"], strict=True)]
        agg = agg[agg["ap"].notna()]
        parts.append(f"### {data}, weighting {weighting} (seeds: {int(agg['seeds'].max())}, mean k {agg['k'].mean():.0f})\n\n"
                     + markdown(agg, ["score", "AP", "P@k"]))
    parts.append("### Shortfall against the best single score of each run (AP; all runs above)\n\n"
                 + markdown(shortfall(results), ["score", "runs", "mean shortfall", "worst shortfall", "best in runs"]))
    found = results[results["score"].str.contains("find_label_issues")]
    if len(found):
        found = found.assign(found=found["found"].astype(int), k=found["k"].astype(int))
        parts.append("### cleanlab find_label_issues (a set, not a ranking)\n\n"
                     + markdown(found, ["data", "seed", "found", "k", "found_precision", "found_recall"]))
    return "\n\n".join(parts)


def shortfall(results: pd.DataFrame) -> pd.DataFrame:
    """Per score: how far its AP falls below the best *single* score (a component or a cheap
    per-sample score, not a combination, not cleanlab) of the same run, mean and worst over runs."""
    runs_ = results[results["weighting"].isin(["low", "none"]) & results["ap"].notna()]
    single = ~runs_["score"].str.startswith(("combined", "alt:"))
    key = ["data", "seed", "weighting"]
    best = runs_[single].groupby(key)["ap"].max().rename("best")
    frame = runs_.join(best, on=key).assign(gap=lambda f: f["best"] - f["ap"])
    out = frame.groupby("score").agg(runs=("gap", "size"), mean=("gap", "mean"), worst=("gap", "max"),
                                     wins=("gap", lambda g: int((g <= 1e-12).sum())))
    out = out.sort_values("worst").reset_index()
    out["mean shortfall"] = out["mean"].map("{:.3f}".format)
    out["worst shortfall"] = out["worst"].map("{:.3f}".format)
    out["best in runs"] = out["wins"].astype(str)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="+", default=["digits", "demo"], choices=["digits", "demo"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--weightings", nargs="+", default=["low", "none"])
    p.add_argument("--flip", type=float, default=0.1)
    p.add_argument("--folds", type=int, default=5, help="cleanlab's cross-validation folds (0: skip cleanlab)")
    p.add_argument("--cv-epochs", type=int, default=None,
                   help="epochs of each fold run (default: the run's; demo: 6)")
    p.add_argument("--cv-seeds", nargs="+", type=int, default=None,
                   help="seeds that get the cleanlab cross-validation (default: all)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "flagging")
    p.add_argument("--digits-dir", type=Path, default=ROOT / "data" / "bench")
    p.add_argument("--demo-dir", type=Path, default=ROOT / "data" / "demo-flags")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("dermlow.training.loop", "dermlow.training.session", "dermlow.data.prepare"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    store = args.out / "flag_results.csv"
    results = pd.read_csv(store) if store.exists() else pd.DataFrame()
    for data in args.data:
        for seed in args.seeds:
            new = evaluate(data, seed, args)
            if len(results):  # replace what this call measured again, keep the rest
                key = ["data", "seed", "weighting"]
                old = results.set_index(key).index.isin(new.set_index(key).index)
                results = results[~old]
            results = pd.concat([results, new], ignore_index=True)
            files.write_csv(store, results)
    print(summarise(results))


if __name__ == "__main__":
    main()
