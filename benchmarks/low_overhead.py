"""How much does LOW cost? Solver time vs general QP solvers, and training-step overhead on CPU.

Run:  .venv/bin/python benchmarks/low_overhead.py [--threads 1] [--steps 300]

Prints markdown tables (paste them into docs/benchmarks.md):
1. ``low_weights`` (exact sort + cumsum projection) vs cvxpy (problem compiled once with DPP
   parameters, then re-solved; compilation excluded, which favours cvxpy; building and solving a
   fresh problem per batch is shown too) and vs cvxopt's QP solver if importable, at
   M = 32, 256, 1024; medians of repeats.
2. Wall time per training step (forward, weighting, backward, SGD step) of LeNet-5 at batch 256 on
   MNIST-shaped random data, weighting ``low`` vs ``none``, same seed and data, the two runs
   interleaved step by step in alternating order so that machine drift hits both alike.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import numpy as np
import torch

from dermlow.method.low import low_weights
from dermlow.method.weightings import make_weighting
from dermlow.models.paper_nets import LeNet5


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cvxpy_solver(m: int):
    import cvxpy as cp

    w, g, lam = cp.Variable(m), cp.Parameter(m), cp.Parameter(nonneg=True)
    prob = cp.Problem(cp.Maximize(g @ w - lam * cp.sum_squares(w - 1)), [w >= 0, cp.sum(w) == m])

    def solve(g_value: np.ndarray, lam_value: float) -> np.ndarray:
        g.value, lam.value = g_value, lam_value
        prob.solve()
        return np.asarray(w.value)

    return solve, prob


def _cvxopt_solver(m: int):
    try:
        import cvxopt
        from cvxopt import solvers
    except ImportError:
        return None
    solvers.options["show_progress"] = False
    eye = cvxopt.spmatrix(1.0, range(m), range(m))
    a, b, h = cvxopt.matrix(1.0, (1, m)), cvxopt.matrix(float(m)), cvxopt.matrix(0.0, (m, 1))

    def solve(g_value: np.ndarray, lam_value: float) -> np.ndarray:
        # min (1/2) w' (2 lam I) w - (g + 2 lam)' w  s.t. -w <= 0, 1'w = M
        q = cvxopt.matrix(-(g_value + 2 * lam_value))
        return np.asarray(solvers.qp(2 * lam_value * eye, q, -eye, h, a, b)["x"]).ravel()

    return solve


def solver_table(sizes: tuple[int, ...], lam: float, repeats: int) -> str:
    rng = np.random.default_rng(0)
    rows = [
        "| M | `low_weights` (µs) | cvxpy re-solve (ms) | solver | speed-up vs cvxpy re-solve "
        "| cvxpy build + solve (ms) | cvxopt (ms) | speed-up vs cvxopt | max abs diff vs cvxpy (float64) |",
        "|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for m in sizes:
        g = rng.uniform(0, 2, m)
        g_t = torch.from_numpy(g).float()
        ours = _median_seconds(lambda g_t=g_t: low_weights(g_t, lam, validate=False), repeats * 20)
        solve, prob = _cvxpy_solver(m)
        ref = solve(g, lam)  # first call compiles; not timed
        cvx = _median_seconds(lambda solve=solve, g=g: solve(g, lam), repeats)
        build = _median_seconds(lambda m=m, g=g: _cvxpy_solver(m)[0](g, lam), max(3, repeats // 5))
        diff = float(np.abs(low_weights(torch.from_numpy(g), lam).numpy() - ref).max())
        cvxopt_solve = _cvxopt_solver(m)
        if cvxopt_solve is None:
            cvxopt_cell = "not installed | -"
        else:
            opt = _median_seconds(lambda s=cvxopt_solve, g=g: s(g, lam), repeats)
            cvxopt_cell = f"{1e3 * opt:.2f} | {opt / ours:.0f}x"
        rows.append(
            f"| {m} | {1e6 * ours:.1f} | {1e3 * cvx:.2f} | {prob.solver_stats.solver_name} "
            f"| {cvx / ours:.0f}x | {1e3 * build:.1f} | {cvxopt_cell} | {diff:.1e} |"
        )
    return "\n".join(rows)


def _train_step(model, optimizer, weighting, images, targets) -> None:
    out = weighting.training_step(model, optimizer, images, targets)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    optimizer.step()


def step_table(steps: int, warmup: int, batch: int, lam: float) -> str:
    gen = torch.Generator().manual_seed(0)
    pool = [
        (torch.randn(batch, 1, 28, 28, generator=gen), torch.randint(0, 10, (batch,), generator=gen))
        for _ in range(8)
    ]
    runs = {}
    for name in ("none", "low"):
        torch.manual_seed(0)
        model = LeNet5(num_classes=10, in_chans=1).train()
        opts = {"lam": lam} if name == "low" else {}
        runs[name] = (
            model,
            torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
            make_weighting(name, **opts),
        )
    times: dict[str, list[float]] = {"none": [], "low": []}
    for i in range(warmup + steps):
        images, targets = pool[i % len(pool)]
        for name in ("none", "low") if i % 2 == 0 else ("low", "none"):
            start = time.perf_counter()
            _train_step(*runs[name], images, targets)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    paired = statistics.median(a - b for a, b in zip(times["low"], times["none"], strict=True))
    g = torch.rand(batch)
    solve = _median_seconds(lambda: low_weights(g, lam, validate=False), 2000)
    rows = [
        "| weighting | median step (ms) | steps |",
        "|---|---:|---:|",
        f"| none | {1e3 * med['none']:.2f} | {steps} |",
        f"| low (lam={lam}) | {1e3 * med['low']:.2f} | {steps} |",
        "",
        f"- overhead, ratio of medians: {100 * (med['low'] / med['none'] - 1):+.2f} %",
        f"- overhead, median of paired differences: {100 * paired / med['none']:+.2f} % ({1e6 * paired:.0f} µs)",
        f"- `low_weights` alone at M={batch}: {1e6 * solve:.0f} µs = {100 * solve / med['none']:.2f} % of a step",
    ]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (pinned)")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per weighting")
    parser.add_argument("--repeats", type=int, default=30, help="cvxpy solves per size")
    parser.add_argument("--lam", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    print(f"date: {datetime.date.today()}  torch: {torch.__version__}  python: {platform.python_version()}")
    print(f"threads: {args.threads}  load average (1 min) at start: {load_before:.2f}\n")
    print("## solver time (lam = 0.1, g ~ U[0, 2], float32 on CPU)\n")
    print(solver_table((32, 256, 1024), lam=0.1, repeats=args.repeats))
    print("\n## LeNet-5 training step, batch 256, CPU\n")
    print(step_table(args.steps, warmup=20, batch=256, lam=args.lam))
    print(f"\nload average (1 min) at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
