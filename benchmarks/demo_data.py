"""Wall time of `dermlow data demo` (synthetic ISIC data), the first step of `make demo`.

Times `make_demo` for both challenge years into temporary folders and prints the median and range
of several repeats with the machine's load average (a wall-time assert in the test suite would be
flaky on a loaded machine, so the number lives here; see docs/benchmarks.md).

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/demo_data.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from dermlow.data.demo import make_demo


def time_demo(year: int, n_images: int, repeats: int) -> list[float]:
    """Seconds of each of `repeats` calls of make_demo(year, n_images, seed=0), each into a new folder."""
    seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            start = time.perf_counter()
            make_demo(Path(tmp) / f"r{i}", year=year, n_images=n_images, seed=0)
            seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 600], help="numbers of images")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print("| year | images | median s | min s | max s |")
    print("|---|---|---|---|---|")
    for year in (2017, 2018):
        for n in args.sizes:
            s = time_demo(year, n, args.repeats)
            print(f"| {year} | {n} | {statistics.median(s):.2f} | {min(s):.2f} | {max(s):.2f} |", flush=True)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
