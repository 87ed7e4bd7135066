"""The `dermlow` command: parses arguments, calls the library, prints results. No logic here."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dermlow.cli.bench import add_bench
from dermlow.cli.evidence import add_check_options, add_evaluate_options, add_explain, duplicates_section
from dermlow.errors import UserError

log = logging.getLogger("dermlow")

EPILOG = "Run `dermlow COMMAND --help` for the options of each command."


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    _setup_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except UserError as err:
        print(f"dermlow: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dermlow: interrupted. A training run continues with `dermlow train --resume RUN_DIR`.",
              file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dermlow",
        description="Train dermoscopy classifiers with LOW (Learning Optimal sample Weights), "
        "review the per-sample weights, and export hard or possibly mislabeled cases.",
        epilog=EPILOG,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_train(sub)
    _add_evaluate(sub)
    _add_data(sub)
    _add_flag(sub)
    _add_app(sub)
    add_bench(sub)
    add_explain(sub)
    return parser


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="fine-tune a model with LOW (or a baseline) and record every sample weight",
                       description="Fine-tune a timm model on ISIC 2017/2018 with the paper's setup "
                       "(configs/isic<year>.yaml). Precedence: code defaults < --config YAML < flags < --set.")
    p.add_argument("--year", type=int, choices=(2017, 2018), help="ISIC challenge year: picks configs/isic<year>.yaml")
    p.add_argument("--config", type=Path, help="a YAML config file (instead of, or after, the year's)")
    p.add_argument("--data-dir", help="folder with the unpacked official files (see data/README.md)")
    p.add_argument("--dataset", help="isic2017 | isic2018 | ham10000 | generic (default from the config)")
    p.add_argument("--loss", help="ce | balanced_ce | focal")
    p.add_argument("--weighting", help="low | none | spl | is")
    p.add_argument("--lam", type=float, help="LOW's lambda on the per-sample scale (larger = weights closer to 1)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--model", help="timm model name (default densenet161)")
    p.add_argument("--weights", help="local pretrained weights (timm/torchvision state dict or .safetensors)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--out", help="folder that holds run folders (default runs/)")
    p.add_argument("--name", help="run folder name (default: derived from the setup)")
    p.add_argument("--workers", type=int, help="data loader processes")
    p.add_argument("--split", choices=("lesion", "random"), help="lesion-grouped (default) or the paper's random split")
    p.add_argument("--flip-labels", type=float, help="flip this fraction of training labels on purpose (seeded)")
    p.add_argument("--skip-bad-images", action="store_true", default=None,
                   help="leave unreadable images out (listed in skipped_images.txt) instead of stopping")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config value, e.g. --set optim.milestones=[30,60] (repeatable)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its last complete epoch")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train with N processes (DistributedDataParallel) by re-launching under torchrun; "
                   "--batch-size stays the global batch")
    p.set_defaults(func=_train)


FLAG_KEYS = {
    "data_dir": "data.data_dir", "dataset": "data.dataset", "loss": "loss.name", "weighting": "weighting.name",
    "lam": "weighting.lam", "epochs": "optim.epochs", "batch_size": "optim.batch_size", "lr": "optim.lr",
    "model": "model.name", "weights": "model.weights", "seed": "run.seed", "device": "run.device",
    "out": "run.out", "name": "run.name", "workers": "data.num_workers", "split": "data.split",
    "flip_labels": "data.flip_labels", "skip_bad_images": "data.skip_bad_images",
}


def _flag_layer(args: argparse.Namespace) -> dict:
    from dermlow.config import parse_overrides

    layer: dict = {}
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            section, leaf = key.split(".")
            layer.setdefault(section, {})[leaf] = value
    return _deep_update(layer, parse_overrides(args.set))


def _deep_update(base: dict, update: dict) -> dict:
    for key, value in update.items():
        base[key] = _deep_update(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def _train(args: argparse.Namespace) -> int:
    from dermlow import config
    from dermlow import distributed as dist
    from dermlow.training.loop import train

    if args.nproc and args.nproc > 1 and dist.env_world_size() == 1:
        return dist.launch(args.nproc, _without_nproc(args.argv))

    if args.resume is not None:
        from dermlow.rundir import files

        if not files.is_run_dir(args.resume):
            raise UserError(f"--resume {args.resume}: not a dermlow run folder (no config.yaml and manifest.csv).")
        allowed = {"optim": {"epochs"}, "run": {"device", "log_every"}, "data": {"num_workers", "cache_dir"}}
        flags = _flag_layer(args)
        for section, values in flags.items():
            extra = set(values) - allowed.get(section, set())
            if extra:
                raise UserError(f"--resume continues the saved setup; only --epochs, --device and --workers "
                                f"may change (got {section}.{sorted(extra)[0]}).")
        cfg = config.resolve(config.read_yaml(args.resume / "config.yaml"), flags)
        run_dir = train(cfg, resume=args.resume)
    else:
        layers = []
        if args.year is not None:
            layers.append(config.read_yaml(config.year_config(args.year)))
        if args.config is not None:
            layers.append(config.read_yaml(args.config))
        if not layers:
            raise UserError("say what to train: --year 2017|2018, or --config FILE.")
        cfg = config.resolve(*layers, _flag_layer(args))
        run_dir = train(cfg)
    if dist.is_main():
        print(_final_table(run_dir))
        print(f"\nRun folder: {run_dir}\nReview it:  dermlow app {run_dir}")
    dist.cleanup()
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def _final_table(run_dir: Path) -> str:
    import pandas as pd

    metrics = pd.read_csv(run_dir / "metrics.csv")
    best = metrics.loc[metrics["val_bacc"].idxmax()]
    lines = [f"best epoch {int(best['epoch'])} of {len(metrics)} (by validation balanced accuracy)",
             f"{'split':<6} {'Acc':>7} {'BAcc':>7} {'mAUC':>7} {'mF1':>7}"]
    for split in ("val", "test"):
        if f"{split}_acc" in metrics:
            lines.append(f"{split:<6} " + " ".join(f"{best[f'{split}_{m}']:7.4f}" for m in ("acc", "bacc", "mauc", "mf1")))
    return "\n".join(lines)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="recompute metrics of a run from its best checkpoint",
                       description="Recompute Acc, BAcc, mAUC, mF1, the per-class table and the confusion "
                       "matrix of a run's best (or last) checkpoint, with calibration (ECE, Brier, NLL; temperature "
                       "scaling with --calibrate) and operating points (thresholds chosen on val, reported on test).")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--split", default="test", help="val | test (default test)")
    p.add_argument("--tta", action="store_true", help="average the 8 flip/rotation variants of each image")
    p.add_argument("--checkpoint", default="best", help="best | last")
    p.add_argument("--device", default="auto")
    add_evaluate_options(p)  # --calibrate, --positive, ...; sets func (dermlow.cli.evidence.evaluate_command)


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="get, make or check data sets", description="Data set commands.")
    dsub = p.add_subparsers(title="data commands", metavar="ACTION")
    demo = dsub.add_parser("demo", help="write a small synthetic data set in the official ISIC layout")
    demo.add_argument("--out", type=Path, required=True)
    demo.add_argument("--year", type=int, choices=(2017, 2018), default=2018)
    demo.add_argument("--n-images", type=int, default=300)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_data_demo)
    check = dsub.add_parser("check", help="validate a data folder and print its class table and splits")
    check.add_argument("--year", type=int, choices=(2017, 2018))
    check.add_argument("--dataset", help="isic2017 | isic2018 | ham10000 | generic (default from --year)")
    check.add_argument("--data-dir", type=Path, required=True)
    check.add_argument("--split", choices=("lesion", "random"), default="lesion")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--labels-csv", help="generic data sets: CSV with image,label")
    check.add_argument("--image-dir", help="generic data sets: image folder")
    check.add_argument("--test-fraction", type=float, default=0.2)
    check.add_argument("--val-fraction", type=float, default=0.1)
    check.add_argument("--splits-file", type=Path, help="reuse an image_id,split CSV instead of splitting")
    check.add_argument("--skip-bad-images", action="store_true",
                       help="report unreadable images and go on instead of stopping")
    check.add_argument("--save-splits", type=Path, help="write the image_id,split table to this CSV")
    add_check_options(check)  # near-duplicates: --group-duplicates, --no-duplicates, --cache-dir, --save-duplicates
    check.set_defaults(func=_data_check)
    fetch = dsub.add_parser("fetch", help="download and unpack the official archives (resumable)")
    fetch.add_argument("--year", type=int, choices=(2017, 2018), required=True)
    fetch.add_argument("--out", type=Path, required=True)
    fetch.set_defaults(func=_data_fetch)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _data_demo(args: argparse.Namespace) -> int:
    from dermlow.data.demo import make_demo

    path = make_demo(args.out, year=args.year, n_images=args.n_images, seed=args.seed)
    print(f"wrote a synthetic ISIC {args.year} data set to {path}")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from dermlow.data.isic import describe, load_manifest
    from dermlow.data.splits import save_splits

    dataset = args.dataset or (f"isic{args.year}" if args.year else None)
    if dataset is None:
        raise UserError("say which data set: --year 2017|2018 or --dataset NAME.")
    manifest, spec, skipped = load_manifest(
        args.data_dir, dataset=dataset, split=args.split, seed=args.seed, labels_csv=args.labels_csv,
        image_dir=args.image_dir, test_fraction=args.test_fraction, val_fraction=args.val_fraction,
        splits_file=args.splits_file, skip_bad_images=args.skip_bad_images,
        group_duplicates=args.group_duplicates, cache_dir=args.cache_dir)
    print(describe(manifest, spec) + duplicates_section(args, manifest))
    if skipped:
        print(f"\n{len(skipped)} unreadable images would be left out:")
        print("\n".join(f"  {line}" for line in skipped))
    if args.save_splits:
        save_splits(manifest, args.save_splits)
        print(f"splits written to {args.save_splits}")
    return 0


def _data_fetch(args: argparse.Namespace) -> int:
    from dermlow.data.fetch import fetch

    path = fetch(args.year, args.out)
    print(f"ISIC {args.year} files are in {path}. Train with: dermlow train --year {args.year} --data-dir {path}")
    return 0


def _add_flag(sub) -> None:
    p = sub.add_parser("flag", help="export the cases most likely hard or mislabeled, for relabeling",
                       description="Rank training images by their weight history and by how confidently the "
                       "model contradicts the label (see docs/flagging.md), and write a CSV.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--top", type=int, help="keep the N highest-scoring cases (per class with --per-class)")
    p.add_argument("--per-class", action="store_true", help="rank within each given label")
    p.add_argument("--out", type=Path, help="CSV path (default RUN_DIR/flagged.csv)")
    p.add_argument("--copy-images", type=Path, metavar="DIR", help="copy the flagged images here")
    p.set_defaults(func=_flag)


def _flag(args: argparse.Namespace) -> int:
    from dermlow.rundir.flag_scores import export_flags

    out = args.out or args.run_dir / "flagged.csv"
    frame = export_flags(args.run_dir, top=args.top, per_class=args.per_class, out=out, copy_images=args.copy_images)
    print(f"{len(frame)} cases written to {out}")
    return 0


def _add_app(sub) -> None:
    p = sub.add_parser("app", help="open the review app (Streamlit) on runs",
                       description="Serve the clinician review app for a run folder or a folder of runs.")
    p.add_argument("path", nargs="?", type=Path, default=Path("runs"), help="RUN_DIR or RUNS_DIR (default runs/)")
    p.add_argument("--port", type=int, default=8501)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.set_defaults(func=_app)


def _app(args: argparse.Namespace) -> int:
    from dermlow.cli.serve import serve

    return serve(args.path, host=args.host, port=args.port)


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if verbose else "%(message)s"))
    root = logging.getLogger("dermlow")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


if __name__ == "__main__":
    sys.exit(main())
