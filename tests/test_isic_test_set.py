"""data.test: which test set an ISIC run uses (held out of training by default, or the official one)."""

import shutil

import pandas as pd
import pytest
from PIL import Image
from test_isic import FIXTURES, TEST_2018, ham_as_2018

from dermlow import config
from dermlow.cli.main import main
from dermlow.data.demo import make_demo
from dermlow.data.isic import ISIC2018, load_manifest
from dermlow.data.prepare import prepare
from dermlow.data.splits import describe
from dermlow.errors import UserError

OFFICIAL_TEST = "ISIC2018_Task3_Test_GroundTruth.csv"


@pytest.fixture(scope="module")
def ham_with_official_test(tmp_path_factory):
    root = ham_as_2018(tmp_path_factory.mktemp("isic2018"))
    shutil.copy(FIXTURES / OFFICIAL_TEST, root)
    return root


def test_default_test_set_is_held_out_of_training_even_with_official_ground_truth(ham_with_official_test):
    manifest, _, _ = load_manifest(ham_with_official_test, dataset="isic2018", check_images=False)
    official_ids = set(pd.read_csv(FIXTURES / OFFICIAL_TEST)["image"])
    assert len(manifest) == 10015  # the official training images only
    assert not set(manifest["image_id"]) & official_ids
    test = manifest[manifest["split"] == "test"]
    assert 0.19 < len(test) / len(manifest) < 0.21
    assert test["lesion_id"].ne("").all()  # a held-out test set keeps its lesion ids


def test_official_test_set_when_asked(ham_with_official_test):
    manifest, _, _ = load_manifest(ham_with_official_test, dataset="isic2018", check_images=False, test="official")
    test = manifest[manifest["split"] == "test"]
    assert test["label_name"].value_counts().to_dict() == TEST_2018
    assert set(test["image_id"]) == set(pd.read_csv(FIXTURES / OFFICIAL_TEST)["image"])
    report = describe(manifest, ISIC2018, test="official")
    assert "official test set (1512 images), which has no lesion ids" in report
    assert "cannot be checked" in report


def test_official_without_its_ground_truth_is_a_user_error(tmp_path):
    root = ham_as_2018(tmp_path)
    with pytest.raises(UserError, match="data.test is 'official'.*ISIC2018_Task3_Test_GroundTruth.csv"):
        load_manifest(root, dataset="isic2018", check_images=False, test="official")
    with pytest.raises(UserError, match="data.test must be split or official"):
        load_manifest(root, dataset="isic2018", check_images=False, test="both")


def test_config_key_default_and_validation():
    assert config.resolve().data.test == "split"
    assert config.resolve(config.read_yaml(config.year_config(2018))).data.test == "split"
    assert config.resolve(config.read_yaml(config.year_config(2017))).data.test == "official"
    with pytest.raises(UserError, match="data.test must be split"):
        config.resolve({"data": {"test": "official_test"}})


@pytest.fixture(scope="module")
def demo_with_official_test(tmp_path_factory):
    """A demo 2018 folder plus a 3-image official test set (ground truth and images)."""
    root = make_demo(tmp_path_factory.mktemp("demo") / "isic2018", n_images=60, size=(32, 24))
    rows = ["ISIC_9000001,1.0,0.0,0.0,0.0,0.0,0.0,0.0", "ISIC_9000002,0.0,1.0,0.0,0.0,0.0,0.0,0.0",
            "ISIC_9000003,0.0,0.0,1.0,0.0,0.0,0.0,0.0"]
    (root / OFFICIAL_TEST).write_text("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n" + "\n".join(rows) + "\n")
    (root / "ISIC2018_Task3_Test_Input").mkdir()
    for row in rows:
        Image.new("RGB", (32, 24), (90, 60, 40)).save(root / "ISIC2018_Task3_Test_Input" / f"{row[:12]}.jpg")
    return root


def test_data_check_says_which_test_set_and_that_official_leaks_cannot_be_checked(capsys, demo_with_official_test):
    assert main(["data", "check", "--year", "2018", "--data-dir", str(demo_with_official_test)]) == 0
    out = capsys.readouterr().out
    assert "held out of the training images (data.test: split)" in out
    assert main(["data", "check", "--year", "2018", "--data-dir", str(demo_with_official_test),
                 "--test-set", "official"]) == 0
    out = capsys.readouterr().out
    assert "the official test set (3 images), which has no lesion ids" in out
    assert "between training and validation only" in out


def test_a_run_uses_the_configured_test_set(demo_with_official_test, caplog):
    base = {"data": {"dataset": "isic2018", "data_dir": str(demo_with_official_test)}}
    caplog.set_level("INFO", logger="dermlow")
    held = prepare(config.resolve(base).data, seed=0).manifest
    assert not held["image_id"].str.startswith("ISIC_9").any() and (held["split"] == "test").sum() > 5
    assert "official ISIC2018_Task3_Test_GroundTruth.csv is not used" in caplog.text
    official = prepare(config.resolve(base, {"data": {"test": "official"}}).data, seed=0).manifest
    assert sorted(official.loc[official["split"] == "test", "image_id"]) == [
        "ISIC_9000001", "ISIC_9000002", "ISIC_9000003"]
