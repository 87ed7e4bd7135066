"""What does Meta-Weight-Net cost per training step, relative to plain cross-entropy?

Run:  PYTHONPATH=. python benchmarks/mwnet_step_time.py [--threads 1] [--steps 50]

One full training step (the weighting's `training_step`, backward, SGD step) of each weighting on
the same network, data and seed, the weightings interleaved step by step in alternating order so
that drift of a shared machine hits them alike. Prints a markdown table of median step times and
their ratio to `none` (CE), with the load average before and after (paste it into
docs/benchmarks.md). Networks: LeNet-5 on MNIST-shaped 1x28x28 batches of 256 (the paper's
benchmark) and timm's resnet10t on 3x64x64 batches of 32 (a conv net with BatchNorm; any timm model
takes the look-ahead through torch.func.functional_call).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import platform
import statistics
import time

import torch

from dermlow.method.losses import make_loss
from dermlow.method.weightings import make_weighting
from dermlow.models.paper_nets import LeNet5

WEIGHTINGS = ("none", "low", "mentornet", "mwnet")


def _setup(name: str, make_net, shape: tuple[int, ...], batch: int, classes: int, seed: int = 0):
    torch.manual_seed(seed)
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    weighting = make_weighting(name, loss=make_loss("ce"), seed=seed)
    weighting.start_epoch(50, 100)  # mentornet past its burn-in
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(batch, *shape, generator=gen), torch.randint(0, classes, (batch,), generator=gen)
    meta = itertools.repeat((torch.randn(batch, *shape, generator=gen), torch.randint(0, classes, (batch,), generator=gen)))
    return net, opt, weighting, x, y, meta


def _step(net, opt, weighting, x, y, meta) -> float:
    start = time.perf_counter()
    out = weighting.training_step(net, opt, x, y, meta_batches=meta)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    opt.step()
    return time.perf_counter() - start


def measure(make_net, shape, batch, classes, steps: int) -> dict[str, float]:
    """Median seconds per step of each weighting, interleaved (order alternates every step)."""
    runs = {name: _setup(name, make_net, shape, batch, classes) for name in WEIGHTINGS}
    times: dict[str, list[float]] = {name: [] for name in WEIGHTINGS}
    for i in range(steps + 10):
        order = WEIGHTINGS if i % 2 == 0 else WEIGHTINGS[::-1]
        for name in order:
            t = _step(*runs[name])
            if i >= 10:  # warm-up steps are not counted
                times[name].append(t)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import timm

    load_before = os.getloadavg()
    cases = [("LeNet-5, 1x28x28, batch 256", lambda: LeNet5(10, 1), (1, 28, 28), 256, 10),
             ("timm resnet10t, 3x64x64, batch 32", lambda: timm.create_model("resnet10t", pretrained=False,
                                                                             num_classes=7), (3, 64, 64), 32, 7)]
    rows = [(title, measure(make, shape, batch, classes, args.steps)) for title, make, shape, batch, classes in cases]
    load_after = os.getloadavg()
    print(f"{datetime.date.today()}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{args.threads} thread(s), {args.steps} interleaved steps per weighting (after 10 warm-up steps); "
          f"load average (1/5/15 min) {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f} before, "
          f"{load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f} after\n")
    print("| network | " + " | ".join(f"{w} ms (x CE)" for w in WEIGHTINGS) + " |")
    print("|---|" + "---|" * len(WEIGHTINGS))
    for title, med in rows:
        cells = [f"{1000 * med[w]:.1f} ({med[w] / med['none']:.2f}x)" for w in WEIGHTINGS]
        print(f"| {title} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
