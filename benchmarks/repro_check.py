"""Reproducibility check: rerun a small slice of the imbalanced-digits grid and compare its numbers
with the ones stored beside the docs (docs/repro/), which record the commit and torch version
that produced them.

    python benchmarks/repro_check.py            # rerun (about a minute on one core) and compare
    python benchmarks/repro_check.py --update   # store this checkout's numbers as the reference

Runs are deterministic on one machine and torch version (seeded data order, initialisation and
augmentation; one thread), so on the same torch build every number must match to 1e-9. A
different torch version or CPU may change float rounding; the script then reports the largest
difference and says so rather than failing silently. Exit code 0 = match, 1 = mismatch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
STORED = ROOT / "docs" / "repro" / "digits-imbalanced-slice.csv"
META = STORED.with_suffix(".json")
ARGS = ["bench", "--dataset", "digits-imbalanced", "--model", "lenet5",
        "--methods", "none,low,balanced_ce,spl,is,mwnet,mentornet", "--lams", "1", "--lrs", "0.03",
        "--seeds", "2", "--epochs", "6", "--threads", "1"]
COLUMNS = ["setup", "seed", "optimizer_steps", "final_val_berr", "final_test_err", "best_epoch", "best_test_err"]
TOLERANCE = 1e-9


def run_slice(out: Path) -> pd.DataFrame:
    """Train the slice into `out` with the importable dermlow (in this process); returns its results, sorted."""
    from dermlow.cli.main import main as dermlow_main

    code = dermlow_main([*ARGS, "--out", str(out), "--data-dir", str(out / "data")])
    if code:
        raise SystemExit(f"dermlow bench exited with {code}")
    results = pd.read_csv(next(out.glob("*/results.csv")))
    return results[[c for c in COLUMNS if c in results.columns]].sort_values(["setup", "seed"]).reset_index(drop=True)


def provenance() -> dict[str, str]:
    import torch

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                           cwd=ROOT).stdout.strip()
    return {"commit": commit + (" (with uncommitted changes)" if dirty else ""), "torch": torch.__version__,
            "command": "dermlow " + " ".join(ARGS)}


def compare(stored: pd.DataFrame, now: pd.DataFrame) -> list[str]:
    """Differences between the stored and the rerun numbers, as readable lines (empty = match)."""
    if list(stored["setup"] + stored["seed"].astype(str)) != list(now["setup"] + now["seed"].astype(str)):
        return [f"different runs: stored {sorted(set(stored['setup']))}, now {sorted(set(now['setup']))}"]
    lines = []
    for col in [c for c in COLUMNS[2:] if c in stored.columns and c in now.columns]:
        diff = (stored[col].astype(float) - now[col].astype(float)).abs()
        if (diff > TOLERANCE).any():
            worst = int(diff.idxmax())
            lines.append(f"{col}: {int((diff > TOLERANCE).sum())} runs differ, largest {diff.max():.6g} "
                         f"({now.loc[worst, 'setup']} seed {now.loc[worst, 'seed']}: stored "
                         f"{stored.loc[worst, col]}, now {now.loc[worst, col]})")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--update", action="store_true", help="store this checkout's numbers as the reference")
    parser.add_argument("--keep", type=Path, help="train into this folder (kept) instead of a temporary one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        now = run_slice(args.keep or Path(tmp))
    info = provenance()
    if args.update:
        STORED.parent.mkdir(parents=True, exist_ok=True)
        now.to_csv(STORED, index=False, float_format="%.10g")
        META.write_text(json.dumps(info, indent=2) + "\n")
        print(f"stored {len(now)} runs in {STORED} ({info['commit']}, torch {info['torch']})")
        return 0
    stored, meta = pd.read_csv(STORED), json.loads(META.read_text())
    problems = compare(stored, now)
    print(f"reference: {meta['commit']}, torch {meta['torch']}; this checkout: {info['commit']}, torch {info['torch']}")
    if not problems:
        print(f"all {len(now)} runs match the stored numbers (tolerance {TOLERANCE:g})")
        return 0
    print("MISMATCH:\n  " + "\n  ".join(problems))
    if meta["torch"] != info["torch"]:
        print("the torch versions differ, which can change float rounding and so these numbers")
    return 1


if __name__ == "__main__":
    sys.exit(main())
