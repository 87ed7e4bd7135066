"""The `dermlow bench` subcommand: parses the grid, calls dermlow.bench, prints where the report is."""

from __future__ import annotations

import argparse
from pathlib import Path

from dermlow.errors import UserError

BENCH_HELP = "run the paper's benchmark grid (MNIST, imbalanced MNIST, CIFAR, digits)"


def add_bench(subparsers) -> None:
    """Add `bench` to the `dermlow` subcommands (data sets and methods from the registries)."""
    from dermlow.bench.grid import datasets, methods

    p = subparsers.add_parser(
        "bench", help=BENCH_HELP,
        description="Train every (method, lambda, learning rate, seed) of a grid with the same training loop as "
        "`dermlow train` (one run folder each, under OUT/<dataset>-<model>/), select each method's learning rate "
        "(and LOW's lambda) on validation, and write results.csv, summary.md and plots. Rerunning the same "
        "command skips finished runs and resumes interrupted ones. The setup comes from "
        "configs/bench/<model>-<mnist|digits|cifar>.yaml unless --config is given.")
    p.add_argument("--dataset", required=True, help=" | ".join(datasets()))
    p.add_argument("--model", help="lenet5 | densenet_bc_100 | wrn_28_2 (default lenet5 for mnist/digits, "
                   "wrn_28_2 for cifar)")
    p.add_argument("--methods", default="none,low,focal,spl,is",
                   help=f"comma list of {', '.join(methods())}: a weighting with cross-entropy (none = plain CE; "
                   "low: one run per lambda) or a loss without weighting (default none,low,focal,spl,is)")
    p.add_argument("--lams", default="1,0.5,0.1,0.01", help="LOW's lambdas, per-sample scale (default 1,0.5,0.1,0.01)")
    p.add_argument("--lams-for", action="append", default=[], metavar="METHOD=L1,L2",
                   help="lambdas for one LOW method instead of --lams (repeatable), e.g. low_balanced_ce=100,10: "
                   "class-balanced CE's weights scale g by up to their square, so its lambda lives on another "
                   "scale (docs/results.md)")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds, 0..N-1 (default 5)")
    p.add_argument("--lrs", help="comma list of learning rates to select from on validation (default: the config's)")
    p.add_argument("--epochs", type=int, help="epochs per run (default: the config's)")
    p.add_argument("--select", choices=("final", "best"), default="final",
                   help="epoch whose validation error selects lr and lambda, and whose test error is reported: "
                   "final (last epoch, default) or best (best validation epoch, as best.pt)")
    p.add_argument("--max-per-class", type=int, metavar="N_C",
                   help="imbalanced sets: class c keeps min(n_c, round(N_C / 2^k_c)) training images (default 6000 "
                   "for mnist-imbalanced, the paper's N_C; each class's own count for digits/cifar; 0 = own count)")
    p.add_argument("--data-dir", default="data/bench", help="folder with the MNIST / CIFAR files (default data/bench)")
    p.add_argument("--out", default="runs/bench", help="folder for the grid's run folders (default runs/bench)")
    p.add_argument("--download", action="store_true", help="fetch MNIST / CIFAR from their official hosts if missing")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--workers", type=int, help="data loader processes")
    p.add_argument("--threads", type=int, help="CPU threads for torch (1 is fastest for LeNet on a busy CPU)")
    p.add_argument("--config", type=Path, help="a YAML setup instead of the shipped configs/bench one")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config value, e.g. --set data.val_fraction=0.2 (repeatable)")
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    from dermlow.bench import grid
    from dermlow.bench.report import SUMMARY
    from dermlow.config import parse_overrides

    if args.seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {args.seeds}.")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, got {args.threads}.")
        import torch

        torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.set)
    if args.max_per_class is not None:
        overrides.setdefault("data", {})["max_per_class"] = args.max_per_class
    spec = grid.BenchSpec(
        dataset=args.dataset, model=args.model, methods=grid.parse_methods(args.methods),
        lams=grid.parse_numbers(args.lams, "--lams"), seeds=list(range(args.seeds)),
        method_lams=grid.parse_method_lams(args.lams_for, grid.parse_methods(args.methods)),
        lrs=grid.parse_numbers(args.lrs, "--lrs") if args.lrs else None, epochs=args.epochs,
        data_dir=args.data_dir, out=args.out, download=args.download, device=args.device,
        num_workers=args.workers, config=str(args.config) if args.config else None,
        overrides=overrides, select=args.select,
    )
    results = grid.run_grid(spec)
    group = spec.group_dir
    print(f"{len(results)} runs in {group}\nresults: {group / grid.RESULTS}\nsummary: {group / SUMMARY}")
    if (group / SUMMARY).is_file():
        print("\n" + (group / SUMMARY).read_text().split("## Validation")[0].rstrip())
    return 0
