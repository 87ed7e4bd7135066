"""Where a review stands for one run: decisions per class, agreement, unresolved cases.

Shared by `dermlow review status` and the app's Review view. Everything is derived from the
decision history of the run's data set (review_store) by the rules of review_rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dermlow.rundir import reader, review_rules, review_store


@dataclass
class ReviewStatus:
    history: pd.DataFrame  # every decision about the run's data set
    resolved: pd.DataFrame  # review_rules.resolve, with `given` (class code) added
    counts: pd.DataFrame  # given class x outcome (confirm, relabel, exclude, unresolved) counts
    agreement: pd.DataFrame  # review_rules.agreement per class and overall
    reviewers: list[str]


OUTCOMES = ["confirm", "relabel", "exclude", "unresolved"]


def given_labels(run: reader.Run) -> dict[str, str]:
    """image_id -> class code of the label the run trained on (after any deliberate flip, before review)."""
    label = run.manifest["label_before_review"] if "label_before_review" in run.manifest else run.manifest["label"]
    return dict(zip(run.manifest["image_id"].astype(str), [run.codes[int(v)] for v in label], strict=True))


def review_status(run: reader.Run, history: pd.DataFrame, *, rule: str = "majority") -> ReviewStatus:
    """The summary tables of a decision history, classes taken from the run."""
    given = given_labels(run)
    resolved = review_rules.resolve(history, rule=rule)
    resolved["given"] = [given.get(i, "?") for i in resolved["image_id"]]
    outcome = resolved["decision"].where(resolved["status"] == "resolved", "unresolved")
    counts = pd.crosstab(resolved["given"], outcome).reindex(columns=OUTCOMES, fill_value=0)
    counts = counts.reindex([c for c in [*run.codes, "?"] if c in counts.index])
    if len(counts):
        counts.loc["all"] = counts.sum()
    ordered = {i: given[i] for i in given if i in set(history["image_id"])}
    agree = review_rules.agreement(history, dict(sorted(ordered.items(), key=lambda kv: run.codes.index(kv[1]))))
    reviewers = sorted(set(history.loc[~history["adjudicator"], "reviewer"]))
    return ReviewStatus(history, resolved, counts, agree, reviewers)


def load_status(run_dir: str | Path, *, review_db: str | Path | None = None, rule: str = "majority") -> ReviewStatus:
    """`review_status` of the run's review database (read only)."""
    run = reader.load_run(run_dir)
    history = review_store.read_history(run.path, review_store.dataset_key(run.config), review_db)
    return review_status(run, history, rule=rule)


def status_text(run_dir: str | Path, *, review_db: str | Path | None = None, rule: str = "majority",
                show: int = 20) -> str:
    """The printed report of `dermlow review status`."""
    s = load_status(run_dir, review_db=review_db, rule=rule)
    db = review_store.db_path(run_dir, review_db)
    if s.history.empty:
        return f"no decisions yet in {db}"
    lines = [f"review database {db}: {len(s.history)} decisions on {len(s.resolved)} images by "
             f"{len(s.reviewers)} reviewer(s) ({', '.join(s.reviewers)}); rule: {rule}", "",
             "outcome per given class (resolved decision, or unresolved):", s.counts.to_string(), ""]
    agree = s.agreement.copy()
    if agree["images"].sum():
        agree["observed"] = agree["observed"].map(lambda v: f"{v:.0%}" if pd.notna(v) else "")
        agree["kappa"] = agree["kappa"].map(lambda v: f"{v:.2f}" if pd.notna(v) else "n/a")
        lines += ["agreement between reviewers (each one's latest decision):", agree.to_string(index=False), ""]
    else:
        lines += ["agreement: no image has been decided by two or more reviewers yet", ""]
    open_cases = s.resolved[s.resolved["status"] == "unresolved"]
    lines.append(f"unresolved: {len(open_cases)}")
    if len(open_cases):
        shown = open_cases.head(show)[["image_id", "given", "votes", "why"]]
        lines.append(shown.to_string(index=False))
        if len(open_cases) > show:
            lines.append(f"... and {len(open_cases) - show} more")
    return "\n".join(lines)
