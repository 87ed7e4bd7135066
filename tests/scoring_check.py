"""Score ISIC 2018 Task 3 CSV pairs with the official scorer; print the numbers as JSON.

Runs in the isolated scoring virtualenv (.venv-scoring, package `isic-challenge-scoring`), not in
dermlow's environment, and imports nothing from dermlow. tests/test_metrics.py calls it as

    <scoring python> tests/scoring_check.py TRUTH_1.csv PRED_1.csv [TRUTH_2.csv PRED_2.csv ...]

and reads one JSON list from stdout: per pair {"balanced_accuracy", "auc": {category: value},
"macro_auc", "version"}.
"""

import json
import sys
import warnings
from importlib.metadata import version
from pathlib import Path


def score_pair(truth: Path, pred: Path) -> dict:
    """The official scorer's balanced accuracy and per-category AUC for one CSV pair."""
    from isic_challenge_scoring.classification import ClassificationMetric, ClassificationScore

    score = ClassificationScore.from_file(truth, pred, ClassificationMetric.BALANCED_ACCURACY)
    return {
        "balanced_accuracy": float(score.aggregate.at["balanced_accuracy"]),
        "overall": float(score.overall),
        "auc": {str(k): float(v) for k, v in score.per_category["auc"].items()},
        "macro_auc": float(score.macro_average["auc"]),
        "version": version("isic-challenge-scoring"),
    }


def main(argv: list[str]) -> int:
    if not argv or len(argv) % 2:
        sys.stderr.write("usage: scoring_check.py TRUTH.csv PRED.csv [TRUTH.csv PRED.csv ...]\n")
        return 2
    warnings.simplefilter("ignore", FutureWarning)  # the scorer uses DataFrame.applymap
    paths = [Path(a) for a in argv]
    results = [score_pair(t, p) for t, p in zip(paths[::2], paths[1::2], strict=True)]
    sys.stdout.write(json.dumps(results) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
