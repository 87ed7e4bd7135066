"""Benchmark mode: the paper's grid (method x lambda x learning rate x seed) through the one training loop.

Every grid point is an ordinary run folder under `<out>/<dataset>-<model>/`, trained by
`dermlow.training.loop.train`, so the review app opens it like any other run. Within a seed every
method starts from the same initial weights and sees the same data order (the training loop
seeds both from `run.seed`). A finished run (its `done` file) is skipped, an interrupted one
is resumed from its last checkpoint, so rerunning the same command continues a grid.

After the grid, `results.csv` (one row per run) and the report of `dermlow.bench.report`
(selection on validation, paired differences to plain CE, plots) are written beside the runs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from dermlow import config
from dermlow.bench.report import write_report
from dermlow.data.array_manifest import ArraySet
from dermlow.data.arrays import load_benchmark
from dermlow.data.prepare import DATASETS as DATA_SETS
from dermlow.errors import TrainingDiverged, UserError
from dermlow.method.guards import COLLAPSE_SHARE, MAJORITY_MARGIN
from dermlow.method.losses import LOSSES
from dermlow.method.weightings import WEIGHTINGS
from dermlow.resources import config_dir
from dermlow.rundir import files

log = logging.getLogger(__name__)

MODELS = ("lenet5", "densenet_bc_100", "wrn_28_2")
DEFAULT_MODEL = {"digits": "lenet5", "mnist": "lenet5", "cifar": "wrn_28_2"}


def datasets() -> list[str]:
    """The benchmark data sets: the array sets of the data set registry."""
    return [e.name for e in DATA_SETS.entries() if isinstance(e.obj, ArraySet)]


def methods() -> dict[str, tuple[str, str]]:
    """Method name -> (loss, weighting): every weighting with cross-entropy (`none` is plain CE),
    then every other loss without a weighting, then LOW with every other loss (`low_<loss>`, e.g.
    `low_balanced_ce`: LOW's g is that loss's gradient). LOW methods are expanded over the lambdas."""
    out = {name: ("ce", name) for name in WEIGHTINGS.names()}
    others = [name for name in LOSSES.names() if name != "ce" and name not in out]
    out |= {name: (name, "none") for name in others}
    out |= {f"low_{name}": (name, "low") for name in others}
    return out


def is_low(method: str) -> bool:
    """Whether `method` weights with LOW (its runs are expanded over the grid's lambdas)."""
    return methods()[method][1] == "low"


# settings that may differ between the saved run and this invocation without changing the experiment
VOLATILE = {"run.device", "run.log_every", "run.out", "run.amp", "data.num_workers", "data.data_dir",
            "data.download", "data.cache_dir"}
RESULTS = "results.csv"
DIVERGED = "diverged.txt"  # written by the grid beside a run that `dermlow train` stopped as diverged


@dataclass(frozen=True)
class GridPoint:
    """One run of the grid. `lam` is None for every method but the LOW ones."""

    method: str
    lam: float | None
    lr: float
    seed: int

    @property
    def setup(self) -> str:
        """The method with its lambda, e.g. 'low lam=0.1' or 'focal' (the unit lr is selected for)."""
        return self.method if self.lam is None else f"{self.method} lam={self.lam:g}"

    @property
    def name(self) -> str:
        """Run folder name, e.g. 'low-lam0.1-lr0.05-seed3'."""
        lam = "" if self.lam is None else f"-lam{self.lam:g}"
        return f"{self.method}{lam}-lr{self.lr:g}-seed{self.seed}"


@dataclass
class BenchSpec:
    """What `dermlow bench` was asked for (see the CLI help for each field)."""

    dataset: str
    model: str | None = None
    methods: list[str] = field(default_factory=lambda: ["none", "low", "focal", "spl", "is"])
    lams: list[float] = field(default_factory=lambda: [1.0, 0.5, 0.1, 0.01])
    method_lams: dict[str, list[float]] = field(default_factory=dict)  # --lams-for: a LOW variant's own lambdas
    seeds: list[int] = field(default_factory=lambda: list(range(5)))
    lrs: list[float] | None = None  # None: the config's single lr
    epochs: int | None = None
    data_dir: str = "data/bench"
    out: str = "runs/bench"
    download: bool = False
    device: str | None = None
    num_workers: int | None = None
    config: str | None = None  # YAML file; default configs/bench/<model>-<family>.yaml
    select: str = "final"  # epoch rule of the selection: final | best (see dermlow.bench.report)
    overrides: dict[str, Any] = field(default_factory=dict)  # --set KEY=VALUE

    @property
    def family(self) -> str:
        return "cifar" if self.dataset.startswith("cifar") else self.dataset.removesuffix("-imbalanced")

    @property
    def model_name(self) -> str:
        return self.model or DEFAULT_MODEL[self.family]

    @property
    def group_dir(self) -> Path:
        return Path(self.out) / f"{self.dataset}-{self.model_name}"


# ------------------------------------------------------------------------------- parsing / checks
def parse_numbers(text: str, what: str) -> list[float]:
    """'1,0.5,0.1' -> [1.0, 0.5, 0.1]; each must be a finite positive number (UserError otherwise)."""
    values = []
    for part in (p.strip() for p in str(text).split(",")):
        try:
            value = float(part)
        except ValueError:
            raise UserError(f"{what} must be comma-separated numbers like 1,0.5,0.1; '{part}' is not a number.") from None
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"{what} must be positive numbers, got {part}. LOW's lambda and learning rates "
                            "are > 0 (a larger lambda keeps the weights closer to 1).")
        values.append(value)
    if not values:
        raise UserError(f"{what} needs at least one value.")
    return list(dict.fromkeys(values))


def parse_method_lams(items: list[str], chosen: list[str]) -> dict[str, list[float]]:
    """['low_balanced_ce=100,10'] -> {'low_balanced_ce': [100.0, 10.0]}: lambdas for one LOW variant
    of `chosen` (the --methods), instead of --lams (UserError for another method or a bad value)."""
    out: dict[str, list[float]] = {}
    for method, sep, values in (str(item).partition("=") for item in items):
        if not sep or not method.strip():
            raise UserError(f"--lams-for takes METHOD=L1,L2 (e.g. low_balanced_ce=100,10), got '{method}{sep}{values}'.")
        if (method := method.strip()) not in chosen or not is_low(method):
            raise UserError(f"--lams-for {method}: not a LOW method of this grid's --methods (its LOW methods: "
                            f"{', '.join(m for m in chosen if is_low(m)) or 'none'}).")
        out[method] = parse_numbers(values, f"--lams-for {method}")
    return out


def parse_methods(text: str) -> list[str]:
    """'none,low,focal' -> ['none', 'low', 'focal'], each a key of `methods()`."""
    chosen = [m.strip() for m in str(text).split(",") if m.strip()]
    valid = methods()
    unknown = [m for m in chosen if m not in valid]
    if unknown or not chosen:
        raise UserError(f"--methods: unknown method(s) {', '.join(unknown) or '(none given)'}. "
                        f"Valid methods: {', '.join(valid)} (a loss name alone means that loss without weighting).")
    return list(dict.fromkeys(chosen))


def check_spec(spec: BenchSpec) -> None:
    """Reject names and values that would only fail after minutes of training."""
    if spec.dataset not in datasets():
        raise UserError(f"--dataset: unknown benchmark '{spec.dataset}'. Valid: {', '.join(datasets())}.")
    if spec.model_name not in MODELS:
        raise UserError(f"--model: unknown benchmark network '{spec.model_name}'. Valid: {', '.join(MODELS)} "
                        "(the paper's LeNet-5, DenseNet-BC-100 and WRN-28-2).")
    if not spec.seeds or any(s < 0 for s in spec.seeds):
        raise UserError(f"--seeds must be a positive count of seeds, got {len(spec.seeds)}.")
    if spec.epochs is not None and spec.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {spec.epochs}.")
    if spec.select not in ("final", "best"):
        raise UserError(f"--select must be final or best, got '{spec.select}'.")
    parse_methods(",".join(spec.methods))
    parse_numbers(",".join(str(x) for x in spec.lams), "--lams")
    parse_method_lams([f"{m}={','.join(str(x) for x in v)}" for m, v in spec.method_lams.items()], spec.methods)
    if spec.lrs is not None:
        parse_numbers(",".join(str(x) for x in spec.lrs), "--lrs")


def config_path(spec: BenchSpec) -> Path:
    """--config, or the shipped configs/bench/<model>-<family>.yaml."""
    if spec.config is not None:
        return Path(spec.config)
    shipped_dir = config_dir() / "bench"
    path = shipped_dir / f"{spec.model_name}-{spec.family}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.name for p in shipped_dir.glob("*.yaml")))
        raise UserError(f"no shipped setup for {spec.model_name} on {spec.dataset} ({path} does not exist). "
                        f"Pass --config FILE; shipped setups: {shipped}.")
    return path


# ------------------------------------------------------------------------------------------ grid
def make_grid(methods: list[str], lams: list[float], lrs: list[float], seeds: list[int],
              method_lams: dict[str, list[float]] | None = None) -> list[GridPoint]:
    """All runs, seed-major (an interrupted grid has whole seeds done), each LOW method expanded over
    its own lambdas (`method_lams`) or else `lams`."""
    points = []
    for seed in seeds:
        for lr in lrs:
            for method in methods:
                for lam in ((method_lams or {}).get(method, lams) if is_low(method) else [None]):
                    points.append(GridPoint(method, lam, lr, seed))
    return points


def base_layers(spec: BenchSpec) -> list[dict[str, Any]]:
    """Config layers shared by every run: the setup file, then the bench flags, then --set."""
    flags: dict[str, Any] = {
        "data": {"dataset": spec.dataset, "data_dir": spec.data_dir, "download": spec.download},
        "model": {"name": spec.model_name},
        "run": {"out": str(spec.group_dir)},
    }
    if spec.num_workers is not None:
        flags["data"]["num_workers"] = spec.num_workers
    if spec.epochs is not None:
        flags["optim"] = {"epochs": spec.epochs}
    if spec.device is not None:
        flags["run"]["device"] = spec.device
    return [config.read_yaml(config_path(spec)), flags, spec.overrides]


def point_config(layers: list[dict[str, Any]], point: GridPoint) -> config.Config:
    """The resolved configuration of one grid point (the grid's axes override everything else)."""
    loss, weighting = methods()[point.method]
    axis = {"loss": {"name": loss}, "weighting": {"name": weighting}, "optim": {"lr": point.lr},
            "run": {"seed": point.seed, "name": point.name}}
    if point.lam is not None:
        axis["weighting"]["lam"] = point.lam
    return config.resolve(*layers, axis)


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= _flat(value, name + ".")
        else:
            out[name] = value
    return out


def config_differences(saved: dict, wanted: dict) -> list[str]:
    """Settings (dotted names) whose saved value differs from the wanted one, volatile ones excepted.

    A setting the saved run does not have (added to dermlow later) differs only when the wanted
    value is not the code default; a setting that no longer exists is ignored.
    """
    chosen = {key: {"name": (wanted.get(key) or {}).get("name")} for key in config.CHOICES}
    a, b = _flat(config.upgrade(saved)), _flat(wanted)
    default = _flat(config.resolve(chosen).to_dict())
    return sorted(k for k in b if k not in VOLATILE and a.get(k, default.get(k)) != b[k])


def run_state(run_dir: Path, cfg: config.Config) -> str:
    """'done', 'resume' or 'new' for a run folder; a folder made with another setup is a UserError."""
    if not files.is_run_dir(run_dir):
        return "new"
    saved = yaml.safe_load((run_dir / files.CONFIG).read_text()) or {}
    diff = config_differences(saved, cfg.to_dict())
    if diff:
        shown = ", ".join(f"{k} (saved {_flat(saved).get(k)!r}, now {_flat(cfg.to_dict()).get(k)!r})" for k in diff[:3])
        raise UserError(f"{run_dir} holds a run of another setup: {shown}. Use another --out for a new grid, "
                        "or delete that folder to redo it.")
    return "done" if (run_dir / files.DONE).is_file() or (run_dir / DIVERGED).is_file() else "resume"


def preflight(spec: BenchSpec) -> None:
    """Load the data once before any folder is written (missing files stop here, with the fix)."""
    load_benchmark(spec.dataset, spec.data_dir, seed=spec.seeds[0], download=spec.download)


def run_grid(spec: BenchSpec, *, train_fn: Callable[..., Path] | None = None) -> pd.DataFrame:
    """Train every missing run of the grid, then write results.csv and the report; returns the results.

    `train_fn(cfg, resume=None|run_dir)` defaults to `dermlow.training.loop.train` (tests count its calls).
    """
    if train_fn is None:
        from dermlow.training.loop import train as train_fn  # here: `dermlow --help` needs no training code
    check_spec(spec)
    layers = base_layers(spec)
    lrs = spec.lrs or [config.resolve(*layers).optim.lr]
    points = make_grid(spec.methods, spec.lams, lrs, spec.seeds, spec.method_lams)
    configs = [point_config(layers, p) for p in points]  # every config checked before any training
    states = [run_state(spec.group_dir / p.name, c) for p, c in zip(points, configs, strict=True)]
    todo = sum(s != "done" for s in states)
    log.info("bench %s: %d runs in %s, %d already done", spec.group_dir.name, len(points), spec.group_dir,
             len(points) - todo)
    if todo:
        preflight(spec)
    for i, (point, cfg, state) in enumerate(zip(points, configs, states, strict=True), 1):
        if state == "done":
            continue
        t0 = time.perf_counter()
        run_dir = spec.group_dir / point.name
        try:
            train_fn(cfg, resume=run_dir if state == "resume" else None)
        except TrainingDiverged as err:  # counted as a collapsed run (errors 1), not the end of the grid
            files.write_text(run_dir / DIVERGED, f"{err}\n")
            log.warning("[%d/%d] %s: %s", i, len(points), point.name, err)
            continue
        log.info("[%d/%d] %s %s in %.0fs", i, len(points), point.name, "resumed" if state == "resume" else "trained",
                 time.perf_counter() - t0)
    results = collect(points, spec)
    files.write_csv(spec.group_dir / RESULTS, results, index=False)
    write_report(spec.group_dir, results, grid_description(spec, lrs))
    return results


def grid_description(spec: BenchSpec, lrs: list[float]) -> dict[str, Any]:
    """The grid's settings, shown at the top of summary.md."""
    return {"dataset": spec.dataset, "model": spec.model_name, "config": str(config_path(spec)),
            "methods": spec.methods, "lams": spec.lams, "method_lams": spec.method_lams, "lrs": lrs, "seeds": spec.seeds,
            "epochs": spec.epochs, "overrides": spec.overrides, "select": spec.select}


# --------------------------------------------------------------------------------------- results
def collect(points: list[GridPoint], spec: BenchSpec) -> pd.DataFrame:
    """One row per grid point that has at least one finished epoch or diverged (see `run_row`)."""
    rows = []
    for point in points:
        run_dir = spec.group_dir / point.name
        if (run_dir / files.METRICS).is_file() or (run_dir / DIVERGED).is_file():
            rows.append({"dataset": spec.dataset, "model": spec.model_name, **run_row(point, run_dir)})
    return pd.DataFrame(rows)


def run_row(point: GridPoint, run_dir: Path) -> dict[str, Any]:
    """A run's summary: validation and test errors at the best validation epoch (`best_*`, the epoch
    of best.pt) and at the last epoch (`final_*`), and whether it collapsed. Errors are fractions
    (err = 1 - accuracy, berr = 1 - balanced accuracy). A run that diverged (its loss or outputs
    became non-finite: `dermlow train` stops it) is collapsed, with every final error 1 (a model
    whose outputs are NaN classifies nothing) and best errors 1 when no epoch finished."""
    if (run_dir / DIVERGED).is_file():
        return diverged_row(point, run_dir)
    metrics = pd.read_csv(run_dir / files.METRICS)
    manifest = pd.read_csv(run_dir / files.MANIFEST, usecols=["label", "split"])
    val_labels = manifest.loc[manifest["split"] == "val", "label"].to_numpy()
    best = best_epoch_row(metrics)
    last = metrics.iloc[-1]
    return {
        "method": point.method, "lam": np.nan if point.lam is None else point.lam, "lr": point.lr,
        "seed": point.seed, "setup": point.setup, "epochs_done": int(last["epoch"]),
        "done": (run_dir / files.DONE).is_file(), "best_epoch": int(best["epoch"]),
        "best_val_berr": 1 - best["val_bacc"], "best_val_err": 1 - best["val_acc"],
        "best_test_err": 1 - best["test_acc"], "best_test_berr": 1 - best["test_bacc"],
        "final_val_berr": 1 - last["val_bacc"], "final_val_err": 1 - last["val_acc"],
        "final_test_err": 1 - last["test_acc"], "final_test_berr": 1 - last["test_bacc"],
        "final_pred_majority_frac": last["pred_majority_frac"],
        "collapsed": is_collapsed(metrics, val_labels), "run_dir": str(run_dir),
        "optimizer_steps": int(metrics["optimizer_steps"].sum()) if "optimizer_steps" in metrics else np.nan,
    }


def diverged_row(point: GridPoint, run_dir: Path) -> dict[str, Any]:
    """`run_row` of a diverged run (see there)."""
    metrics = pd.read_csv(run_dir / files.METRICS) if (run_dir / files.METRICS).is_file() else pd.DataFrame()
    best = best_epoch_row(metrics) if len(metrics) else None
    row = {"method": point.method, "lam": np.nan if point.lam is None else point.lam, "lr": point.lr,
           "seed": point.seed, "setup": point.setup, "epochs_done": len(metrics), "done": True,
           "best_epoch": 0 if best is None else int(best["epoch"]), "final_pred_majority_frac": np.nan,
           "collapsed": True, "run_dir": str(run_dir), "diverged": True,
           "optimizer_steps": int(metrics["optimizer_steps"].sum()) if "optimizer_steps" in metrics else np.nan}
    for split, metric in (("val", "berr"), ("val", "err"), ("test", "err"), ("test", "berr")):
        key = f"{split}_{'bacc' if metric == 'berr' else 'acc'}"
        row[f"best_{split}_{metric}"] = 1.0 if best is None else 1 - best[key]
        row[f"final_{split}_{metric}"] = 1.0
    return row


def best_epoch_row(metrics: pd.DataFrame) -> pd.Series:
    """The first epoch with the highest validation balanced accuracy: the epoch of `best.pt`.

    NaN accuracies count as 0, so a run whose metrics are all NaN selects its first epoch.
    """
    return metrics.loc[metrics["val_bacc"].fillna(0.0).idxmax()]


def is_collapsed(metrics: pd.DataFrame, val_labels: np.ndarray) -> bool:
    """Collapsed: a non-finite training or validation loss in any epoch, or, in the last epoch,
    >= 95% of validation predictions in one class while no class is within 5 points of that share
    (the thresholds of dermlow.method.guards)."""
    losses = metrics[["train_loss", "val_loss"]].to_numpy(dtype=float)
    if not np.isfinite(losses).all():
        return True
    share = float(metrics["pred_majority_frac"].iloc[-1])
    true_share = np.bincount(val_labels).max() / len(val_labels) if len(val_labels) else 0.0
    return bool(share >= COLLAPSE_SHARE and share > true_share + MAJORITY_MARGIN)
