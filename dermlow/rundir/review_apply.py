"""Training on reviewed labels: the resolved decisions applied to a new run's manifest.

Called once by training (`apply_review`), after the split and any deliberate label flips, so
the split never changes and lesion groups stay together. A resolved

- `relabel` sets `label` / `label_name` to the corrected class,
- `exclude` moves the image to split `excluded`, which no data loader reads,
- `confirm` keeps the label (and is recorded),
- unresolved images (ties, `unsure`) are left as they are.

Only training images are changed unless `splits="all"`: corrected validation or test labels
would make test metrics incomparable with runs trained before the review. The manifest keeps
the labels before the review in `label_before_review`, the split in `split_before_review`, and
the decision applied in `review_decision` (empty where none was). The sha256 `digest` of the
applied decisions (image id, decision, label) goes into config.yaml with the database path.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dermlow.errors import UserError
from dermlow.rundir import files, review_rules, review_store

log = logging.getLogger(__name__)

SPLIT_CHOICES = ("train", "all")
EXCLUDED = "excluded"


@dataclass
class Applied:
    """What `apply_decisions` did."""

    relabelled: int = 0
    excluded: int = 0
    confirmed: int = 0
    not_applied: dict[str, int] = field(default_factory=dict)  # resolved decisions left alone, by split
    unresolved: int = 0
    unknown: int = 0  # decisions about images this run does not have
    digest: str = ""

    def text(self, splits: str) -> str:
        where = "training images" if splits == "train" else "images of every split"
        lines = [f"review applied to {where}: {self.relabelled} relabelled, {self.excluded} excluded, "
                 f"{self.confirmed} confirmed; {self.unresolved} unresolved image(s) left as they are"]
        if sum(self.not_applied.values()):
            order = sorted(self.not_applied, key=lambda s: (s != "val", s != "test", s))
            parts = ", ".join(f"{self.not_applied[s]} {s}" for s in order)
            lines.append(f"resolved decisions on validation/test images NOT applied ({parts}) so that test metrics "
                         "stay comparable; --review-splits all applies them")
        if self.unknown:
            lines.append(f"{self.unknown} decided image(s) are not in this run's data and were ignored")
        return "\n".join(lines)


def apply_decisions(manifest: pd.DataFrame, resolved: pd.DataFrame, codes: list[str], *,
                    splits: str = "train") -> tuple[pd.DataFrame, Applied]:
    """The manifest with the resolved decisions applied (see the module docstring)."""
    if splits not in SPLIT_CHOICES:
        raise UserError(f"--review-splits must be one of {', '.join(SPLIT_CHOICES)}, got {splits!r}.")
    out = manifest.copy()
    out["label_before_review"] = out["label"]
    out["split_before_review"] = out["split"]
    out["review_decision"] = ""
    done = Applied(unresolved=int((resolved["status"] == "unresolved").sum()))
    row_of = pd.Series(out.index, index=out["image_id"].astype(str))
    if row_of.index.has_duplicates:
        raise UserError("the manifest holds an image id twice; decisions cannot be matched to images.")
    applied = []
    for r in resolved[resolved["status"] == "resolved"].itertuples(index=False):
        if r.image_id not in row_of.index:
            done.unknown += 1
            continue
        i = row_of[r.image_id]
        split = str(out.at[i, "split"])
        if splits == "train" and split != "train":
            done.not_applied[split] = done.not_applied.get(split, 0) + 1
            continue
        if r.decision == "relabel":
            if r.label not in codes:
                raise UserError(f"the review relabels {r.image_id} to {r.label!r}, which is not a class of this "
                                f"data ({', '.join(codes)}).")
            out.at[i, "label"] = codes.index(r.label)
            done.relabelled += 1
        elif r.decision == "exclude":
            out.at[i, "split"] = EXCLUDED
            done.excluded += 1
        else:
            done.confirmed += 1
        out.at[i, "review_decision"] = r.decision
        applied.append([r.image_id, r.decision, r.label])
    names = dict(zip(manifest["label"], manifest["label_name"], strict=False))
    out["label_name"] = [names.get(lab, codes[lab]) for lab in out["label"]]
    done.digest = decisions_digest(applied)
    return out, done


def decisions_digest(applied: list[list[str]]) -> str:
    """sha256 of the applied decisions, [image_id, decision, label] sorted by image id."""
    text = json.dumps(sorted(applied), separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def review_db(path: str | Path) -> Path:
    """The database `--review PATH` means: PATH itself, or PATH/review.sqlite for a run folder."""
    path = Path(path)
    if path.is_dir():
        db = path / review_store.DB_NAME
        if not db.is_file() and not (path / files.REVIEW).is_file():
            raise UserError(f"--review {path}: the folder holds no {review_store.DB_NAME} (nor a review.csv); "
                            "give a run folder that was reviewed or a review database file.")
        return db
    if not path.is_file():
        raise UserError(f"--review {path} does not exist: give a run folder or a review database (.sqlite).")
    return path


def apply_review(manifest: pd.DataFrame, codes: list[str], config: dict, *, review: str | Path,
                 splits: str = "train", rule: str = "majority") -> tuple[pd.DataFrame, Applied]:
    """Read the decisions of `review` (a run folder or a database) about this run's data set
    (`config`: the run's resolved config as a dict), resolve them by `rule`, apply them."""
    if rule not in review_rules.RULES:
        raise UserError(f"data.review_rule must be one of {', '.join(review_rules.RULES)}, got {rule!r}.")
    db = review_db(review)
    dataset = review_store.dataset_key(config)
    history = review_store.read_history(db.parent if db.name == review_store.DB_NAME else None, dataset, db)
    if history.empty:
        log.warning("the review %s holds no decision about data set %s: nothing to apply", db, dataset)
    resolved = review_rules.resolve(history, rule=rule)
    out, done = apply_decisions(manifest, resolved, codes, splits=splits)
    for line in done.text(splits).splitlines():
        log.info("%s", line)
    return out, done


def apply_configured(cfg, manifest: pd.DataFrame, codes: list[str]) -> pd.DataFrame:
    """Training's hook: apply the review named by `cfg.data.review` (a `dermlow.config.Config`),
    recording the database path and the digest of the applied decisions in `cfg.data`."""
    db = review_db(cfg.data.review)
    out, done = apply_review(manifest, codes, cfg.to_dict(), review=db, splits=cfg.data.review_splits,
                             rule=cfg.data.review_rule)
    cfg.data.review, cfg.data.review_digest = str(db.resolve()), done.digest
    return out
