"""The benchmark report: learning rate (and LOW's lambda) chosen on validation, test error only at
the chosen values, paired differences to plain CE per seed, and the paper's plots.

Selection (never on the test set): for each setup (a method, or LOW at one lambda) the learning
rate with the lowest mean over seeds of the validation balanced error (1 - balanced accuracy) is
chosen; ties go to the smaller learning rate. Two epoch rules (RULES):

* `final` (default): validation and test error at the last epoch, i.e. a fixed training budget as
  in the paper. A run that collapses late is judged by its collapsed state.
* `best`: validation error at the run's best validation epoch (the first epoch with the highest
  validation balanced accuracy, the epoch of its `best.pt`) and test error at that same epoch.

Balanced error is the criterion because the validation split is carved from the (possibly
imbalanced) training set while the benchmarks' test sets are balanced. LOW's lambda is then
chosen the same way among the LOW setups. Paired differences compare each seed with the
baseline's run of the same seed (same initial weights, same data, same sample order); a
difference smaller than half a point (|diff| < 0.005) counts as a tie.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from dermlow.bench.noise_report import flip_ap_markdown, flip_ap_table
from dermlow.rundir import files

log = logging.getLogger(__name__)

RULES = {"final": ("final_val_berr", "final_test_err"), "best": ("best_val_berr", "best_test_err")}
TIE = 0.005  # half a point of test error
BASELINE = "none"
SUMMARY, ERROR_PLOT, WEIGHT_PLOT = "summary.md", "test_error.png", "low_class_weights.png"


# ------------------------------------------------------------------------------------- selection
def select_lrs(results: pd.DataFrame, *, rule: str = "final") -> pd.DataFrame:
    """One row per setup: the lr with the lowest mean validation balanced error over seeds under the
    epoch `rule` (a key of RULES), and the test error (mean, std over seeds) and collapse count at
    that lr. Rows keep the order in which setups first appear; `test_err` holds the rule's test error."""
    criterion, test = RULES[rule]
    results = results.assign(test_err=results[test])
    rows = []
    for setup, group in results.groupby("setup", sort=False):
        by_lr = group.groupby("lr")[criterion].mean().sort_index()
        lr = float(by_lr.idxmin())  # idxmin returns the first (smallest) lr on ties
        chosen = group[group["lr"] == lr]
        rows.append({
            "setup": setup, "method": chosen["method"].iloc[0], "lam": chosen["lam"].iloc[0], "lr": lr,
            "val": by_lr[lr], "test_mean": chosen["test_err"].mean(), "test_std": chosen["test_err"].std(ddof=1),
            "seeds": len(chosen), "collapsed": int(chosen["collapsed"].sum()),
        })
    return pd.DataFrame(rows)


def best_lambda(selected: pd.DataFrame, method: str = "low") -> pd.Series | None:
    """The setup of LOW method `method` (`low`, `low_balanced_ce`, ...) with the lowest validation
    criterion at its selected lr (None without its runs)."""
    low = selected[selected["method"] == method]
    return None if low.empty else low.loc[low["val"].idxmin()]


def low_methods(selected: pd.DataFrame) -> list[str]:
    """The methods of the grid that have a lambda (LOW with each loss), in order of appearance."""
    return list(dict.fromkeys(selected.loc[selected["lam"].notna(), "method"]))


def chosen_runs(results: pd.DataFrame, selected: pd.DataFrame) -> pd.DataFrame:
    """The runs at each setup's selected learning rate."""
    keys = selected[["setup", "lr"]]
    return results.merge(keys, on=["setup", "lr"], how="inner")


def paired_differences(results: pd.DataFrame, selected: pd.DataFrame, *, rule: str = "final",
                       baseline: str = BASELINE, tie: float = TIE) -> pd.DataFrame:
    """Per setup: test error (of the epoch `rule`) minus the baseline's, seed by seed, each at its own
    selected lr. Columns: setup, lr, n (paired seeds), diff_mean, diff_std, wins (diff <= -tie),
    ties, losses (diff >= tie). Negative differences mean fewer errors than the baseline; the frame
    is empty without baseline runs.
    """
    runs = chosen_runs(results.assign(test_err=results[RULES[rule][1]]), selected)
    base = runs[runs["setup"] == baseline].set_index("seed")["test_err"]
    rows = []
    if base.empty:
        return pd.DataFrame(rows)
    for setup in selected["setup"]:
        group = runs[runs["setup"] == setup]
        if setup == baseline or group.empty:
            continue
        paired = group.set_index("seed")["test_err"].sub(base).dropna()
        rows.append({
            "setup": setup, "lr": group["lr"].iloc[0], "n": len(paired), "diff_mean": paired.mean(),
            "diff_std": paired.std(ddof=1), "wins": int((paired <= -tie).sum()),
            "ties": int((paired.abs() < tie).sum()), "losses": int((paired >= tie).sum()),
        })
    return pd.DataFrame(rows)


# -------------------------------------------------------------------------------------- markdown
def _pct(x: float) -> str:
    return "–" if pd.isna(x) else f"{100 * x:.2f}"


def _pm(mean: float, std: float) -> str:
    return f"{_pct(mean)} ± {_pct(std)}" if pd.notna(std) else _pct(mean)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def selected_table(selected: pd.DataFrame) -> str:
    rows = [[s.setup, f"{s.lr:g}", _pct(s.val), _pm(s.test_mean, s.test_std), f"{s.collapsed}/{s.seeds}"]
            for s in selected.itertuples()]
    return markdown_table(["setup", "lr (chosen on val)", "val balanced error %", "test error % (mean ± std)",
                           "collapsed"], rows)


def paired_table(paired: pd.DataFrame) -> str:
    rows = [[p.setup, f"{p.lr:g}", f"{100 * p.diff_mean:+.2f} ± {_pct(p.diff_std)}", f"{p.wins}/{p.ties}/{p.losses}"]
            for p in paired.itertuples()]
    return markdown_table(["setup", "lr", "test error − CE, points (mean ± std)", "wins/ties/losses"], rows)


def grid_table(results: pd.DataFrame, *, rule: str = "final") -> str:
    """Validation balanced error (mean over seeds) and collapses for every setup x lr (no test numbers)."""
    criterion = RULES[rule][0]
    lrs = sorted(results["lr"].unique())
    rows = []
    for setup, group in results.groupby("setup", sort=False):
        cells = []
        for lr in lrs:
            runs = group[group["lr"] == lr]
            cells.append("–" if runs.empty else f"{_pct(runs[criterion].mean())} ({int(runs['collapsed'].sum())})")
        rows.append([setup, *cells])
    return markdown_table(["setup", *[f"lr {lr:g}" for lr in lrs]], rows)


RULE_TEXT = {"final": "at the last epoch", "best": "at each run's best validation epoch (its best.pt)"}


def selection_section(results: pd.DataFrame, rule: str, level: str = "##") -> list[str]:
    """Markdown lines: selected setups, LOW's lambda and paired differences under one epoch rule."""
    selected = select_lrs(results, rule=rule)
    paired = paired_differences(results, selected, rule=rule)
    parts = [f"{level} Test error at the lr chosen on validation, errors {RULE_TEXT[rule]} (`--select {rule}`)", "",
             selected_table(selected), ""]
    for method in low_methods(selected):
        best = best_lambda(selected, method)
        who = "LOW's" if method == "low" else f"`{method}`'s"
        parts += [f"{who} lambda chosen on validation: **{best['lam']:g}** (lr {best['lr']:g}): test error "
                  f"{_pm(best['test_mean'], best['test_std'])} %.", ""]
    if not paired.empty:
        parts += [f"Paired differences to plain CE (`{BASELINE}`), per seed, each at its own chosen lr; negative = "
                  "fewer test errors than CE; tie = |diff| < 0.5 point:", "", paired_table(paired), ""]
    return parts


def summary_markdown(results: pd.DataFrame, grid: dict[str, Any]) -> str:
    """summary.md: the grid, the selection under the grid's epoch rule (then under the other rule),
    the validation error of every setup x lr, and the plots."""
    rule = grid.get("select", "final")
    other = "best" if rule == "final" else "final"
    n_coll, n_runs = int(results["collapsed"].sum()), len(results)
    own = "".join(f", {m}: {', '.join(f'{x:g}' for x in v)}" for m, v in (grid.get("method_lams") or {}).items())
    lams = (f"LOW lambdas {', '.join(f'{x:g}' for x in grid['lams'])}{own} (scale: weighting.grad_scale of the "
            "config, per_sample unless overridden); ") if results["lam"].notna().any() else ""
    parts = [
        f"# {grid['dataset']} / {grid['model']}: benchmark summary", "",
        f"Config `{grid['config']}`; methods {', '.join(grid['methods'])}; {lams}"
        f"learning rates {', '.join(f'{x:g}' for x in grid['lrs'])}; seeds {grid['seeds']}; "
        f"epochs {grid['epochs'] or 'from the config'}; overrides {grid['overrides'] or 'none'}.", "",
        f"{n_runs} runs ({int((~results['done'].astype(bool)).sum())} unfinished), {n_coll} collapsed "
        "(counted, not dropped). Per setup, the learning rate with the lowest validation balanced error "
        "(mean over seeds; ties to the smaller lr) is chosen; test error = 1 − accuracy. The test set "
        "is never used for a choice.", "",
        *selection_section(results, rule),
        f"### The same selection with errors {RULE_TEXT[other]} (`--select {other}`)", "",
        *selection_section(results, other, level="###")[2:],
        f"## Validation balanced error % for every lr, {RULE_TEXT[rule]} (mean over seeds; collapsed runs "
        "in brackets)", "", grid_table(results, rule=rule), "", f"![test error]({ERROR_PLOT})", "",
    ]
    if (results["method"] == "low").any():
        parts += [f"![LOW class weights]({WEIGHT_PLOT})", ""]
    parts += flip_ap_markdown(flip_ap_table(chosen_runs(results, select_lrs(results, rule=rule))))
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------- plots
def error_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """Test error per epoch, mean and std over the given runs' seeds, per setup (long frame)."""
    frames = []
    for setup, group in runs.groupby("setup", sort=False):
        for run_dir in group["run_dir"]:
            m = pd.read_csv(Path(run_dir) / files.METRICS, usecols=["epoch", "test_acc"])
            frames.append(pd.DataFrame({"setup": setup, "epoch": m["epoch"], "err": 1 - m["test_acc"]}))
    curves = pd.concat(frames).groupby(["setup", "epoch"], sort=False)["err"].agg(["mean", "std"])
    return curves.reset_index()


def class_weight_curves(run_dir: str | Path) -> pd.DataFrame:
    """Mean LOW weight per (epoch, label) of one run: index epoch, one column per label."""
    w = pd.read_parquet(Path(run_dir) / files.WEIGHTS, columns=["epoch", "label", "weight"])
    return w.groupby(["epoch", "label"])["weight"].mean().unstack("label")


def plot_test_error(results: pd.DataFrame, selected: pd.DataFrame, path: Path) -> Path:
    """Left: every method at its chosen lr (LOW at its chosen lambda); right: LOW at every lambda vs CE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = best_lambda(selected)
    curves = error_curves(chosen_runs(results, selected))
    bests = {best_lambda(selected, m)["setup"] for m in low_methods(selected)}
    left = [s for s, lam in zip(selected["setup"], selected["lam"], strict=True) if pd.isna(lam) or s in bests]
    right = [s for s, m in zip(selected["setup"], selected["method"], strict=True) if m == "low" or s == BASELINE]
    panels = [(left, "methods (LOW at its chosen lambda)")] + ([(right, "LOW by lambda")] if best is not None else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (setups, title) in zip(axes[0], panels, strict=True):
        for setup in setups:
            c = curves[curves["setup"] == setup]
            lr = float(selected.loc[selected["setup"] == setup, "lr"].iloc[0])
            ax.plot(c["epoch"], 100 * c["mean"], label=f"{setup} (lr {lr:g})")
            ax.fill_between(c["epoch"], 100 * (c["mean"] - c["std"].fillna(0)),
                            100 * (c["mean"] + c["std"].fillna(0)), alpha=0.15)
        ax.set(title=title, xlabel="epoch", ylabel="test error % (mean ± std over seeds)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_class_weights(results: pd.DataFrame, selected: pd.DataFrame, path: Path) -> Path | None:
    """Average LOW weight per class vs epoch [paper Fig. 6], one panel per lambda at its chosen lr,
    first seed (the imbalanced class sizes change with the seed, so seeds are not averaged)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    low = chosen_runs(results, selected[selected["method"] == "low"])
    if low.empty:
        return None
    low = low[low["seed"] == low["seed"].min()].sort_values("lam", ascending=False)
    ncols = min(3, len(low))
    nrows = -(-len(low) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.8 * ncols, 3.6 * nrows), squeeze=False, sharey=True)
    for ax in axes.flat[len(low):]:
        ax.set_visible(False)
    for ax, run in zip(axes.flat, low.itertuples(), strict=False):
        curves = class_weight_curves(run.run_dir)
        manifest = pd.read_csv(Path(run.run_dir) / files.MANIFEST, usecols=["label", "split"])
        counts = manifest.loc[manifest["split"] == "train", "label"].value_counts()
        for label in curves.columns:
            ax.plot(curves.index, curves[label], label=f"{label} (n={counts.get(label, 0)})")
        ax.set(title=f"lam {run.lam:g}, lr {run.lr:g}, seed {run.seed}", xlabel="epoch")
        ax.set_yscale("symlog", linthresh=0.1)  # a class can get weight 0 in an epoch
        ax.grid(alpha=0.3)
    for row in axes:
        row[0].set_ylabel("mean LOW weight per class")
    axes[0][-1].legend(fontsize=7, title="class (train n)", loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(group_dir: Path, results: pd.DataFrame, grid: dict[str, Any]) -> Path | None:
    """summary.md and the two plots in `group_dir`; returns the summary path (None without results)."""
    if results.empty:
        log.warning("no finished epochs in %s: nothing to summarise", group_dir)
        return None
    selected = select_lrs(results, rule=grid.get("select", "final"))
    plot_test_error(results, selected, group_dir / ERROR_PLOT)
    plot_class_weights(results, selected, group_dir / WEIGHT_PLOT)
    path = files.write_text(group_dir / SUMMARY, summary_markdown(results, grid))
    log.info("wrote %s", path)
    return path

