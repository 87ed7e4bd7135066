"""Grad-CAM time per image on CPU for a trained run (dermlow.training.explain.Explainer).

Loads the run's best.pt once, warms up on one image, then times `--images` images of the run without
the on-disk cache (image read + colour constancy + resize + crop + forward + backward + overlay),
then the same images again from the cache.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/saliency_timing.py runs/demo --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from dermlow.training.explain import Explainer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--target", choices=("predicted", "given"), default="predicted")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average at start: {os.getloadavg()[0]:.2f}; torch threads {torch.get_num_threads()}")
    t0 = time.perf_counter()
    ex = Explainer(args.run_dir, cache=False)
    print(f"checkpoint load + model build: {time.perf_counter() - t0:.2f} s ({ex.cfg.model.name}, layer {ex.layer}, "
          f"image_size {ex.cfg.data.image_size}, crop {ex.cfg.data.crop_size})")
    ids = ex.manifest["image_id"].tolist()[: args.images + 1]
    t0 = time.perf_counter()
    ex.explain(ids[0], args.target)
    print(f"first image (warm-up): {(time.perf_counter() - t0) * 1000:.0f} ms")
    times, cpu = [], []
    for image_id in ids[1:]:
        t0, c0 = time.perf_counter(), time.process_time()
        ex.explain(image_id, args.target)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    q = statistics.quantiles(times, n=10)
    print(f"{len(times)} images, no cache: median {statistics.median(times) * 1000:.0f} ms, p10 {q[0] * 1000:.0f} ms, "
          f"p90 {q[-1] * 1000:.0f} ms, max {max(times) * 1000:.0f} ms wall; median {statistics.median(cpu) * 1000:.0f} ms "
          "CPU time of this process")
    with tempfile.TemporaryDirectory() as tmp:
        ex.cache_dir = Path(tmp)
        for image_id in ids[1:]:
            ex.explain(image_id, args.target)
        cached = []
        for image_id in ids[1:]:
            t0 = time.perf_counter()
            assert ex.explain(image_id, args.target).cached
            cached.append(time.perf_counter() - t0)
    print(f"from the on-disk cache: median {statistics.median(cached) * 1000:.1f} ms")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
