"""The evidence a clinician can weigh, on the command line: `dermlow explain`, the calibration and
operating-point sections of `dermlow evaluate`, and the near-duplicate section of `dermlow data check`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

from dermlow.errors import UserError

DEFAULT_CACHE = ".cache/dermlow"  # the image cache's default folder (config data.cache_dir)


# ---------------------------------------------------------------- dermlow explain

def add_explain(sub) -> None:
    """Add `explain` to the `dermlow` subcommands."""
    p = sub.add_parser("explain", help="write a Grad-CAM saliency overlay of one image of a run",
                       description="Grad-CAM (grad-cam package) of the run's best checkpoint on one image, through "
                       "the run's evaluation pipeline: which regions raised the score of the predicted class (or "
                       "of the given label). Overlays are cached under RUN_DIR/.cache/saliency/.")
    p.add_argument("run_dir", type=Path)
    p.add_argument("image_id", help="an image id of the run's manifest")
    p.add_argument("--out", type=Path, help="PNG to write (default RUN_DIR/saliency-<IMAGE_ID>-<TARGET>.png)")
    p.add_argument("--target", choices=("predicted", "given"), default="predicted",
                   help="explain the predicted class (default) or the given label")
    p.add_argument("--layer", help="target module path, e.g. layer4 or features.norm5 (default: per architecture, "
                   "or the config's model.saliency_layer)")
    p.set_defaults(func=_explain)


def _explain(args: argparse.Namespace) -> int:
    from dermlow.rundir.reader import load_run
    from dermlow.training.explain import explain_image

    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", args.image_id)[:80]
    out = args.out or args.run_dir / f"saliency-{safe}-{args.target}.png"
    e = explain_image(args.run_dir, args.image_id, target=args.target, layer=args.layer, out=out)
    codes = load_run(args.run_dir).codes
    how = "from the cache" if e.cached else f"computed in {e.seconds * 1000:.0f} ms"
    print(f"{e.image_id}: given {codes[e.given]}, predicted {codes[e.predicted]} (p {e.probs[e.predicted]:.3f}); "
          f"Grad-CAM of {codes[e.target_class]} at layer {e.layer}, {how}")
    print(f"overlay written to {out}")
    return 0


# ---------------------------------------------------------------- dermlow evaluate

def add_evaluate_options(p: argparse.ArgumentParser) -> None:
    """Calibration and operating-point options of `dermlow evaluate`."""
    p.add_argument("--calibrate", action="store_true",
                   help="fit a temperature on the validation split (from this checkpoint) and write calibration.json "
                   "and the calibrated predictions")
    p.add_argument("--positive", metavar="CODE",
                   help="class for the operating points (sensitivity at fixed specificity, ...); default MEL when present")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="N", help="bootstrap resamples for the CIs (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--roc-table", type=Path, metavar="CSV",
                   help="write every class's ROC threshold table (threshold, tp, fp, tn, fn, sensitivity, "
                   "specificity) on --split to this CSV")
    p.set_defaults(func=evaluate_command)


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Text cells starting with = + - @ tab or CR get a leading ' (no formula runs in a spreadsheet)."""
    out = frame.copy()
    for col in out.select_dtypes(include=["object", "string"]).columns:
        out[col] = [f"'{v}" if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r") else v for v in out[col]]
    return out


def _frame(ev) -> pd.DataFrame:
    frame = pd.DataFrame(ev.probs, columns=ev.codes)
    frame.insert(0, "image_id", ev.image_ids)
    frame.insert(1, "label", ev.labels)
    return frame


def _change(record: dict, split: str) -> str:
    s = record["splits"][split]
    return f"{split} " + ", ".join(f"{k.upper() if k != 'brier' else 'Brier'} {s['before'][k]:.4f} -> {s['after'][k]:.4f}"
                                   for k in ("ece", "brier", "nll"))


def _calibration_lines(args: argparse.Namespace, main, val) -> list[str]:
    from dermlow.evidence.calibration import apply_temperature, calibration_metrics
    from dermlow.rundir.calibrated import calibrate_predictions, read_calibration

    if args.calibrate:
        if val is None:
            raise UserError(f"{args.run_dir}: no validation split to fit the temperature on.")
        source = f"dermlow evaluate --calibrate (checkpoint {args.checkpoint}, tta {str(args.tta).lower()})"
        splits = {"val": _frame(val)} | ({args.split: _frame(main)} if args.split != "val" else {})
        record = calibrate_predictions(args.run_dir, splits, codes=main.codes, source=source)
        lines = [f"temperature scaling: T = {record['temperature']:.4f}, fitted on {len(val.labels)} validation images "
                 f"(written to calibration.json and the *_calibrated.csv predictions)"]
        lines += [f"  {_change(record, s)}" for s in record["splits"]]
        lines += [f"  warning: {record['warning']}"] if record.get("warning") else []
        if args.split == "val":
            lines.append("  (the val numbers are in-sample: the temperature was fitted on them)")
        return lines
    record = read_calibration(args.run_dir)
    if record is None:
        return ["no calibration.json in the run: fit a temperature with --calibrate"]
    after = calibration_metrics(main.labels, apply_temperature(main.probs, record["temperature"]))
    return [f"with the run's temperature T = {record['temperature']:.4f} (calibration.json, from "
            f"{record.get('probabilities', '?')}): {args.split} ECE {main.metrics['ece']:.4f} -> {after['ece']:.4f}, "
            f"Brier {main.metrics['brier']:.4f} -> {after['brier']:.4f}, NLL {main.metrics['nll']:.4f} -> {after['nll']:.4f}"]


def evaluate_command(args: argparse.Namespace) -> int:
    """`dermlow evaluate`: metrics (with ECE, Brier, NLL), calibration, and operating points."""
    from dermlow.evidence.operating_points import format_operating_points, operating_points
    from dermlow.training.evaluate import evaluate_run

    kw = {"tta": args.tta, "checkpoint": args.checkpoint, "device": args.device}
    main = evaluate_run(args.run_dir, split=args.split, **kw)
    print(main.text())
    positive = args.positive or ("MEL" if "MEL" in main.codes else None)
    if positive is not None and positive not in main.codes:
        raise UserError(f"--positive {positive}: not a class of this run; choose one of {', '.join(main.codes)}.")
    others: dict[str, object] = {args.split: main}
    for split in (["val"] if args.calibrate or positive else []) + (["test"] if positive else []):
        if split not in others:
            try:
                others[split] = evaluate_run(args.run_dir, split=split, **kw)
            except UserError:  # the run has no such split
                others[split] = None
    print("\n".join(_calibration_lines(args, main, others.get("val"))))
    if args.roc_table:
        from dermlow.evidence.operating_points import roc_tables
        from dermlow.rundir.files import write_csv

        write_csv(args.roc_table, spreadsheet_safe(roc_tables(main.labels, main.probs, main.codes)))
        print(f"ROC threshold tables ({args.split}) written to {args.roc_table}")
    if positive is None:
        print("\noperating points: pass --positive CODE (this run has no MEL class)")
    elif others.get("val") is None or others.get("test") is None:
        print(f"\noperating points for {positive}: need both a val and a test split")
    else:
        c = main.codes.index(positive)
        val, test = others["val"], others["test"]
        table = operating_points(val.labels == c, val.probs[:, c], test.labels == c, test.probs[:, c],
                                 n_boot=args.bootstrap, seed=args.seed)
        print("\n" + format_operating_points(table, positive, n_boot=args.bootstrap))
    return 0


# ---------------------------------------------------------------- dermlow data check

def add_check_options(p: argparse.ArgumentParser) -> None:
    """Near-duplicate options of `dermlow data check`."""
    p.add_argument("--group-duplicates", action="store_true",
                   help="keep near-duplicate images in one split (joined with their lesions); for training: "
                   "--set data.group_duplicates=true")
    p.add_argument("--no-duplicates", action="store_true", help="skip the near-duplicate search")
    p.add_argument("--cache-dir", default=DEFAULT_CACHE, help=f"where image hashes are cached (default {DEFAULT_CACHE})")
    p.add_argument("--save-duplicates", type=Path, metavar="CSV", help="write every near-duplicate pair to this CSV")


def duplicates_section(args: argparse.Namespace, manifest: pd.DataFrame) -> str:
    """The data check's near-duplicate report (and --save-duplicates)."""
    from dermlow.data.duplicates import annotate_pairs, describe_duplicates, find_duplicates
    from dermlow.rundir.files import write_csv

    if args.no_duplicates:
        return ""
    pairs = annotate_pairs(find_duplicates(manifest, cache_dir=args.cache_dir), manifest)
    text = "\n" + describe_duplicates(pairs)
    if args.group_duplicates and args.splits_file:
        text += "\nnote: --group-duplicates does not change the splits read from --splits-file"
    if args.save_duplicates:
        write_csv(args.save_duplicates, pairs)
        text += f"\nnear-duplicate pairs written to {args.save_duplicates}"
    return text
