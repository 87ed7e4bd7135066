"""Ranking training images that deserve a second look (hard or possibly mislabeled) and exporting them.

The flag score of an image is the mean of the percentile ranks (0..1 over the run, ties
averaged; higher = more suspicious) of two components of its training history:

- weight_excess: its LOW weight averaged over *all* logged epochs, minus a class reference.
  In a run trained without LOW (weighting `none`, whose weights are all 1, or `spl` / `is`,
  whose weights mean something else) the mean squared logit-gradient norm g, which LOW would
  have turned into the weight (monotonically, within a batch), stands in.
- loss_excess: its loss averaged over all epochs (the mean of -log p(given label) for CE: how
  confidently the model contradicted the label), minus a class reference the same way.

The class reference is built from the images the model mostly agreed with (misclassified
<= 0.5), which stay clean even when many of a class's labels are wrong: it is the median over
the class's n agreed images, shrunk towards the median over all agreed images of the run,
(n * class median + m * run median) / (n + m) with m = `min_reference` (5). It removes what is
normal for a class, so a rare class whose images all get large weights and losses is not
flagged for being rare; a class with few agreed images cannot say what is normal for it (with
uniform flips a rare class can be mostly flips) and leans on the run's reference instead.

Why these two (docs/flagging.md): on real runs with 10% flipped labels, 1 - mean p(label) and
the share of epochs misclassified were consistently weaker than mean loss, and adding them
to the rank mean lowered its average precision; the share of epochs with weight > 1 was the
weakest signal of all. They are still computed and exported (above1_excess, contradiction,
misclassified, each with a `_pct` rank) and can be given a share with `flag_scores(shares=...)`.
The average over all epochs matters: a late-epoch average misses labels the network has
memorised by then. Rank 1 is the most suspicious image.

The most likely other label is the most frequent runner-up class (`other` in the weight log,
when training logged it; else the most frequent wrong prediction) with its mean probability
(`p_other`, when logged) and the share of epochs it was predicted (other_votes).

Vocabulary: a *flag score* is computed here from the weight history (`dermlow flag`, flagged.csv);
a *review mark* is a person's decision in the app (`dermlow.rundir.review_marks`, review.csv).
The research-only evaluation of flag scores against deliberately flipped labels is
`dermlow.bench.flag_eval`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from dermlow.errors import UserError
from dermlow.method.weightings import WEIGHTINGS
from dermlow.rundir import files, reader, review_rules, review_store
from dermlow.rundir.image_copy import copy_flagged_images

log = logging.getLogger(__name__)

SHARES = {"weight_excess": 0.5, "loss_excess": 0.5, "above1_excess": 0.0, "contradiction": 0.0,
          "misclassified": 0.0}
"""Default share of each component's percentile rank in the score (see the module docstring)."""
COMPONENTS = tuple(SHARES)
NEEDED = ("label", "weight_mean", "weight_above1", "p_true_mean", "misclassified", "loss_mean")


def class_excess(values: pd.Series, label: pd.Series, agreed: pd.Series, prior: float = 5.0) -> pd.Series:
    """`values` minus its class reference: (n * class median + prior * run median) / (n + prior),
    medians over the `agreed` images, n = the class's agreed images (all images when none agreed)."""
    if not agreed.any():
        agreed = pd.Series(True, index=values.index)
    n = agreed.groupby(label).transform("sum").astype(float)
    own = values.where(agreed).groupby(label).transform("median").fillna(0.0)
    run = float(values[agreed].median())
    return values - (n * own + prior * run) / (n + prior)


def weight_history(summary: pd.DataFrame, source: str | None = None) -> tuple[pd.Series, str]:
    """The per-image weight history the score uses and its column: `source` ("weight_mean" or
    "g_mean") when given, else the mean weight, or the mean g where all weights are equal."""
    if source is None:
        w = summary["weight_mean"]
        flat = np.nanstd(w.to_numpy(dtype=float)) < 1e-9
        source = "g_mean" if flat and "g_mean" in summary.columns else "weight_mean"
    if source not in ("weight_mean", "g_mean"):
        raise ValueError(f"weight source must be weight_mean or g_mean, got {source!r}")
    return summary[source], source


def weight_source(config: dict) -> str | None:
    """The weight history to score a run by, from its config: what its weighting declares
    (`Weighting.flag_source`: LOW's own weights for `low`; the gradient norm g for the others,
    whose weights are not LOW's: a self-paced weight of 0 marks a *high* loss), g for a weighting
    this dermlow does not know, automatic when the config says nothing."""
    name = ((config or {}).get("weighting") or {}).get("name")
    if name is None:
        return None
    return WEIGHTINGS.get(name).flag_source if name in WEIGHTINGS else "g_mean"


def flag_scores(summary: pd.DataFrame, *, shares: dict[str, float] | None = None,
                min_reference: float = 5.0, weight_from: str | None = None) -> pd.DataFrame:
    """Add the components, their percentile ranks (`<component>_pct`), `score` and `rank` (1 = most
    suspicious) to a `reader.weight_summary` frame; sorted by rank. `min_reference`: how many agreed
    images a class needs before its own median counts as much as the run's (the prior weight of
    the run median in `class_excess`); `weight_from`: see `weight_history` (pass
    `weight_source(run.config)`). See the module docstring."""
    shares = dict(SHARES if shares is None else shares)
    unknown = sorted(set(shares) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown score components {unknown}; valid: {', '.join(COMPONENTS)}")
    if sum(shares.values()) <= 0 or min(shares.values()) < 0:
        raise ValueError(f"shares must be >= 0 with a positive sum, got {shares}")
    if not min_reference > 0:
        raise ValueError(f"min_reference must be positive, got {min_reference}")
    missing = [c for c in NEEDED if c not in summary.columns]
    if missing:
        raise ValueError(f"summary lacks column(s) {missing}: pass reader.weight_summary(run_dir)")
    out = summary.copy()
    label, agreed = out["label"], out["misclassified"] <= 0.5
    weight, _ = weight_history(out, weight_from)
    out["weight_excess"] = class_excess(weight, label, agreed, min_reference)
    out["loss_excess"] = class_excess(out["loss_mean"], label, agreed, min_reference)
    out["above1_excess"] = class_excess(out["weight_above1"], label, agreed, min_reference)
    out["contradiction"] = 1.0 - out["p_true_mean"]
    total = sum(shares.values())
    out["score"] = 0.0
    for name in COMPONENTS:
        out[f"{name}_pct"] = out[name].rank(pct=True, method="average")
        out["score"] += shares.get(name, 0.0) / total * out[f"{name}_pct"]
    out["rank"] = out["score"].rank(ascending=False, method="first").astype(np.int64)
    return out.sort_values("rank").reset_index(drop=True)


def _code(codes: list[str], label: pd.Series) -> pd.Series:
    """Class codes for label numbers; '' for -1 (no other label seen)."""
    table = np.array([*codes, ""], dtype=object)
    return pd.Series(table[label.to_numpy(dtype=np.int64)], index=label.index)


def _named(run: reader.Run, label: pd.Series) -> pd.Series:
    return label.map(lambda v: run.class_label(v) if v >= 0 else "")


def _with_review(scored: pd.DataFrame, run: reader.Run, review_db: str | Path | None = None) -> pd.DataFrame:
    """Join the current review state (docs/review.md): review_status (resolved | unresolved | '' when
    nobody decided), review_decision, review_label (of a relabel), review_votes, review_note (the
    reviewers' latest notes). Reads the review database, or the run's old review.csv, writing nothing."""
    history = review_store.read_history(run.path, review_store.dataset_key(run.config), review_db)
    state = review_rules.resolve(history)[["image_id", "status", "decision", "label", "votes"]]
    votes = review_rules.latest_votes(history)
    named = votes.assign(text=[f"{r}: {n}" if votes["reviewer"].nunique() > 1 else n
                               for r, n in zip(votes["reviewer"], votes["note"], strict=True)])
    notes = named[named["note"] != ""].groupby("image_id")["text"].agg(" | ".join).rename("note")
    state = state.merge(notes, on="image_id", how="left")
    state = state.rename(columns={c: f"review_{c}" for c in ["status", "decision", "label", "votes", "note"]})
    out = scored.merge(state, on="image_id", how="left")
    for c in REVIEW_COLUMNS:
        out[c] = out[c].astype(object).where(out[c].notna(), "").astype(str)
    return out


REVIEW_COLUMNS = ["review_status", "review_decision", "review_label", "review_votes", "review_note"]
EXPORT_COLUMNS = list(dict.fromkeys([
    "rank", "image_id", "index", "path", "label", "label_name", "predicted", "predicted_prob",
    "other_label", "other_label_name", "other_prob",
    "other_votes", "weight_mean", "weight_above1", "p_true_mean", "loss_mean", "g_mean",
    *COMPONENTS, *(f"{c}_pct" for c in COMPONENTS), "score",
    *REVIEW_COLUMNS,
]))


def flag_table(run_dir: str | Path, *, review_db: str | Path | None = None) -> pd.DataFrame:
    """Every training image of the run, scored and ranked, with readable labels, the last epoch's
    prediction (predicted, predicted_prob) and the review state (`review_db`: see review_store.db_path)."""
    run_dir = Path(run_dir)
    run = reader.load_run(run_dir)
    summary = reader.weight_summary(run_dir)
    if summary.empty:
        raise UserError(f"{run_dir} has no logged epoch yet ({files.WEIGHTS} is empty): flags need at "
                        "least one completed epoch.")
    scored = _with_review(flag_scores(summary, weight_from=weight_source(run.config)), run, review_db)
    scored["predicted"] = _code(run.codes, scored["predicted_last"])
    scored["predicted_prob"] = scored["pred_prob_last"]
    given = scored["label"]
    scored["label_name"] = _named(run, given)
    scored["label"] = _code(run.codes, given)
    other = scored["other_label"]
    scored["other_label_name"] = _named(run, other)
    scored["other_label"] = _code(run.codes, other)
    columns = list(EXPORT_COLUMNS)
    if "flipped" in scored.columns:
        scored["original_label"] = _code(run.codes, scored["original_label"].astype(np.int64))
        columns[columns.index("score") + 1 : columns.index("score") + 1] = ["flipped", "original_label"]
    return scored[columns]


def export_flags(run_dir: str | Path, *, top: int | None = None, per_class: bool = False,
                 out: str | Path | None = None, copy_images: str | Path | None = None,
                 reviewed_only: bool = False, review_db: str | Path | None = None) -> pd.DataFrame:
    """The flagged-cases table (see EXPORT_COLUMNS), most suspicious first.

    top: keep the first N (per given label with per_class); reviewed_only: keep only the cases
    someone decided about (before `top`); out: also write it as CSV (atomically);
    copy_images: copy the images into DIR/<given label code>/ for a relabelling tool (confined:
    see rundir.image_copy).
    """
    if top is not None and top < 1:
        raise UserError(f"--top must be a positive number of cases, got {top}.")
    table = flag_table(run_dir, review_db=review_db)
    if reviewed_only:
        table = table[table["review_status"] != ""]
    if top is not None:
        table = table.groupby("label", sort=False).head(top) if per_class else table.head(top)
    if per_class:
        order = {code: i for i, code in enumerate(reader.load_run(run_dir).codes)}
        table = table.sort_values(["label", "rank"], key=lambda s: s.map(order) if s.name == "label" else s)
    table = table.reset_index(drop=True)
    if out is not None:
        files.write_csv(out, table)
        log.debug("wrote %d flagged cases to %s", len(table), out)
    if copy_images is not None:
        copy_flagged_images(run_dir, table, copy_images)
    return table


