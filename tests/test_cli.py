"""The command line: bad input gives one clear line on stderr and a non-zero exit, no traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

from dermlow.cli.main import main
from dermlow.data.demo import make_demo


def run_cli(capsys, *args: str) -> tuple[int, str]:
    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.err


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    return make_demo(tmp_path_factory.mktemp("demo") / "isic2018", n_images=60, size=(32, 24))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--loss", "hinge"], "unknown loss 'hinge'. Valid losses: ce, balanced_ce, focal"),
        (["--weighting", "mentor"], "unknown weighting 'mentor'. Valid weightings:"),
        (["--lam", "0"], "--lam must be a positive number, got 0"),
        (["--lam", "-1"], "--lam must be a positive number"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--set", "optim.lrr=1"], "unknown setting 'optim.lrr'"),
        (["--set", "optim.momentum=-1"], "optim.momentum must be a finite number >= 0"),
        (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
        (["--loss", "focal", "--set", "loss.gamma=-1"], "loss.gamma (focal) must be a finite number >= 0"),
        (["--set", "optim.milestones=[5,2]"], "optim.milestones must be increasing epoch numbers"),
        (["--set", "run.log_every=0"], "run.log_every must be at least 1"),
        (["--workers", "-1"], "--workers (data.num_workers) must be 0 or more"),
        (["--set", "data.crop_size=0"], "data.image_size and data.crop_size must be at least 1"),
        (["--weighting", "spl", "--lam", "1"], "weighting 'spl' has no option 'lam' (weighting.lam). Its options:"),
        (["--dataset", "svhn"], "unknown dataset 'svhn'. Valid datasets: isic2017, isic2018, ham10000, generic,"),
        (["--name", "sub/run"], "--name (run.name) must be one folder name"),
    ],
)
def test_bad_flags_are_one_line_errors(capsys, tmp_path, args, expected):
    code, err = run_cli(capsys, "train", "--year", "2018", "--out", str(tmp_path), *args)
    assert code == 2
    assert expected in err
    assert err.startswith("dermlow: error:") and "Traceback" not in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("name", ["../x", "/tmp/dermlow-absolute-run", "..", ".hidden", ""])
def test_run_name_is_one_path_component(capsys, tmp_path, name):
    out = tmp_path / "runs"
    code, err = run_cli(capsys, "train", "--year", "2018", "--out", str(out), "--name", name)
    assert code == 2 and "--name (run.name) must be one folder name" in err and err.count("\n") == 1
    assert not out.exists() and not (tmp_path / "x").exists() and not Path("/tmp/dermlow-absolute-run").exists()


def test_a_setting_refused_while_building_the_loss_leaves_nothing_on_disk(capsys, tmp_path, demo_dir):
    """The model, loss, weighting and optimizer are built before the run folder is created."""
    out = tmp_path / "runs"
    code, err = run_cli(capsys, "train", "--year", "2018", "--data-dir", str(demo_dir), "--out", str(out),
                        "--model", "mobilenetv3_small_050", "--loss", "focal", "--set", "loss.alpha=[1,2]",
                        "--set", "model.pretrained=false", "--set", f"data.cache_dir={tmp_path / 'cache'}")
    assert code == 2 and "loss.alpha has 2 values, but the data has 7 classes" in err and "Traceback" not in err
    assert not out.exists()


def test_train_help_comes_from_the_registries_and_the_config_fields(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--lam LAM LOW's lambda on the per-sample scale" in out
    assert "ce (cross-entropy) | balanced_ce (class-balanced cross-entropy) | focal (focal loss)" in out
    assert "none (every weight 1: plain training) | low (Learning Optimal sample Weights)" in out
    assert "isic2017 (3 classes; official train/val/test)" in out and "{2017,2018}" in out
    for flag in ("--epochs", "--batch-size", "--lr", "--model", "--weights", "--seed", "--device", "--out",
                 "--name", "--workers", "--split", "--flip-labels", "--skip-bad-images", "--data-dir"):
        assert flag in out, flag


def test_top_level_help_and_app_do_not_import_torch():
    """Only train, data and bench list the registries (torch): `dermlow --help` and `dermlow app` start fast."""
    code = ("import sys; from dermlow.cli.main import build_parser; build_parser(sys.argv[1:]); "
            "print('torch' in sys.modules)")
    for argv in (["--help"], ["app", "runs"], ["-v", "flag", "x"]):
        out = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "False", argv
    out = subprocess.run([sys.executable, "-c", code, "-v", "train"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"  # the command given gets its full options


def test_missing_data_dir(capsys, tmp_path):
    code, err = run_cli(capsys, "train", "--year", "2018", "--data-dir", str(tmp_path / "nowhere"),
                        "--out", str(tmp_path / "runs"))
    assert code == 2 and "nowhere" in err and "dermlow data fetch" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_wrong_year_is_rejected_by_the_parser(capsys):
    code, err = run_cli(capsys, "train", "--year", "2019")
    assert code == 2 and "invalid choice: 2019" in err


def test_corrupt_weights_file_stops_before_anything_is_written(capsys, tmp_path, demo_dir):
    weights = tmp_path / "densenet161.pth"
    weights.write_bytes(b"this is not a checkpoint")
    code, err = run_cli(capsys, "train", "--year", "2018", "--data-dir", str(demo_dir), "--out", str(tmp_path / "runs"),
                        "--model", "mobilenetv3_small_050", "--weights", str(weights),
                        "--set", f"data.cache_dir={tmp_path / 'cache'}")
    assert code == 2 and "densenet161.pth could not be loaded into mobilenetv3_small_050" in err
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_offline_without_weights_says_how_to_fix_it(capsys, tmp_path, demo_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = run_cli(capsys, "train", "--year", "2018", "--data-dir", str(demo_dir), "--out", str(tmp_path / "runs"),
                        "--model", "mobilenetv3_small_050", "--set", f"data.cache_dir={tmp_path / 'cache'}")
    assert code == 2 and "--weights FILE" in err and "model.pretrained=false" in err
    assert not (tmp_path / "runs").exists()


def test_resume_of_a_folder_that_is_not_a_run(capsys, tmp_path):
    code, err = run_cli(capsys, "train", "--resume", str(tmp_path))
    assert code == 2 and "not a dermlow run folder" in err


def test_console_script_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dermlow", "train", "--year", "2018", "--lam", "0"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("dermlow: error: --lam must be a positive number")
    assert "Traceback" not in proc.stderr


def test_help_explains_the_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("train", "evaluate", "data", "flag", "app"):
        assert command in out


def test_data_check_reports_a_bad_label_file_with_its_rows(capsys, tmp_path):
    folder = tmp_path / "isic2018"
    folder.mkdir()
    (folder / "ISIC2018_Task3_Training_GroundTruth.csv").write_text(
        "image,MEL,NV,BCC,AKIEC,BKL,DF,VASC\nISIC_0000000,1,0,0,0,0,0,0\nISIC_0000001,1,1,0,0,0,0,0\n")
    code, err = run_cli(capsys, "data", "check", "--year", "2018", "--data-dir", str(folder))
    assert code == 2 and "ISIC2018_Task3_Training_GroundTruth.csv" in err and "row 3" in err
    assert "Traceback" not in err


def test_data_demo_then_check_prints_the_class_table(capsys, tmp_path):
    assert main(["data", "demo", "--out", str(tmp_path / "demo"), "--n-images", "60"]) == 0
    assert main(["data", "check", "--year", "2018", "--data-dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "MEL" in out and "Melanoma" in out and "images whose lesion also has images in another split: 0" in out
