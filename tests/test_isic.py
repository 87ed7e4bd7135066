"""ISIC readers and validation, on the real label files in tests/fixtures/isic/ (see PROVENANCE.md)."""

import hashlib
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dermlow.data.isic import (
    ISIC2017,
    ISIC2018,
    check_image,
    describe,
    isic2017_part3_frame,
    load_manifest,
    submission_frame,
)
from dermlow.errors import UserError

FIXTURES = Path(__file__).parent / "fixtures" / "isic"
HAM_COUNTS = {"NV": 6705, "MEL": 1113, "BKL": 1099, "BCC": 514, "AKIEC": 327, "VASC": 142, "DF": 115}
TEST_2018 = {"MEL": 171, "NV": 909, "BCC": 93, "AKIEC": 43, "BKL": 217, "DF": 44, "VASC": 35}
COUNTS_2017 = {"train": {"MEL": 374, "SK": 254, "NV": 1372}, "val": {"MEL": 30, "SK": 42, "NV": 78},
               "test": {"MEL": 117, "SK": 90, "NV": 393}}
GT_2018 = "ISIC2018_Task3_Training_GroundTruth.csv"
DX_TYPES = {"histo": 5340, "follow_up": 3704, "consensus": 902, "confocal": 69}  # HAM10000's dx_type


def ham_as_2018(root: Path) -> Path:
    """The 2018 training ground truth and lesion groupings, derived from HAM10000 metadata."""
    meta = pd.read_csv(FIXTURES / "HAM10000_metadata.csv")
    gt = pd.DataFrame({"image": meta["image_id"]})
    for code in ISIC2018.codes:
        gt[code] = (meta["dx"].str.upper() == code).astype(float)
    folder = root / "ISIC2018_Task3_Training_GroundTruth"  # as the official zip unpacks
    folder.mkdir(parents=True)
    gt.to_csv(folder / GT_2018, index=False)
    meta.rename(columns={"image_id": "image", "dx_type": "diagnosis_confirm_type"})[
        ["image", "lesion_id", "diagnosis_confirm_type"]].to_csv(root / "ISIC2018_Task3_Training_LesionGroupings.csv",
                                                                 index=False)
    return root


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def jpeg(path: Path, mode: str = "RGB", size=(16, 12)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128 if mode in ("L", "P") else None).save(path)
    return path


def small_2018(root: Path, rows: list[str], images: bool = True) -> Path:
    """A 2018 layout whose ground truth holds `rows` (image,MEL,...,VASC lines)."""
    write_csv(root / GT_2018, "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n" + "\n".join(rows) + "\n")
    if images:
        for row in rows:
            jpeg(root / "ISIC2018_Task3_Training_Input" / f"{row.split(',')[0]}.jpg")
    return root


def good_rows(n: int) -> list[str]:
    return [f"ISIC_{i:07d}," + ",".join("1.0" if j == i % 7 else "0.0" for j in range(7)) for i in range(n)]


def test_fixture_checksums():
    table = (FIXTURES / "PROVENANCE.md").read_text()
    expected = dict(re.findall(r"^\| (\S+\.csv) \| .*? \| ([0-9a-f]{64}) \|", table, re.M))
    assert len(expected) == 5
    for name, digest in expected.items():
        assert hashlib.sha256((FIXTURES / name).read_bytes()).hexdigest() == digest, name


def test_isic2017_official_counts(tmp_path):
    for f in FIXTURES.glob("ISIC-2017_*.csv"):
        shutil.copy(f, tmp_path)
    manifest, spec, skipped = load_manifest(tmp_path, dataset="isic2017", check_images=False, test="official")
    assert spec is ISIC2017 and skipped == []
    counts = manifest.groupby(["split", "label_name"]).size()
    assert {s: counts[s].to_dict() for s in COUNTS_2017} == COUNTS_2017
    assert list(manifest["index"]) == list(range(2750)) and manifest["image_id"].is_monotonic_increasing
    assert manifest["path"].str.endswith(".jpg").all() and manifest["path"].map(lambda p: Path(p).is_absolute()).all()
    assert list(manifest.columns) == ["index", "image_id", "path", "label", "label_name", "split", "lesion_id", "dx_type"]
    assert manifest["dx_type"].eq("").all()  # ISIC 2017 says nothing about how labels were confirmed
    assert (manifest["label_name"] == [spec.codes[i] for i in manifest["label"]]).all()


def test_isic2018_official_test_and_lesions(tmp_path):
    ham_as_2018(tmp_path)
    shutil.copy(FIXTURES / "ISIC2018_Task3_Test_GroundTruth.csv", tmp_path)
    manifest, spec, _ = load_manifest(tmp_path, dataset="isic2018", check_images=False, test="official")
    assert spec.codes == ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
    test = manifest[manifest["split"] == "test"]
    assert test["label_name"].value_counts().to_dict() == TEST_2018
    assert test["path"].str.contains("ISIC2018_Task3_Test_Input").all()
    train_val = manifest[manifest["split"] != "test"]
    assert train_val["label_name"].value_counts().to_dict() == HAM_COUNTS
    assert train_val["lesion_id"].nunique() == 7470
    # the confirmation type of every training image, as the (genuine) HAM10000 metadata gives it
    assert train_val["dx_type"].value_counts().to_dict() == DX_TYPES
    assert test["dx_type"].eq("").all()  # the official test ground truth has none
    assert 0.09 < (train_val["split"] == "val").mean() < 0.11  # val carved from training, not test


def test_ham10000_counts(tmp_path):
    shutil.copy(FIXTURES / "HAM10000_metadata.csv", tmp_path / "HAM10000_metadata")  # Dataverse name
    manifest, spec, _ = load_manifest(tmp_path, dataset="ham10000", check_images=False)
    assert manifest["label_name"].value_counts().to_dict() == HAM_COUNTS
    assert manifest["lesion_id"].nunique() == 7470 and spec.names[0] == "Melanoma"
    assert manifest["dx_type"].value_counts().to_dict() == DX_TYPES
    meta = pd.read_csv(FIXTURES / "HAM10000_metadata.csv", dtype=str).set_index("image_id")
    assert (manifest.set_index("image_id")["dx_type"] == meta["dx_type"].reindex(manifest["image_id"])).all()
    assert manifest["path"].str.contains("HAM10000_images_part_1").all()


def test_images_found_by_extension_and_folder(tmp_path):
    root = small_2018(tmp_path, good_rows(9), images=False)
    folder = root / "ISIC2018_Task3_Training_Input"
    for i in range(9):
        jpeg(folder / f"ISIC_{i:07d}{['.jpg', '.jpeg', '.png'][i % 3]}")
    jpeg(folder / "ISIC_0000000.png")  # .jpg wins over .png
    jpeg(folder / "ISIC_0000000_superpixels.png")
    manifest, _, _ = load_manifest(root, dataset="isic2018", test_fraction=0, val_fraction=0)
    assert [Path(p).name for p in manifest["path"]][:3] == ["ISIC_0000000.jpg", "ISIC_0000001.jpeg", "ISIC_0000002.png"]
    assert len(manifest) == 9


def test_missing_folder_and_empty_folder_suggest_fetch_and_demo(tmp_path):
    import dermlow.data.prepare  # noqa: F401 (registers every data set, the benchmark arrays such as digits too)

    with pytest.raises(UserError, match=r"no such folder.*dermlow data fetch --year 2018.*dermlow data demo"):
        load_manifest(tmp_path / "nope", dataset="isic2018")
    with pytest.raises(UserError, match=r"ISIC2018_Task3_Training_GroundTruth\.csv.*data fetch --year 2018 --out"):
        load_manifest(tmp_path, dataset="isic2018")
    with pytest.raises(UserError, match=r"ISIC-2017_Training_Part3_GroundTruth\.csv.*--year 2017"):
        load_manifest(tmp_path, dataset="isic2017")
    with pytest.raises(UserError, match="not a data set of image files with labels; choose one of isic2017, "
                       "isic2018, ham10000, generic"):
        load_manifest(tmp_path, dataset="digits")
    with pytest.raises(UserError, match="unknown dataset 'isic2019'. Valid datasets: isic2017, isic2018, ham10000"):
        load_manifest(tmp_path, dataset="isic2019")
    shutil.copy(FIXTURES / "HAM10000_metadata.csv", tmp_path)
    with pytest.raises(UserError, match="--dataset ham10000"):
        load_manifest(tmp_path, dataset="isic2018")


def test_missing_columns_named(tmp_path):
    write_csv(tmp_path / GT_2018, "Image,MEL,NV,BCC,AKIEC,BKL,DF\nISIC_1,1,0,0,0,0,0\n")
    with pytest.raises(UserError) as e:
        load_manifest(tmp_path, dataset="isic2018")
    msg = str(e.value)
    assert GT_2018 in msg and "missing column(s) image, VASC" in msg
    assert "Expected the columns image,MEL,NV,BCC,AKIEC,BKL,DF,VASC; found Image,MEL,NV,BCC,AKIEC,BKL,DF" in msg


def test_zero_and_several_positive_labels(tmp_path):
    rows = good_rows(4) + ["ISIC_0000010,0,0,0,0,0,0,0", "ISIC_0000011,1,1,0,0,0,0,0"]
    small_2018(tmp_path, rows, images=False)
    with pytest.raises(UserError) as e:
        load_manifest(tmp_path, dataset="isic2018", check_images=False)
    msg = str(e.value)
    assert GT_2018 in msg and "rows 6, 7 (2 in all)" in msg and "header is row 1" in msg
    assert "1 row(s) with no positive label; 1 row(s) with more than one positive label" in msg


def test_isic2017_both_labels_positive(tmp_path):
    write_csv(tmp_path / "ISIC-2017_Training_Part3_GroundTruth.csv",
              "image_id,melanoma,seborrheic_keratosis\nISIC_1,0.0,0.0\nISIC_2,1.0,1.0\n")
    with pytest.raises(UserError, match=r"Training_Part3_GroundTruth\.csv: 1 row\(s\) with more than one .* row 3 "):
        load_manifest(tmp_path, dataset="isic2017", check_images=False)


def test_non_numeric_labels(tmp_path):
    small_2018(tmp_path, good_rows(3) + ["ISIC_0000009,yes,0,0,0,0,0,0"], images=False)
    with pytest.raises(UserError, match=r"non-numeric label values \(e.g. 'yes' in column MEL\) in row 5 "):
        load_manifest(tmp_path, dataset="isic2018", check_images=False)


def test_duplicate_ids(tmp_path):
    rows = good_rows(5)
    small_2018(tmp_path, rows + [rows[1]], images=False)
    with pytest.raises(UserError, match=r"1 image id\(s\) appear more than once \(e.g. 'ISIC_0000001'\) in rows 3, 7 "):
        load_manifest(tmp_path, dataset="isic2018", check_images=False)


def test_duplicate_ids_across_files(tmp_path):
    head = "image_id,melanoma,seborrheic_keratosis\n"
    write_csv(tmp_path / "ISIC-2017_Training_Part3_GroundTruth.csv", head + "ISIC_1,0,0\nISIC_2,0,1\n")
    write_csv(tmp_path / "ISIC-2017_Validation_Part3_GroundTruth.csv", head + "ISIC_3,0,0\nISIC_2,0,1\n")
    with pytest.raises(UserError) as e:
        load_manifest(tmp_path, dataset="isic2017", check_images=False)
    msg = str(e.value)
    assert "more than one label file (e.g. 'ISIC_2')" in msg
    assert "Training_Part3_GroundTruth.csv: row 3 (1 in all)" in msg and "Validation_Part3_GroundTruth.csv: row 3" in msg


@pytest.mark.parametrize("bad_id", ["../ISIC_1", "/data/ISIC_1", "sub/ISIC_1", "sub\\ISIC_1", "C:ISIC_1", ".."])
def test_ids_must_be_plain_file_names(tmp_path, bad_id):
    small_2018(tmp_path, good_rows(2) + [bad_id + ",1,0,0,0,0,0,0"], images=False)
    with pytest.raises(UserError) as e:
        load_manifest(tmp_path, dataset="isic2018", check_images=False)
    assert "not plain file names" in str(e.value) and "row 4 (1 in all)" in str(e.value)


def test_ids_with_extension_are_stems(tmp_path):
    write_csv(tmp_path / "labels.csv", "image,label\na.jpg,x\nb.jpg,y\n")
    manifest, spec, _ = load_manifest(tmp_path, dataset="generic", check_images=False, test_fraction=0,
                                      val_fraction=0)
    assert list(manifest["image_id"]) == ["a", "b"] and spec.codes == ("x", "y")
    assert manifest["dx_type"].eq("").all()  # no dx_type column: unknown


def test_generic_dx_type_column_kept_as_written_and_formulas_refused(tmp_path):
    write_csv(tmp_path / "labels.csv", "image,label,dx_type\na,x,histo\nb,y,biopsy (punch)\nc,x,\n")
    manifest, _, _ = load_manifest(tmp_path, dataset="generic", check_images=False, test_fraction=0, val_fraction=0)
    assert list(manifest["dx_type"]) == ["histo", "biopsy (punch)", ""]
    write_csv(tmp_path / "labels.csv", "image,label,dx_type\na,x,histo\nb,y,=HYPERLINK(1)\n")
    with pytest.raises(UserError, match="column 'dx_type'.*row 3"):
        load_manifest(tmp_path, dataset="generic", check_images=False, test_fraction=0, val_fraction=0)


def test_missing_images_named(tmp_path):
    root = small_2018(tmp_path, good_rows(30))
    for i in (4, 20):
        (root / "ISIC2018_Task3_Training_Input" / f"ISIC_{i:07d}.jpg").unlink()
    with pytest.raises(UserError) as e:
        load_manifest(root, dataset="isic2018")
    msg = str(e.value)
    assert f"{GT_2018}: 2 image(s) missing on disk, rows 6, 22 (2 in all)" in msg
    assert "ISIC_0000004.jpg: missing" in msg and "skip_bad_images" in msg
    manifest, _, skipped = load_manifest(root, dataset="isic2018", skip_bad_images=True)
    assert len(manifest) == 28 and len(skipped) == 2 and skipped[0].endswith("ISIC_0000004.jpg: missing")


def test_truncated_and_unreadable_images(tmp_path):
    root = small_2018(tmp_path, good_rows(20))
    folder = root / "ISIC2018_Task3_Training_Input"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(folder / "ISIC_0000003.jpg")
    data = (folder / "ISIC_0000003.jpg").read_bytes()
    (folder / "ISIC_0000003.jpg").write_bytes(data[: int(len(data) * 0.95)])  # truncated
    (folder / "ISIC_0000007.jpg").write_text("<html>Access denied</html>")  # not an image
    assert "truncated" in check_image(folder / "ISIC_0000003.jpg")[1]
    with pytest.raises(UserError) as e:
        load_manifest(root, dataset="isic2018")
    msg = str(e.value)
    assert "2 image(s) unreadable, rows 5, 9 (2 in all)" in msg and "truncated" in msg
    manifest, _, skipped = load_manifest(root, dataset="isic2018", skip_bad_images=True, test_fraction=0)
    assert len(manifest) == 18 and sorted(Path(s.split(":")[0]).name for s in skipped) == [
        "ISIC_0000003.jpg", "ISIC_0000007.jpg"]


def test_truncation_by_two_bytes_is_caught(tmp_path):
    path = jpeg(tmp_path / "a.jpg", size=(64, 48))
    path.write_bytes(path.read_bytes()[:-2])  # only the end-of-image marker missing
    assert "truncated" in check_image(path)[1]
    assert check_image(jpeg(tmp_path / "b.jpg")) == ("RGB", "")


def test_non_rgb_modes_accepted_and_counted(tmp_path, caplog):
    """Greyscale, RGBA, palette and 16-bit images decode and are converted by the loader: counted, kept."""
    root = small_2018(tmp_path, good_rows(8))
    folder = root / "ISIC2018_Task3_Training_Input"
    for i, mode in enumerate(["L", "RGBA", "P"]):
        (folder / f"ISIC_{i:07d}.jpg").unlink()
        jpeg(folder / f"ISIC_{i:07d}.png", mode)
    (folder / "ISIC_0000005.jpg").unlink()
    Image.fromarray(np.full((12, 16), 40000, np.uint16)).save(folder / "ISIC_0000005.png")
    with caplog.at_level(logging.WARNING, logger="dermlow.data.isic"):
        manifest, _, skipped = load_manifest(root, dataset="isic2018", test_fraction=0, val_fraction=0)
    assert len(manifest) == 8 and skipped == []
    assert "4 image(s) are not 8-bit RGB (" in caplog.text and "I;16: 1" in caplog.text and "RGBA: 1" in caplog.text


def test_unknown_ham_dx(tmp_path):
    write_csv(tmp_path / "HAM10000_metadata.csv",
              "lesion_id,image_id,dx\nHAM_1,ISIC_1,nv\nHAM_2,ISIC_2,scc\nHAM_3,ISIC_3,mel\n")
    with pytest.raises(UserError, match=r"unknown dx value\(s\) \['scc'\] in row 3 .*dx must be one of mel, nv"):
        load_manifest(tmp_path, dataset="ham10000", check_images=False)


def test_generic_reader_classes_sorted_numerically(tmp_path):
    rows = "".join(f"img{i},{[10, 2, 9][i % 3]}\n" for i in range(30))
    write_csv(tmp_path / "labels.csv", "image,label\n" + rows)
    for i in range(30):
        jpeg(tmp_path / "images" / f"img{i}.jpg")
    manifest, spec, _ = load_manifest(tmp_path, dataset="generic")
    assert spec.codes == ("2", "9", "10") and len(manifest) == 30
    assert manifest.set_index("image_id").loc["img0", "label_name"] == "10"


def test_submission_frames():
    probs = np.eye(7)[[0, 3]]
    frame = submission_frame(["ISIC_1", "ISIC_2"], probs, ISIC2018)
    assert list(frame.columns) == ["image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
    assert list(frame.columns) == list(ISIC2018.submission_header) and frame.loc[1, "AKIEC"] == 1.0
    with pytest.raises(ValueError, match="shape"):
        submission_frame(["ISIC_1"], probs, ISIC2018)
    sub = submission_frame(["ISIC_1"], [[0.2, 0.7, 0.1]], ISIC2017)
    official = isic2017_part3_frame(sub)
    assert list(official.columns) == ["image_id", "melanoma", "seborrheic_keratosis"]
    assert official.iloc[0].tolist() == ["ISIC_1", 0.7, 0.1]


def test_describe_table(tmp_path):
    for f in FIXTURES.glob("ISIC-2017_*.csv"):
        shutil.copy(f, tmp_path)
    manifest, spec, _ = load_manifest(tmp_path, dataset="isic2017", check_images=False, test="official")
    text = describe(manifest, spec, test="official")
    assert re.search(r"MEL\s+Melanoma\s+374\s+30\s+117\s+521", text)
    assert re.search(r"total\s+2000\s+150\s+600\s+2750", text) and "lesions: unknown" in text
