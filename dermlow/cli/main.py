"""The `dermlow` command: argparse subcommands that call the library and print results.

Choices and help come from the registries (losses, weightings, data sets, `--year`), and the
training flags from the config dataclasses' field metadata (`dermlow.settings.flag`), so a new
option gets its flag where it is declared. Errors a user can fix end as one line and exit code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dermlow.cli.bench import BENCH_HELP, add_bench
from dermlow.cli.evidence import add_check_options, add_evaluate_options, add_explain, duplicates_section
from dermlow.cli.review import add_review
from dermlow.errors import UserError

log = logging.getLogger("dermlow")

EPILOG = "Run `dermlow COMMAND --help` for the options of each command."


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    _setup_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args) or 0
    except UserError as err:  # TrainingDiverged exits with 3
        print(f"dermlow: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("dermlow: interrupted. A training run continues with `dermlow train --resume RUN_DIR`.",
              file=sys.stderr)
        return 130


TRAIN_HELP = "fine-tune a model with LOW (or a baseline) and record every sample weight"
DATA_HELP = "get, make or check data sets"


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The `dermlow` parser. Given `argv`, only its command gets its full options: train, data and
    bench list the registries (which import torch), so `dermlow --help` and `dermlow app` start fast."""
    command = None if argv is None else next((a for a in argv if not a.startswith("-")), "")
    parser = argparse.ArgumentParser(
        prog="dermlow",
        description="Train dermoscopy classifiers with LOW (Learning Optimal sample Weights), "
        "review the per-sample weights, and export hard or possibly mislabeled cases.",
        epilog=EPILOG,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    commands = [("train", _add_train, TRAIN_HELP), ("evaluate", _add_evaluate, None), ("data", _add_data, DATA_HELP),
                ("flag", _add_flag, None), ("app", _add_app, None), ("bench", add_bench, BENCH_HELP),
                ("review", add_review, None), ("explain", add_explain, None)]
    for name, add, help_ in commands:
        if help_ is None or command is None or command == name:
            add(sub)
        else:  # listed in `dermlow --help`; its options are built when it is the command
            sub.add_parser(name, help=help_)
    return parser


def _add_train(sub) -> None:
    from dermlow import config, settings
    from dermlow.data.prepare import DATASETS

    p = sub.add_parser("train", help=TRAIN_HELP,
                       description="Fine-tune a timm model on ISIC 2017/2018 with the paper's setup "
                       "(configs/isic<year>.yaml). Precedence: code defaults < --config YAML < flags < --set.")
    p.add_argument("--year", type=int, choices=config.years(),
                   help="ISIC challenge year: picks configs/isic<year>.yaml")
    p.add_argument("--config", type=Path, help="a YAML config file (instead of, or after, the year's)")
    for section, cls in config.SECTIONS.items():
        more = {"dataset": {"flag": "--dataset", "help": DATASETS.help_text()}} if section == "data" else {}
        settings.add_flags(p, section, cls, **more)
    for section, registry in config.CHOICES.items():
        p.add_argument(f"--{section}", dest=f"{section}.name", metavar=section.upper(), help=registry.help_text())
        seen: dict[str, str] = {}
        for entry in registry.entries():
            settings.add_flags(p, section, entry.options, seen=seen)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config value, e.g. --set optim.milestones=[30,60] (repeatable)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a run from its last complete epoch")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train with N processes (DistributedDataParallel) by re-launching under torchrun; "
                   "--batch-size stays the global batch")
    p.set_defaults(func=_train)


def _flag_layer(args: argparse.Namespace) -> dict:
    from dermlow.config import parse_overrides
    from dermlow.settings import flag_layer

    return _deep_update(flag_layer(args), parse_overrides(args.set))


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
        cfg = config.resolve(config.upgrade(config.read_yaml(args.resume / "config.yaml")), flags)
        run_dir = train(cfg, resume=args.resume)
    else:
        layers = []
        if args.year is not None:
            layers.append(config.read_yaml(config.year_config(args.year)))
        if args.config is not None:
            layers.append(config.read_yaml(args.config))
        if not layers:
            years = "|".join(str(y) for y in config.years())
            raise UserError(f"say what to train: --year {years}, or --config FILE.")
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
    from dermlow.config import years
    from dermlow.data.fetch import FILES
    from dermlow.data.prepare import DATASETS

    p = sub.add_parser("data", help=DATA_HELP, description="Data set commands.")
    dsub = p.add_subparsers(title="data commands", metavar="ACTION")
    demo = dsub.add_parser("demo", help="write a small synthetic data set in the official ISIC layout")
    demo.add_argument("--out", type=Path, required=True)
    demo.add_argument("--year", type=int, choices=(2017, 2018), default=2018)
    demo.add_argument("--n-images", type=int, default=300)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_data_demo)
    check = dsub.add_parser("check", help="validate a data folder and print its class table and splits")
    check.add_argument("--year", type=int, choices=years())
    check.add_argument("--dataset", help=f"{DATASETS.help_text()} (default from --year)")
    check.add_argument("--data-dir", type=Path, required=True)
    check.add_argument("--split", choices=("lesion", "random"), default="lesion")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--labels-csv", help="generic data sets: CSV with image,label")
    check.add_argument("--image-dir", help="generic data sets: image folder")
    check.add_argument("--test-fraction", type=float, default=0.2)
    check.add_argument("--val-fraction", type=float, default=0.1)
    check.add_argument("--test-set", choices=("split", "official"),
                       help="test set: held out of the training images (split) or the official one (default: the "
                       "year's config, configs/isic<year>.yaml; split without --year)")
    check.add_argument("--splits-file", type=Path, help="reuse an image_id,split CSV instead of splitting")
    check.add_argument("--skip-bad-images", action="store_true",
                       help="report unreadable images and go on instead of stopping")
    check.add_argument("--max-image-pixels", type=int, default=100_000_000, metavar="N",
                       help="refuse images with more pixels than this, before decoding them (default 100 MP)")
    check.add_argument("--save-splits", type=Path, help="write the image_id,split table to this CSV")
    add_check_options(check)  # near-duplicates: --group-duplicates, --no-duplicates, --cache-dir, --save-duplicates
    check.set_defaults(func=_data_check)
    fetch = dsub.add_parser("fetch", help="download and unpack the official archives (resumable)")
    fetch.add_argument("--year", type=int, choices=sorted(FILES), required=True)
    fetch.add_argument("--out", type=Path, required=True)
    fetch.add_argument("--max-unpack-ratio", type=float, default=20, metavar="X",
                       help="refuse an archive that would unpack to more than X times its size (default 20)")
    fetch.set_defaults(func=_data_fetch)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _data_demo(args: argparse.Namespace) -> int:
    from dermlow.data.demo import make_demo

    path = make_demo(args.out, year=args.year, n_images=args.n_images, seed=args.seed)
    print(f"wrote a synthetic ISIC {args.year} data set to {path}")
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from dermlow.data.prepare import challenge_years, read_data
    from dermlow.data.sources import DataConfig, DatasetSpec
    from dermlow.data.splits import class_warnings, describe, save_splits

    dataset = args.dataset or challenge_years().get(args.year)
    if dataset is None:
        raise UserError("say which data set: --year YEAR or --dataset NAME.")
    test = args.test_set or (_year_test(args.year) if args.year else "split")
    data = DataConfig(dataset=dataset, data_dir=str(args.data_dir), split=args.split, labels_csv=args.labels_csv,
                      image_dir=args.image_dir, test_fraction=args.test_fraction, val_fraction=args.val_fraction,
                      splits_file=str(args.splits_file) if args.splits_file else None,
                      skip_bad_images=args.skip_bad_images, max_image_pixels=args.max_image_pixels,
                      test=test, group_duplicates=args.group_duplicates, cache_dir=args.cache_dir,
                      duplicates=False)  # duplicates_section reports them
    run_data = read_data(data, seed=args.seed)
    print(describe(run_data.manifest, DatasetSpec(dataset, tuple(run_data.codes), tuple(run_data.names)), test=test)
          + duplicates_section(args, run_data.manifest))
    for warning in class_warnings(run_data.manifest, run_data.codes):
        print(f"dermlow: warning: {warning}", file=sys.stderr)
    if run_data.skipped:
        print(f"\n{len(run_data.skipped)} unreadable images would be left out:")
        print("\n".join(f"  {line}" for line in run_data.skipped))
    if args.save_splits:
        save_splits(run_data.manifest, args.save_splits)
        print(f"splits written to {args.save_splits}")
    return 0


def _year_test(year: int) -> str:
    """data.test of the shipped config of an ISIC year (official for 2017, split for 2018)."""
    from dermlow import config

    return config.resolve(config.read_yaml(config.year_config(year))).data.test


def _data_fetch(args: argparse.Namespace) -> int:
    from dermlow.data.fetch import fetch

    path = fetch(args.year, args.out, max_unpack_ratio=args.max_unpack_ratio)
    print(f"ISIC {args.year} files are in {path}. Train with: dermlow train --year {args.year} --data-dir {path}")
    return 0


def _add_flag(sub) -> None:
    p = sub.add_parser("flag", help="export the cases most likely hard or mislabeled (flag scores), for relabeling",
                       description="Compute each training image's flag score from its weight history and from how "
                       "confidently the model contradicted the label (see docs/flagging.md), and write the "
                       "ranked cases as CSV with any review marks made in the app.")
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
    p.add_argument("--review-db", type=Path, help="one review database for all runs (default: each RUN/review.sqlite)")
    p.set_defaults(func=_app)


def _app(args: argparse.Namespace) -> int:
    from dermlow.cli.serve import serve

    return serve(args.path, host=args.host, port=args.port, review_db=args.review_db)


def _setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s" if verbose else "%(message)s"))
    root = logging.getLogger("dermlow")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


if __name__ == "__main__":
    sys.exit(main())
