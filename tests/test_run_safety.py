"""Run folders as untrusted input (docs/security.md): plain-data checkpoints, one writer per run
folder, divergence stops with exit 3 keeping the last good epoch, --resume checks every file
first, and run files follow the umask."""

from __future__ import annotations

import builtins
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from run_factory import make_run

from dermlow import config
from dermlow.cli.main import main
from dermlow.data.demo import make_demo
from dermlow.errors import UserError
from dermlow.rundir import files
from dermlow.rundir.lock import claim_run_dir
from dermlow.training.loop import train

TINY = ["data.image_size=40", "data.crop_size=32", "data.num_workers=0", "model.name=mobilenetv3_small_050",
        "model.pretrained=false", "optim.batch_size=16", "optim.lr=0.02", "optim.milestones=[5]"]
ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1",
       "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


def cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().err


def one_line(err: str) -> None:
    """The error is one line, the last on stderr (progress lines may come before it), no traceback."""
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("dermlow: error:") and "Traceback" not in err, err
    assert sum("dermlow: error:" in line for line in lines) == 1, err


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("demo") / "isic2018", year=2018, n_images=90, seed=0, size=(48, 36))


def tiny_config(demo_dir: Path, out: Path, *extra: str) -> config.Config:
    flags = [f"data.data_dir={demo_dir}", f"data.cache_dir={out.parent / 'cache'}", f"run.out={out}",
             "optim.epochs=1", *TINY, *extra]
    return config.resolve(config.read_yaml(config.year_config(2018)), config.parse_overrides(flags))


@pytest.fixture(scope="module")
def trained(demo_dir, tmp_path_factory) -> Path:
    """A real one-epoch run (tiny model, demo data); tests work on copies of it."""
    return train(tiny_config(demo_dir, tmp_path_factory.mktemp("runs"), "run.name=one"))


def copy_run(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(run, out, ignore=shutil.ignore_patterns(".lock"))
    return out


class Hostile:
    """A pickle payload: unpickling it creates a marker file (it could as well run anything)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return builtins.open, (str(self.marker), "w")


# ---------------------------------------------------------------- item 1: checkpoints are plain data

@pytest.mark.parametrize("command", ["evaluate", "resume"])
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, capsys, command):
    run = make_run(tmp_path / "runs", "shared", epochs=2)
    marker = tmp_path / "pwned"
    for name in (files.CHECKPOINT, files.BEST):
        torch.save({"epoch": 2, "model": {"w": torch.zeros(1)}, "payload": Hostile(marker)}, run / name)
    args = ["evaluate", str(run), "--device", "cpu"] if command == "evaluate" else ["train", "--resume", str(run)]
    code, err = cli(capsys, *args)
    assert code == 2 and not marker.exists()
    one_line(err)
    name = files.BEST if command == "evaluate" else files.CHECKPOINT
    assert f"{run / name} holds Python objects" in err and "it references io.open" in err


def test_weights_that_would_run_code_are_refused(tmp_path, capsys, demo_dir):
    marker = tmp_path / "pwned"
    torch.save({"conv.weight": torch.zeros(1), "payload": Hostile(marker)}, tmp_path / "densenet161.pth")
    code, err = cli(capsys, "train", "--year", "2018", "--data-dir", str(demo_dir), "--out", str(tmp_path / "runs"),
                    "--model", "mobilenetv3_small_050", "--weights", str(tmp_path / "densenet161.pth"),
                    "--set", f"data.cache_dir={tmp_path / 'cache'}")
    assert code == 2 and not marker.exists() and not (tmp_path / "runs").exists()
    one_line(err)
    assert "densenet161.pth holds Python objects" in err


def test_rng_states_survive_a_plain_data_round_trip(tmp_path):
    from dermlow.training.session import _rng_state, _set_rng_state

    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    np.random.standard_normal()  # leaves a cached gaussian in numpy's state
    torch.save({"rng": _rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.standard_normal(3), random.random())
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    _set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    again = (torch.rand(3), np.random.standard_normal(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


def test_a_trained_checkpoint_is_plain_data(trained):
    for name in (files.CHECKPOINT, files.BEST):
        ckpt = torch.load(trained / name, weights_only=True)
        assert ckpt["epoch"] == 1 and isinstance(ckpt["best_bacc"], float)


# ---------------------------------------------------------------- item 2: one writer per run folder

def test_resume_of_a_run_held_by_another_process_is_refused(tmp_path, capsys):
    run = make_run(tmp_path / "runs", "busy", epochs=2, written_epochs=1, extra_columns=True)
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(run / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode())\n"
                               "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(p.name for p in run.iterdir())
        code, err = cli(capsys, "train", "--resume", str(run))
    finally:
        holder.kill()
        holder.wait()
    assert code == 2
    one_line(err)
    assert f"{run} is in use by process {holder.pid}" in err
    assert sorted(p.name for p in run.iterdir()) == before


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path, caplog):
    run = make_run(tmp_path / "runs", "stale", epochs=2, written_epochs=1)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (run / ".lock").write_text(f"{gone.pid}\n")
    with caplog.at_level("WARNING", logger="dermlow"), claim_run_dir(run, resume=True) as claim:
        assert claim.held and (run / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(UserError, match=f"in use by process {os.getpid()}"):
            claim_run_dir(run, resume=True)  # a second claim, even from this process, is refused
    assert f"taking over the lock left by process {gone.pid} (no longer running" in caplog.text
    claim_run_dir(run, resume=True).release()  # released: free again


def test_a_new_run_claims_only_a_fresh_or_empty_folder(tmp_path):
    taken = claim_run_dir(tmp_path / "new", resume=False)
    with pytest.raises(UserError, match="in use by process"):
        claim_run_dir(tmp_path / "new", resume=False)
    taken.release()
    claim_run_dir(tmp_path / "new", resume=False).release()  # left empty by a killed start: reusable
    (tmp_path / "new" / files.MANIFEST).write_text("index\n")  # a start killed before config.yaml
    claim_run_dir(tmp_path / "new", resume=False).release()
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_bytes(b"x")
    with pytest.raises(UserError, match="holds files that are not a run"):
        claim_run_dir(tmp_path / "photos", resume=False)
    run = make_run(tmp_path, "done", epochs=1)
    with pytest.raises(UserError, match="already holds a run"):
        claim_run_dir(run, resume=False)


@pytest.mark.slow
def test_two_concurrent_starts_of_one_run_name(demo_dir, tmp_path):
    cfg = tiny_config(demo_dir, tmp_path / "runs", "run.name=same")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    cmd = [sys.executable, "-m", "dermlow", "train", "--config", str(tmp_path / "cfg.yaml")]
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read(), p.pid) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    (_, loser, _), (_, _, winner) = sorted(results, key=lambda r: -r[0])
    assert "Traceback" not in loser and str(tmp_path / "runs" / "same") in loser
    assert f"in use by process {winner}" in loser or "already holds a run" in loser
    run = tmp_path / "runs" / "same"
    assert pd.read_csv(run / files.METRICS)["epoch"].tolist() == [1]
    assert pd.read_parquet(run / files.WEIGHTS)["epoch"].unique().tolist() == [1]


# ---------------------------------------------------------------- item 7: divergence

def test_a_diverging_run_stops_with_exit_3_and_keeps_nothing_broken(demo_dir, tmp_path, capsys):
    code, err = cli(capsys, "train", "--year", "2018", "--data-dir", str(demo_dir), "--out", str(tmp_path),
                    "--name", "div", "--lr", "1000", "--epochs", "2", *[f"--set={s}" for s in TINY[:-2]],
                    f"--set=data.cache_dir={tmp_path / 'cache'}")
    assert code == 3
    one_line(err)
    assert "training diverged" in err and "of epoch 1 (lr 1000, lambda 1)" in err
    assert "lower learning rate (--lr, e.g. 100)" in err and "larger LOW lambda (--lam" in err
    assert not (tmp_path / "div" / files.CHECKPOINT).exists() and not (tmp_path / "div" / files.METRICS).exists()


def test_divergence_in_epoch_2_keeps_the_checkpoint_of_epoch_1(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    ckpt = torch.load(run / files.CHECKPOINT, weights_only=True)
    for group in ckpt["optimizer"]["param_groups"]:
        group["lr"] = 1e4  # as if the schedule had raised the learning rate far too high
    torch.save(ckpt, run / files.CHECKPOINT)
    code, err = cli(capsys, "train", "--resume", str(run), "--epochs", "2")
    assert code == 3
    one_line(err)
    assert "of epoch 2 (lr 10000" in err and "keeps the checkpoint and records of epoch 1" in err
    assert torch.load(run / files.CHECKPOINT, weights_only=True)["epoch"] == 1
    assert pd.read_csv(run / files.METRICS)["epoch"].tolist() == [1]
    assert pd.read_parquet(run / files.WEIGHTS)["epoch"].unique().tolist() == [1]


# ---------------------------------------------------------------- item 8: --resume checks every file first

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {
    files.WEIGHTS: _truncate,
    files.CHECKPOINT: _truncate,
    files.MANIFEST: lambda p: p.write_text("index,image_id\n0,x\n"),
    files.CLASSES: lambda p: p.write_text("{not json"),
    files.CONFIG: lambda p: p.write_text("data: [unclosed"),
    files.METRICS: lambda p: p.write_text("epoch,lr\n"),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_resume_names_a_damaged_file_before_training(trained, tmp_path, capsys, name):
    run = copy_run(trained, tmp_path)
    (run / files.DONE).unlink(missing_ok=True)
    stale = run / f".{files.CHECKPOINT}.k1ll3d.tmp"
    stale.write_bytes(b"")
    DAMAGE[name](run / name)
    metrics = (run / files.METRICS).read_bytes()
    start = time.monotonic()
    code, err = cli(capsys, "train", "--resume", str(run), "--epochs", "2")
    assert code == 2 and time.monotonic() - start < 20
    one_line(err)
    assert str(run / name) in err or (name == files.CONFIG and "config.yaml" in err)
    assert (run / files.METRICS).read_bytes() == metrics  # no epoch trained
    if name != files.CONFIG:  # a config that cannot be read stops before the folder is claimed
        assert not stale.exists()


# ---------------------------------------------------------------- item 12: run files follow the umask

@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_run_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        written = [files.write_text(tmp_path / "a.txt", "x"), files.write_csv(tmp_path / "b.csv", pd.DataFrame({"a": [1]})),
                   files.save_torch(tmp_path / "c.pt", {"a": 1})]
    finally:
        os.umask(old)
    assert [oct(p.stat().st_mode & 0o777) for p in written] == [oct(mode)] * 3


def test_a_lock_file_is_not_followed_through_a_symlink(tmp_path):
    run = make_run(tmp_path / "runs", "linked", epochs=1)
    target = tmp_path / "elsewhere.txt"
    target.write_text("keep me\n")
    (run / ".lock").symlink_to(target)
    with pytest.raises(UserError, match="cannot lock it"):
        claim_run_dir(run, resume=True)
    assert target.read_text() == "keep me\n"
