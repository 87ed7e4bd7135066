"""`dermlow train --review`: exactly the resolved decisions, on training images only unless asked."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest
import yaml

from dermlow import config
from dermlow.cli.main import main
from dermlow.data.demo import make_demo
from dermlow.data.prepare import prepare
from dermlow.errors import UserError
from dermlow.rundir import files, review_apply, review_rules, review_store
from dermlow.rundir.review_store import Decision, ReviewStore

CODES = ["A", "B", "C"]


def _manifest() -> pd.DataFrame:
    splits = ["train"] * 6 + ["val", "val", "test", "test"]
    return pd.DataFrame({"index": range(10), "image_id": [f"i{k}" for k in range(10)], "path": "",
                         "label": [0, 1, 2, 0, 1, 2, 0, 1, 2, 0], "label_name": [CODES[c] for c in [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]],
                         "split": splits, "lesion_id": ""})


def _resolved() -> pd.DataFrame:
    hist = pd.DataFrame([
        ("i0", "a", "relabel", "C"), ("i1", "a", "exclude", ""), ("i2", "a", "confirm", ""),
        ("i3", "a", "confirm", ""), ("i3", "b", "exclude", ""),  # tie: unresolved, untouched
        ("i4", "a", "unsure", ""),  # unsure: untouched
        ("i6", "a", "relabel", "B"), ("i8", "a", "exclude", ""), ("elsewhere", "a", "exclude", "")],
        columns=["image_id", "reviewer", "decision", "label"])
    hist = hist.assign(id=range(1, len(hist) + 1), dataset="d", reason="", note="", created_at="t",
                       adjudicator=False, source="app")
    return review_rules.resolve(hist)


def test_only_resolved_decisions_on_training_images_are_applied():
    out, done = review_apply.apply_decisions(_manifest(), _resolved(), CODES)
    assert out["label"].tolist() == [2, 1, 2, 0, 1, 2, 0, 1, 2, 0]  # i0 relabelled A -> C only
    assert out["label_name"].tolist()[0] == "C"
    assert out["split"].tolist() == ["train", "excluded", *["train"] * 4, "val", "val", "test", "test"]
    assert out["review_decision"].tolist() == ["relabel", "exclude", "confirm", *[""] * 7]
    assert out["label_before_review"].tolist() == _manifest()["label"].tolist()
    assert out["split_before_review"].tolist() == _manifest()["split"].tolist()
    assert (done.relabelled, done.excluded, done.confirmed, done.unresolved, done.unknown) == (1, 1, 1, 2, 1)
    assert done.not_applied == {"val": 1, "test": 1}
    assert "NOT applied (1 val, 1 test)" in done.text("train")
    expected = json.dumps(sorted([["i0", "relabel", "C"], ["i1", "exclude", ""], ["i2", "confirm", ""]]),
                          separators=(",", ":"))
    assert done.digest == hashlib.sha256(expected.encode()).hexdigest()


def test_review_splits_all_also_changes_validation_and_test():
    out, done = review_apply.apply_decisions(_manifest(), _resolved(), CODES, splits="all")
    assert out.loc[6, "label"] == 1 and out.loc[8, "split"] == "excluded" and not done.not_applied
    assert out.loc[7, "review_decision"] == "" and out.loc[6, "review_decision"] == "relabel"


def test_a_relabel_to_a_class_the_data_does_not_have_is_refused():
    resolved = _resolved()
    resolved.loc[resolved["image_id"] == "i0", "label"] = "Z"
    with pytest.raises(UserError, match="relabels i0 to 'Z'"):
        review_apply.apply_decisions(_manifest(), resolved, CODES)


TINY = ["data.image_size=40", "data.crop_size=32", "data.num_workers=0", "model.name=mobilenetv3_small_050",
        "model.pretrained=false", "optim.batch_size=16", "optim.lr=0.02", "optim.epochs=1"]


@pytest.mark.slow
def test_train_with_review_applies_the_review_after_the_split_and_records_it(tmp_path, capsys):
    data = make_demo(tmp_path / "demo", year=2018, n_images=90, seed=0, size=(48, 36))
    sets = [f"data.data_dir={data}", f"data.cache_dir={tmp_path / 'cache'}", *TINY]
    cfg = config.resolve(config.read_yaml(config.year_config(2018)), config.parse_overrides(sets),
                         {"data": {"flip_labels": 0.2}})
    manifest = prepare(cfg.data, seed=cfg.run.seed).manifest  # the split and flips training will make
    codes = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    train = manifest[manifest["split"] == "train"]
    flipped = train[train["flipped"]].head(3)
    clean = train[~train["flipped"]]
    val, test = manifest[manifest["split"] == "val"].iloc[0], manifest[manifest["split"] == "test"].iloc[0]
    decisions = [Decision(r.image_id, "oracle", "relabel", codes[r.original_label]) for r in flipped.itertuples()]
    decisions += [Decision(clean.iloc[0]["image_id"], "oracle", "exclude"),
                  Decision(clean.iloc[1]["image_id"], "oracle", "confirm"),
                  Decision(val["image_id"], "oracle", "relabel", codes[(val["label"] + 1) % 7]),
                  Decision(test["image_id"], "oracle", "exclude")]
    db = tmp_path / "review.sqlite"
    with ReviewStore(db) as store:
        store.add("isic2018", decisions)
        store.add("digits@seed0", [Decision(clean.iloc[2]["image_id"], "x", "exclude")])  # another data set
    args = ["train", "--year", "2018", "--flip-labels", "0.2", "--review", str(db), "--out", str(tmp_path / "runs"),
            "--name", "reviewed", "--device", "cpu"] + [a for s in sets for a in ("--set", s)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "3 relabelled, 1 excluded, 1 confirmed" in err and "NOT applied (1 val, 1 test)" in err
    run = tmp_path / "runs" / "reviewed"
    got = pd.read_csv(run / files.MANIFEST, keep_default_na=False, dtype={"image_id": str}).set_index("image_id")
    before = manifest.set_index("image_id")
    assert (got["split_before_review"] == before["split"]).all()  # the split itself never changes
    assert (got["label_before_review"] == before["label"]).all()
    changed = got.index[got["label"] != got["label_before_review"]].tolist()
    assert sorted(changed) == sorted(flipped["image_id"])
    assert (got.loc[changed, "label"] == got.loc[changed, "original_label"]).all()
    assert got.index[got["split"] == "excluded"].tolist() == [clean.iloc[0]["image_id"]]
    assert got.loc[val["image_id"], "label"] == val["label"] and got.loc[test["image_id"], "split"] == "test"
    assert sorted(got.index[got["review_decision"] != ""]) == sorted([*flipped["image_id"], *clean["image_id"][:2]])
    weights = pd.read_parquet(run / files.WEIGHTS)
    assert clean.iloc[0]["image_id"] not in set(weights["image_id"])  # excluded: never trained on
    assert len(weights) == (got["split"] == "train").sum()
    trained = weights.set_index("image_id")["label"]
    assert (trained.loc[flipped["image_id"]].to_numpy() == flipped["original_label"].to_numpy()).all()
    assert test["image_id"] in set(pd.read_csv(run / files.PREDICTIONS)["image"])
    saved = yaml.safe_load((run / files.CONFIG).read_text())["data"]
    applied = [[r.image_id, "relabel", codes[r.original_label]] for r in flipped.itertuples()]
    applied += [[clean.iloc[0]["image_id"], "exclude", ""], [clean.iloc[1]["image_id"], "confirm", ""]]
    digest = hashlib.sha256(json.dumps(sorted(applied), separators=(",", ":")).encode()).hexdigest()
    assert saved["review"] == str(db.resolve()) and saved["review_digest"] == digest
    assert saved["review_splits"] == "train" and saved["review_rule"] == "majority"
    assert np.isfinite(pd.read_csv(run / files.METRICS)["test_bacc"]).all()


def test_review_path_must_exist(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        review_apply.review_db(tmp_path / "nope.sqlite")
    with pytest.raises(UserError, match="holds no review.sqlite"):
        review_apply.review_db(tmp_path)
    (tmp_path / review_store.DB_NAME).write_bytes(b"")
    assert review_apply.review_db(tmp_path) == tmp_path / review_store.DB_NAME
