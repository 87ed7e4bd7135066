"""Untrusted inputs other than run state (docs/security.md): archives, label files, images,
class lists, and the files dermlow exports (CSV formula injection, --copy-images)."""

from __future__ import annotations

import io
import json
import logging
import stat
import struct
import tarfile
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from run_factory import make_run

from dermlow.cli.main import main
from dermlow.data.demo import make_demo
from dermlow.data.image_check import check_image
from dermlow.data.isic import load_manifest
from dermlow.data.splits import class_warnings, read_splits
from dermlow.data.unpack import safe_unpack
from dermlow.errors import UserError
from dermlow.rundir import files, flag_scores, reader, review_marks

GT_2018 = "ISIC2018_Task3_Training_GroundTruth.csv"
HOSTILE = '=HYPERLINK("http://127.0.0.1:9/x","click")'


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def demo(tmp_path) -> Path:
    return make_demo(tmp_path / "isic2018", year=2018, n_images=60, seed=1, size=(48, 36))


# ---------------------------------------------------------------- item 3: --copy-images is confined

def test_copy_images_stays_inside_dir_and_reads_only_the_data_folder(tmp_path, caplog):
    run = make_run(tmp_path / "runs", "hostile", epochs=3)
    classes = json.loads((run / files.CLASSES).read_text())
    classes["codes"][1] = "../../../X"  # NV
    files.write_json(run / files.CLASSES, classes)
    manifest = pd.read_csv(run / files.MANIFEST, dtype=str, keep_default_na=False)
    train = manifest.index[manifest["split"] == "train"]
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(outside)
    data_dir = Path(manifest.loc[train[0], "path"]).parent
    (data_dir / "link.png").symlink_to(outside)
    (data_dir / "notes.png").write_text("not an image")
    manifest.loc[train[0], "path"] = "/etc/passwd"
    manifest.loc[train[1], "path"] = str(data_dir / "link.png")
    manifest.loc[train[2], "path"] = str(data_dir / "notes.png")
    files.write_csv(run / files.MANIFEST, manifest)
    before = {p for p in tmp_path.rglob("*") if "copies" not in p.parts}
    dest = tmp_path / "work" / "copies"
    with caplog.at_level(logging.INFO, logger="dermlow"):
        table = flag_scores.export_flags(run, copy_images=dest)
    after = {p for p in tmp_path.rglob("*") if "copies" not in p.parts}
    assert after - before == {tmp_path / "work"}  # nothing written outside DIR
    copied = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert len(copied) == len(table) - 3 and all("/" in c and not c.startswith(".") for c in copied)
    assert {c.split("/")[0] for c in copied} >= {"_.._.._X", "MEL"}
    assert "passwd" not in " ".join(copied) and "link.png" not in " ".join(copied)
    assert (f"copied {len(table) - 3} image(s) into {dest}; skipped 3: 2 outside the run's data folder "
            in caplog.text and "1 not a JPEG/PNG image" in caplog.text)


# ---------------------------------------------------------------- item 5: formula injection

def _gt_2018(folder: Path, rows: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / GT_2018).write_text("image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\n" + "".join(rows))
    return folder


@pytest.mark.parametrize("bad", ["=1+2", "+cmd", "-2+3", "@SUM(A1)"])
def test_ingestion_refuses_formula_like_ids_and_labels(tmp_path, bad):
    folder = _gt_2018(tmp_path / "a", ["ISIC_0000001,1,0,0,0,0,0,0\n", f"{bad},0,1,0,0,0,0,0\n"])
    with pytest.raises(UserError, match=rf"{GT_2018}: 1 value\(s\) in column 'image' start with = \+ - @ .* row 3"):
        load_manifest(folder, dataset="isic2018", check_images=False)
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "labels.csv").write_text(f"image,label,lesion_id\na,nv,L1\nb,{bad},L2\nc,mel,{bad}\n")
    with pytest.raises(UserError, match=r"labels.csv: 1 value\(s\) in column 'label' .* row 3"):
        load_manifest(tmp_path / "g", dataset="generic", check_images=False)
    (tmp_path / "splits.csv").write_text(f"image_id,split\nISIC_1,train\n{bad},test\n")
    with pytest.raises(UserError, match=r"splits.csv: image ids starting with = \+ - @ .* row 3"):
        read_splits(tmp_path / "splits.csv", pd.Series(["ISIC_1", bad]))


def test_plain_negative_numbers_are_labels_not_formulas(tmp_path):
    (tmp_path / "labels.csv").write_text("image,label\n" + "".join(f"i{k},{[-1, 1][k % 2]}\n" for k in range(8)))
    manifest, spec, _ = load_manifest(tmp_path, dataset="generic", check_images=False)
    assert spec.codes == ("-1", "1") and len(manifest) == 8


def test_exports_escape_formula_cells_and_readers_get_them_back(tmp_path):
    run = make_run(tmp_path, "run", epochs=2, flip_frac=0.1)
    manifest = reader.read_manifest(run)
    first = manifest.index[manifest["split"] == "train"][0]
    old_id = manifest.loc[first, "image_id"]
    manifest.loc[first, "image_id"] = HOSTILE  # an old or hand-made run: ingestion would refuse it
    files.write_csv(run / files.MANIFEST, manifest)
    assert f"'{HOSTILE}".replace('"', '""') in (run / files.MANIFEST).read_text()
    assert reader.read_manifest(run).loc[first, "image_id"] == HOSTILE  # dermlow's reader round-trips
    weights = pd.read_parquet(run / files.WEIGHTS)
    weights.loc[weights["image_id"] == old_id, "image_id"] = HOSTILE
    weights.to_parquet(run / files.WEIGHTS)
    flag_scores.export_flags(run, out=tmp_path / "flagged.csv")
    raw = pd.read_csv(tmp_path / "flagged.csv", dtype=str, keep_default_na=False)
    assert f"'{HOSTILE}" in set(raw["image_id"]) and HOSTILE not in set(raw["image_id"])
    assert not raw.map(files.formula_like).any().any()  # no cell a spreadsheet would run
    review_marks.mark(run, "ISIC_0000001", 1, "hard case", "-- looks like a nevus =?")
    assert "'-- looks like a nevus =?" in (run / files.REVIEW).read_text()
    assert review_marks.read_review(run)["note"].tolist() == ["-- looks like a nevus =?"]
    predictions = (run / files.PREDICTIONS).read_text().splitlines()[0]
    assert predictions == "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC"  # the ISIC submission layout, unchanged


# ---------------------------------------------------------------- item 9: corrupt and huge images

def _corrupt_jpeg(path: Path) -> Path:
    gradient = np.broadcast_to(np.linspace(0, 255, 600)[None, :, None], (450, 600, 3)).astype(np.uint8)
    Image.fromarray(gradient).save(path, quality=90)
    data = bytearray(path.read_bytes())
    mid = len(data) // 3
    data[mid:mid + 200] = np.random.default_rng(0).integers(0, 256, 200, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return path


def _png_header(path: Path, width: int, height: int) -> Path:
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)  # a header only: decoding it would fail differently
    return path


def test_data_check_finds_corrupt_jpeg_data(demo, capsys):
    victim = sorted((demo / "ISIC2018_Task3_Training_Input").glob("*.jpg"))[5]
    _corrupt_jpeg(victim)
    assert check_image(victim)[1].startswith("unreadable (corrupt or truncated JPEG data: Corrupt JPEG data")
    code, _, err = cli(capsys, "data", "check", "--year", "2018", "--data-dir", str(demo))
    assert code == 2 and "1 image(s) unreadable" in err and victim.name in err and "Traceback" not in err
    code, out, _ = cli(capsys, "data", "check", "--year", "2018", "--data-dir", str(demo), "--skip-bad-images")
    assert code == 0 and "1 unreadable images would be left out" in out and victim.name in out


def test_images_above_the_pixel_limit_are_refused_before_decoding(demo, capsys):
    victim = sorted((demo / "ISIC2018_Task3_Training_Input").glob("*.jpg"))[3]
    victim.unlink()
    bomb = _png_header(victim.with_suffix(".png"), 12000, 12000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning, no decoding
        assert check_image(bomb) == ("", "too large (12000x12000 = 144 MP, above the limit of 100 MP; raise it "
                                         "with --max-image-pixels if the image is genuine)")
        assert check_image(bomb, max_pixels=200_000_000)[1] == "unreadable (corrupt or truncated PNG data)"
    code, _, err = cli(capsys, "data", "check", "--year", "2018", "--data-dir", str(demo))
    assert code == 2 and err.splitlines()[-1].startswith("dermlow: error:") and err.count("dermlow") == 1
    assert "1 image(s) too large" in err and bomb.name in err
    code, _, err = cli(capsys, "data", "check", "--year", "2018", "--data-dir", str(demo),
                       "--max-image-pixels", "1000")
    assert code == 2 and "60 image(s) too large" in err


# ---------------------------------------------------------------- item 10: archives

def _zip(path: Path, members: list[tuple[str, bytes]], link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            zf.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path


def _tar(path: Path, kind: bytes, name: str = "evil") -> Path:
    with tarfile.open(path, "w") as tf:
        tf.addfile(tarfile.TarInfo("ok/fine.txt"), io.BytesIO(b""))
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, "/etc/passwd"
        tf.addfile(info)
    return path


@pytest.mark.parametrize("case", ["traversal", "zip-symlink", "tar-symlink", "tar-hardlink", "tar-device",
                                  "tar-fifo", "dot-file", "bomb"])
def test_archives_are_validated_before_anything_is_written(tmp_path, case):
    first = [("ISIC2018_Task3_Training_Input/a.jpg", b"fine")]
    archive = {
        "traversal": lambda: _zip(tmp_path / "a.zip", [*first, ("x/../../evil.txt", b"evil")]),
        "zip-symlink": lambda: _zip(tmp_path / "a.zip", first, link="ISIC2018_Task3_Training_Input/link"),
        "tar-symlink": lambda: _tar(tmp_path / "a.tar", tarfile.SYMTYPE),
        "tar-hardlink": lambda: _tar(tmp_path / "a.tar", tarfile.LNKTYPE),
        "tar-device": lambda: _tar(tmp_path / "a.tar", tarfile.CHRTYPE),
        "tar-fifo": lambda: _tar(tmp_path / "a.tar", tarfile.FIFOTYPE),
        "dot-file": lambda: _zip(tmp_path / "a.zip", [*first, (".", b"x")]),
        "bomb": lambda: _zip(tmp_path / "a.zip", [*first, ("zeros.bin", bytes(5_000_000))]),
    }[case]()
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(UserError) as err:
        safe_unpack(archive, out)
    assert "\n" not in str(err.value) and str(archive) in str(err.value)
    assert not any(out.rglob("*")) and not (tmp_path / "evil.txt").exists()
    if case == "bomb":
        assert "more than the cap" in str(err.value)
        assert len(safe_unpack(archive, out, max_ratio=1000)) == 2  # the user's call, if they trust it


def test_a_symlinked_image_folder_is_accepted(tmp_path):
    elsewhere = tmp_path / "big-disk" / "images"
    elsewhere.mkdir(parents=True)
    out = tmp_path / "isic2018"
    out.mkdir()
    (out / "ISIC2018_Task3_Training_Input").symlink_to(elsewhere, target_is_directory=True)
    archive = _zip(tmp_path / "a.zip", [("ISIC2018_Task3_Training_Input/", b""),
                                        ("ISIC2018_Task3_Training_Input/a.jpg", b"jpeg"), ("./", b"")])
    safe_unpack(archive, out)
    assert (elsewhere / "a.jpg").read_bytes() == b"jpeg"
    (out / "broken").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UserError, match=r"cannot write .*broken/b.jpg"):
        safe_unpack(_zip(tmp_path / "b.zip", [("broken/b.jpg", b"jpeg")]), out)


# ---------------------------------------------------------------- item 11: class problems

def test_class_warnings_and_an_empty_class(demo, tmp_path, capsys):
    file = demo / "ISIC2018_Task3_Training_GroundTruth" / GT_2018
    gt = pd.read_csv(file)
    df = gt["DF"] == 1
    gt.loc[df, "NV"], gt.loc[df, "DF"] = 1.0, 0.0  # no dermatofibroma left
    gt.to_csv(file, index=False)
    code, _, err = cli(capsys, "data", "check", "--year", "2018", "--data-dir", str(demo))
    assert code == 0 and "dermlow: warning: class DF has no images" in err
    tiny = ["--model", "mobilenetv3_small_050", "--epochs", "1", "--workers", "0", "--set", "model.pretrained=false",
            "--set", "data.image_size=40", "--set", "data.crop_size=32", "--set", f"data.cache_dir={tmp_path / 'c'}"]
    code, _, err = cli(capsys, "train", "--year", "2018", "--data-dir", str(demo), "--out", str(tmp_path / "runs"),
                       *tiny)
    assert code == 2 and "class(es) DF have no training images" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_case_variants_and_single_lesion_classes_are_warned_about(tmp_path):
    rows = [f"i{k},{'mel' if k < 6 else 'MEL' if k < 10 else 'nv'},{'L1' if k < 6 else f'L{k}'}\n" for k in range(20)]
    (tmp_path / "labels.csv").write_text("image,label,lesion_id\n" + "".join(rows))
    manifest, spec, _ = load_manifest(tmp_path, dataset="generic", check_images=False)
    found = class_warnings(manifest, spec.codes)
    assert "labels 'MEL' and 'mel' differ only in case, so they are 2 separate classes" in " ".join(found)
    assert any(w.startswith("class mel has images of only 1 lesion (6 image(s))") for w in found)
    assert not any(w.startswith("class nv has images of only") for w in found)


def test_the_apps_review_download_escapes_formula_cells(tmp_path):
    from dermlow._app import review_data

    from dermlow.rundir import review_store

    run = make_run(tmp_path, "run", epochs=2)
    target = reader.weight_summary(run)["image_id"].iloc[0]
    with review_store.open_store(run, "isic2018") as store:
        store.add("isic2018", [review_store.Decision(target, "Dr Ada", "unsure", note="=1+2 check")])
    history = review_store.read_history(run, "isic2018")
    raw = pd.read_csv(io.BytesIO(review_data.history_csv(history)), dtype=str, keep_default_na=False)
    assert raw["note"].tolist() == ["'=1+2 check"]
