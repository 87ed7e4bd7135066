"""The current state of a review, derived from its decision history, and how far reviewers agree.

Resolution (docs/review.md), per image:

1. An adjudicator's decision settles the image: the latest decision marked `adjudicator`
   wins, whatever the others said (an adjudicator's `unsure` leaves it unresolved).
2. Otherwise each reviewer's latest (non-adjudicator) decision is one vote; a relabel votes
   for its target class, so "relabel to MEL" and "relabel to BCC" are different votes.
   - one reviewer: their latest decision stands;
   - several, by `rule`:
     `majority` (default): the vote with the most reviewers wins, a tie for first is unresolved;
     `absolute`: the winning vote needs more than half of the reviewers;
     `unanimous`: every reviewer must cast the same vote.
3. A winning `unsure` is not a decision: the image stays unresolved.

Agreement is measured on each reviewer's latest decision (adjudications left out, they are
not independent) with the votes above as categories: Cohen's kappa (scikit-learn) when two
reviewers rated the images, Fleiss' kappa (statsmodels) for more, per given class and overall.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping

import numpy as np
import pandas as pd

RULES = ("majority", "absolute", "unanimous")
RESOLVED_COLUMNS = ["dataset", "image_id", "status", "decision", "label", "reviewers", "votes", "adjudicated",
                    "why", "updated_at"]


def vote(decision: str, label: str = "") -> str:
    """The category a decision votes for: the decision, or `relabel:<class>`."""
    return f"relabel:{label}" if decision == "relabel" else decision


def _split_vote(key: str) -> tuple[str, str]:
    decision, _, label = key.partition(":")
    return decision, label


def latest_votes(history: pd.DataFrame) -> pd.DataFrame:
    """Each reviewer's latest non-adjudicator decision per image (dataset, image_id, reviewer, vote,
    decision, label, note, created_at), in recording order."""
    rows = history[~history["adjudicator"]].sort_values("id")
    last = rows.drop_duplicates(["dataset", "image_id", "reviewer"], keep="last").copy()
    last["vote"] = [vote(d, lab) for d, lab in zip(last["decision"], last["label"], strict=True)]
    return last[["dataset", "image_id", "reviewer", "vote", "decision", "label", "note", "created_at", "id"]]


def _winner(votes: list[str], rule: str) -> tuple[str | None, str]:
    """(winning vote or None, why it is unresolved)."""
    counts = Counter(votes).most_common()
    top, n = counts[0]
    if rule == "unanimous" and len(counts) > 1:
        return None, "reviewers disagree"
    if rule == "absolute" and n * 2 <= len(votes):
        return None, "no vote has more than half of the reviewers"
    if len(counts) > 1 and counts[1][1] == n:
        return None, "tie"
    return top, ""


def _describe(votes: list[str]) -> str:
    parts = []
    for key, n in Counter(votes).most_common():
        decision, label = _split_vote(key)
        parts.append(f"{decision}{' to ' + label if label else ''} x{n}")
    return ", ".join(parts)


def resolve(history: pd.DataFrame, *, rule: str = "majority") -> pd.DataFrame:
    """One row per image with any decision (see the module docstring); columns RESOLVED_COLUMNS.

    status: `resolved` (decision and, for a relabel, label hold the outcome) or `unresolved`
    (why says: tie, unsure, ...); reviewers: how many reviewers voted; votes: e.g.
    "confirm x2, relabel to MEL x1"; adjudicated: an adjudicator settled it.
    """
    if rule not in RULES:
        raise ValueError(f"unknown resolution rule {rule!r}; valid rules: {', '.join(RULES)}")
    if history.empty:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in RESOLVED_COLUMNS})
    votes = latest_votes(history)
    adjudications = history[history["adjudicator"]].sort_values("id").drop_duplicates(["dataset", "image_id"],
                                                                                       keep="last")
    adjudicated = {(r.dataset, r.image_id): vote(r.decision, r.label) for r in adjudications.itertuples()}
    updated = history.groupby(["dataset", "image_id"])["created_at"].max()
    grouped = {key: list(g["vote"]) for key, g in votes.groupby(["dataset", "image_id"], sort=False)}
    rows = []
    for key in updated.index:
        cast = grouped.get(key, [])
        if key in adjudicated:
            winner, why = adjudicated[key], ""
        else:
            winner, why = _winner(cast, rule)
        if winner == "unsure":
            winner, why = None, "unsure"
        decision, label = _split_vote(winner) if winner else ("", "")
        rows.append({"dataset": key[0], "image_id": key[1], "status": "resolved" if winner else "unresolved",
                     "decision": decision, "label": label, "reviewers": len(cast), "votes": _describe(cast),
                     "adjudicated": key in adjudicated, "why": why, "updated_at": updated[key]})
    return pd.DataFrame(rows, columns=RESOLVED_COLUMNS)


def _ratings(votes: pd.DataFrame) -> pd.DataFrame:
    """Images x reviewers table of votes (NaN where a reviewer did not rate an image)."""
    return votes.pivot(index="image_id", columns="reviewer", values="vote")


def _kappa(table: pd.DataFrame) -> tuple[float, str, int, float]:
    """(kappa, method, images used, observed agreement) for an images x reviewers vote table."""
    rated = table.notna().sum(axis=1)
    table = table[rated >= 2]
    if table.empty:
        return float("nan"), "", 0, float("nan")
    if table.shape[1] == 2:
        from sklearn.metrics import cohen_kappa_score

        a, b = table.iloc[:, 0].astype(str), table.iloc[:, 1].astype(str)
        with warnings.catch_warnings():  # all ratings in one category: kappa is 0/0 (NaN)
            warnings.simplefilter("ignore")
            kappa = float(cohen_kappa_score(a, b))
        return kappa, "Cohen", len(table), float((a == b).mean())
    from statsmodels.stats.inter_rater import fleiss_kappa

    n = int(rated[rated >= 2].mode().iloc[0])  # Fleiss needs the same number of ratings per image
    rows = [r.dropna().iloc[:n].tolist() for _, r in table.iterrows() if r.notna().sum() >= n]
    categories = sorted({v for r in rows for v in r})
    counts = np.array([[r.count(c) for c in categories] for r in rows])
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        kappa = float(fleiss_kappa(counts, method="fleiss"))
    observed = float(np.mean([(c * (c - 1)).sum() / (n * (n - 1)) for c in counts]))
    return kappa, f"Fleiss ({n} ratings per image)", len(rows), observed


def agreement(history: pd.DataFrame, classes: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Agreement between reviewers, per given class (`classes`: image_id -> class code) and
    overall (class "all"): columns class, images (rated by 2+ reviewers and used), reviewers,
    observed (share of agreeing rating pairs), kappa (NaN when undefined, e.g. one category
    only), method. Images of several data sets are kept apart by prefixing the data set."""
    votes = latest_votes(history)
    if votes.empty:
        return pd.DataFrame(columns=["class", "images", "reviewers", "observed", "kappa", "method"])
    votes = votes.assign(image_id=votes["dataset"] + "\x1f" + votes["image_id"])
    table = _ratings(votes)
    groups: list[tuple[str, pd.DataFrame]] = [("all", table)]
    if classes:
        ids = table.index.str.split("\x1f", n=1).str[1]
        given = pd.Series([classes.get(i, "") for i in ids], index=table.index)
        for code in dict.fromkeys(classes.values()):
            part = table[given == code]
            if len(part):
                groups.append((code, part))
    rows = []
    for name, part in groups:
        part = part.dropna(axis=1, how="all")
        kappa, method, used, observed = _kappa(part)
        rows.append({"class": name, "images": used, "reviewers": int(part.shape[1]), "observed": observed,
                     "kappa": kappa, "method": method})
    return pd.DataFrame(rows)
