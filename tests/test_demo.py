"""Synthetic demo data: official layout, Table 1 imbalance, determinism, reader round trip, learnable."""

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dermlow.data.demo import CONFIRM_TYPES, TABLE1_2018, class_counts, make_demo
from dermlow.data.isic import load_manifest
from dermlow.errors import UserError

GT = "ISIC2018_Task3_Training_GroundTruth"


def digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def demo2018(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("d") / "isic2018", year=2018, n_images=300, seed=0)


def test_class_counts_scale_table1():
    counts = class_counts(TABLE1_2018, 300, 8)
    assert sum(counts.values()) == 300 and min(counts.values()) == 8
    assert counts == {"MEL": 33, "NV": 193, "BCC": 15, "AKIEC": 10, "BKL": 33, "DF": 8, "VASC": 8}
    with pytest.raises(UserError, match="at least 8 per class"):
        class_counts(TABLE1_2018, 50, 8)


def test_2018_layout_and_round_trip(demo2018):
    names = sorted(p.name for p in demo2018.iterdir())
    assert names == ["ISIC2018_Task3_Training_GroundTruth", "ISIC2018_Task3_Training_Input",
                     "ISIC2018_Task3_Training_LesionGroupings.csv", "README_DEMO.txt"]
    text = (demo2018 / GT / f"{GT}.csv").read_text().splitlines()
    assert text[0] == "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC" and text[1].startswith("ISIC_0000000,")
    assert set(text[1].split(",")[1:]) == {"0.0", "1.0"}
    groups = pd.read_csv(demo2018 / "ISIC2018_Task3_Training_LesionGroupings.csv")
    assert list(groups.columns) == ["image", "lesion_id", "diagnosis_confirm_type"]
    sizes = groups["lesion_id"].value_counts()
    assert sizes.max() == 3 and (sizes == 2).sum() > 5 and sizes.index[0].startswith("HAM_")
    manifest, spec, skipped = load_manifest(demo2018, dataset="isic2018")
    assert skipped == [] and len(manifest) == 300
    assert manifest["label_name"].value_counts().to_dict() == class_counts(TABLE1_2018, 300, 8)
    assert manifest.groupby("lesion_id")["split"].nunique().max() == 1
    # the demo's confirmation types reach the manifest (the app shows them), one per lesion
    assert set(manifest["dx_type"]) == set(CONFIRM_TYPES)
    assert manifest.groupby("lesion_id")["dx_type"].nunique().max() == 1
    with Image.open(manifest["path"][0]) as im:
        assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (96, 72))


def test_2017_layout_official_proportions_and_decoys(tmp_path):
    root = make_demo(tmp_path / "isic2017", year=2017, n_images=300)
    for stem in ("Training", "Validation", "Test_v2"):
        assert (root / f"ISIC-2017_{stem}_Data").is_dir()
        raw = (root / f"ISIC-2017_{stem}_Part3_GroundTruth.csv").read_bytes()
        assert raw.startswith(b"image_id,melanoma,seborrheic_keratosis\r\n")
    decoys = sorted((root / "ISIC-2017_Training_Data").glob("*_superpixels.png"))
    assert len(decoys) == 2
    manifest, _, _ = load_manifest(root, dataset="isic2017", test="official")
    sizes = manifest["split"].value_counts().to_dict()
    assert sizes == {"train": 219, "val": 16, "test": 65}  # 300 * (2000, 150, 600) / 2750; the largest takes the rounding rest
    train = manifest[manifest["split"] == "train"]["label_name"].value_counts()
    assert train["NV"] > train["MEL"] > train["SK"] >= 8
    assert not manifest["path"].str.contains("superpixels").any()


def test_deterministic(tmp_path, demo2018):
    # Its speed is measured by benchmarks/demo_data.py (docs/benchmarks.md), not asserted here.
    again = make_demo(tmp_path / "a", year=2018, n_images=300, seed=0)
    assert digest(again) == digest(demo2018)
    assert digest(make_demo(tmp_path / "b", year=2018, n_images=300, seed=1)) != digest(demo2018)


def test_refuses_non_empty_folder_and_bad_options(tmp_path, demo2018):
    with pytest.raises(UserError, match="is not empty"):
        make_demo(demo2018)
    with pytest.raises(UserError, match="year must be 2017 or 2018"):
        make_demo(tmp_path / "x", year=2019)
    with pytest.raises(UserError, match="n_images=39 is too small for 2017: ask for at least 40"):
        make_demo(tmp_path / "x", year=2017, n_images=39)
    for year, n in ((2017, 40), (2018, 56)):  # the smallest sets still have 8 training images per class
        manifest, _, _ = load_manifest(make_demo(tmp_path / f"min{year}", year=year, n_images=n), dataset=f"isic{year}",
                                       check_images=False, test="official" if year == 2017 else "split")
        official_train = manifest[manifest["split"] == "train"] if year == 2017 else manifest
        assert len(manifest) == n and official_train["label"].value_counts().min() >= 8


def test_learnable_but_not_trivial(demo2018):
    """A linear model on 12x9 thumbnails beats chance (1/7) clearly but is far from perfect.

    Deterministic (fixed data, unshuffled 4-fold split, lbfgs): 0.6171 for seed 0, measured twice
    (scikit-learn's balanced_accuracy_score). Other demo seeds give 0.646, 0.611, 0.572, 0.591
    (seeds 1-4), a spread of 0.07 from the data alone; the margin of 0.02 around seed 0 is for
    solver round-off across scikit-learn / BLAS versions, so a change to the generator that makes
    the classes noticeably easier or harder fails here."""
    manifest, _, _ = load_manifest(demo2018, dataset="isic2018", check_images=False)
    x = np.stack([np.asarray(Image.open(p).resize((12, 9)), dtype=float).ravel() / 255 for p in manifest["path"]])
    y = manifest["label"].to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300, C=0.01, class_weight="balanced"))
    pred = cross_val_predict(model, x, y, cv=4)
    bacc = balanced_accuracy_score(y, pred)
    assert bacc == pytest.approx(0.617, abs=0.02)
