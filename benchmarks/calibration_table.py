"""Markdown table of the temperature scaling recorded in runs' calibration.json files.

    .venv/bin/python benchmarks/calibration_table.py runs/demo-seed0 runs/demo-seed1 ...
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dermlow.rundir.calibrated import read_calibration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    keys = [(s, m) for s in ("val", "test") for m in ("ece", "brier", "nll")]
    print("| run | T | " + " | ".join(f"{s} {m.upper() if m != 'brier' else 'Brier'} before → after" for s, m in keys)
          + " |")
    print("|---|---:|" + "---:|" * len(keys))
    deltas = {k: [] for k in keys}
    for run in args.runs:
        record = read_calibration(run)
        if record is None:
            raise SystemExit(f"{run}: no calibration.json")
        cells = []
        for s, m in keys:
            before, after = record["splits"][s]["before"][m], record["splits"][s]["after"][m]
            deltas[(s, m)].append(after - before)
            cells.append(f"{before:.4f} → {after:.4f}")
        print(f"| {run.name} | {record['temperature']:.3f} | " + " | ".join(cells) + " |")
    if len(args.runs) > 1:
        print("| mean change ± sd | | " + " | ".join(
            f"{np.mean(d):+.4f} ± {np.std(d, ddof=1):.4f}" for d in deltas.values()) + " |")


if __name__ == "__main__":
    main()
