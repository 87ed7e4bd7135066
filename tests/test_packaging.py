"""The wheel: what it declares and holds, and that it works installed outside the source tree.

The end-to-end test builds the wheel offline, installs it into a fresh virtual environment that
sees this environment's third-party packages (torch, streamlit...) but not its editable finder for
dermlow, and from a temporary directory trains a tiny model on demo data and serves the app.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest

from dermlow import resources

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
WHEEL_SOURCES = ("pyproject.toml", "README.md", "dermlow", "app", "configs")


def _source_packages() -> set[str]:
    """Import names of every package folder in the checkout, the mapped app/ and configs/ included."""
    names = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "dermlow").rglob("__init__.py")}
    for package, folder in PYPROJECT["package-dir"].items():
        names |= {".".join((package, *d.relative_to(REPO / folder).parts)) for d in (REPO / folder).rglob("*")
                  if d.is_dir() and d.name != "__pycache__" and any(d.glob("*.yaml"))}
        names.add(package)
    return names


def test_every_package_in_the_checkout_is_declared():
    assert set(PYPROJECT["packages"]) == _source_packages()
    for package, folder in PYPROJECT["package-dir"].items():
        assert (REPO / folder / "__init__.py").is_file(), f"{folder}/ needs an __init__.py to import as {package}"


def test_shipped_files_resolve_to_this_checkout():
    """Under an editable install the mapped packages are the checkout's own app/ and configs/."""
    assert resources.config_dir() == REPO / "configs"
    assert resources.app_script() == REPO / "app" / "streamlit_app.py"
    assert (resources.config_dir() / "bench" / "lenet5-digits.yaml").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list, cwd: Path, env: dict, timeout: float = 120) -> str:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


def _build_wheel(tmp: Path, env: dict) -> Path:
    """The wheel of a copy of the sources (so no build/ or egg-info lands in the checkout)."""
    src = tmp / "src"
    for name in WHEEL_SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy2(path, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", tmp / "dist", src], tmp, env)
    (wheel,) = (tmp / "dist").glob("dermlow-*.whl")
    return wheel


def _fresh_env(tmp: Path, env: dict) -> Path:
    """A venv that sees this interpreter's site-packages folders through a .pth file. The .pth files of
    a folder added that way are not run, so dermlow's editable finder of this environment stays out."""
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp, env)
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env).strip())
    ours = dict.fromkeys(p for p in sys.path if Path(p).name in ("site-packages", "dist-packages"))
    (site / "_dermlow_test_base.pth").write_text("\n".join(ours) + "\n")
    return python


def _serve_until_healthy(dermlow: Path, run_dir: Path, cwd: Path, env: dict, timeout: float = 60) -> None:
    """Start `dermlow app` in its own process group and wait for its health answer; then stop the group."""
    port = _free_port()
    proc = subprocess.Popen([str(dermlow), "app", str(run_dir), "--port", str(port)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, f"dermlow app exited {proc.returncode}: {proc.stdout.read()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    assert r.status == 200 and r.read() == b"ok"
                    return
            except OSError:
                assert time.monotonic() < deadline, f"no answer from dermlow app on port {port} in {timeout} s"
                time.sleep(0.3)
    finally:  # Ctrl+C, as in a terminal: the whole group (dermlow and streamlit) gets SIGINT
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=15)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is still there
            proc.wait()


@pytest.mark.slow
def test_installed_wheel_trains_and_serves_from_any_directory(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env |= {"NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none", "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    wheel = _build_wheel(tmp_path, env)
    listed = set(zipfile.ZipFile(wheel).namelist())
    for folder, package in (("app", "dermlow/_app"), ("configs", "dermlow/_configs")):
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".yaml"):
                assert f"{package}/{path.relative_to(REPO / folder).as_posix()}" in listed

    python = _fresh_env(tmp_path, env)
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], tmp_path, env)
    work = tmp_path / "elsewhere"
    work.mkdir()
    located = _run([python, "-c", "import dermlow, dermlow.resources as r; "
                    "print(dermlow.__file__, r.config_dir(), r.app_script(), sep='\\n')"], work, env)
    for path in located.split():
        assert Path(path).is_relative_to(tmp_path / "venv"), located  # the installed copy, not the checkout

    dermlow = python.parent / "dermlow"
    _run([dermlow, "data", "demo", "--out", "demo", "--year", "2018", "--n-images", "56"], work, env)
    _run([dermlow, "train", "--year", "2018", "--data-dir", "demo", "--model", "mobilenetv3_small_050",
          "--epochs", "1", "--batch-size", "16", "--workers", "0", "--device", "cpu", "--out", "runs",
          "--name", "wheel", "--set", "model.pretrained=false", "--set", "data.image_size=40",
          "--set", "data.crop_size=32", "--set", "data.cache_dir=null"], work, env)
    run_dir = work / "runs" / "wheel"
    assert (run_dir / "done").is_file() and (run_dir / "sample_weights.parquet").is_file()
    _serve_until_healthy(dermlow, run_dir, work, env)
    # the health answer does not run the script: render it once headless, from the installed copy
    _run([python, "-c", APP_RENDERS, run_dir], work, env)


APP_RENDERS = """
import sys
from streamlit.testing.v1 import AppTest
from dermlow.resources import app_script
sys.argv = ["streamlit_app.py", "--runs", sys.argv[1]]
at = AppTest.from_file(str(app_script()), default_timeout=60).run()
assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
at = at.sidebar.radio(key="view").set_value("Per-class").run()
assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
print(at.sidebar.caption[-1].value)
"""
