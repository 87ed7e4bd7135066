"""Seconds per LeNet-5 epoch on scikit-learn's digits, through the session and loop `dermlow train` uses.

Per epoch: the loading pass alone (iterating the training loader, no model), the training pass
(`train_one_epoch`: loader + forward/LOW/backward/step + per-sample records) and the evaluation of
the validation and test splits. Medians over the epochs after the first; one torch thread, as
`dermlow bench --threads 1`. It only uses `Session.train_loader/eval_loader` and `train_one_epoch`,
so the same file times an older checkout too:

    PYTHONPATH=. NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/array_epoch.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

import dermlow  # noqa: E402
from dermlow import config  # noqa: E402
from dermlow.training.loop import evaluate, train_one_epoch  # noqa: E402
from dermlow.training.session import start_session  # noqa: E402

SETUP = Path(__file__).resolve().parents[1] / "configs" / "bench" / "lenet5-digits.yaml"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=21, help="timed epochs (the first is left out of the medians)")
    ap.add_argument("--dataset", default="digits", help="digits (balanced: the sanity check) or digits-imbalanced")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    source = Path(dermlow.__file__).resolve().parents[1]
    commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "?"
    print(f"dermlow from {source} ({commit}); load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        flags = [f"data.dataset={args.dataset}", f"data.data_dir={tmp}/bench", f"run.out={tmp}/runs", "run.name=t",
                 "run.device=cpu", f"optim.epochs={args.epochs}", "weighting.name=low"]
        cfg = config.resolve(config.read_yaml(SETUP), config.parse_overrides(flags))
        s = start_session(cfg)
        load, train, evals = [], [], []
        for epoch in range(1, args.epochs + 1):
            t0 = time.perf_counter()
            for _batch in s.train_loader(epoch):
                pass
            t1 = time.perf_counter()
            train_one_epoch(s, s.train_loader(epoch))
            t2 = time.perf_counter()
            for split in s.eval_splits:
                evaluate(s.model, s.eval_loader(split), s.device, normalisation=s.normalisation)
            t3 = time.perf_counter()
            load.append(t1 - t0)
            train.append(t2 - t1)
            evals.append(t3 - t2)
        n = len(s.datasets["train"])
    ms = {name: 1e3 * statistics.median(v[1:]) for name, v in (("load", load), ("train", train), ("eval", evals))}
    print(f"{args.dataset}: {n} training images, batch {cfg.optim.batch_size}, {args.threads} thread(s), "
          f"medians of epochs 2-{args.epochs}")
    print(f"loading pass {ms['load']:.1f} ms | training epoch {ms['train']:.1f} ms | "
          f"val+test evaluation {ms['eval']:.1f} ms | first training epoch {1e3 * train[0]:.1f} ms")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
