"""Shared test set-up: offline, quiet, and small on 2 CPU cores; optional dependencies via `require`."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from types import ModuleType

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download weights

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


def _check_checkout_is_installed() -> None:
    """Stop at once when dermlow's code comes from this checkout but its app/ and configs/ (the
    packages dermlow._app and dermlow._configs) from elsewhere or nowhere, e.g. with PYTHONPATH set
    to a second git worktree while the environment's editable install maps another checkout."""
    import importlib.util
    from pathlib import Path

    import pytest

    import dermlow

    repo = Path(__file__).resolve().parents[1]
    if Path(dermlow.__file__).resolve().parent != repo / "dermlow":
        return  # testing an installed dermlow, not this checkout
    for package, folder in (("dermlow._app", "app"), ("dermlow._configs", "configs")):
        spec = importlib.util.find_spec(package)
        found = Path(spec.origin).resolve().parent if spec and spec.origin else None
        if found != repo / folder:
            pytest.exit(f"dermlow comes from {repo} but {package} from {found or 'nowhere'}: this checkout is not "
                        "the installed one. Run `pip install -e .` in it, or give it its own environment on top "
                        "of a shared one: python -m venv --without-pip .venv-local; put the shared "
                        "site-packages path in a .pth file in .venv-local's site-packages; then "
                        ".venv-local/bin/python -m pip install --no-deps --no-build-isolation -e . and run pytest "
                        "with .venv-local/bin/python.", returncode=4)


def pytest_sessionstart(session) -> None:
    _check_checkout_is_installed()


def in_ci() -> bool:
    """True when the environment says it is CI (CI=true, as GitHub Actions and most CI services set)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require(what: str | Path, why: str) -> ModuleType | Path:
    """The module named `what` (imported) or the file `what` (a Path), else skip the calling test.

    Under CI=true a missing dependency fails the test instead of skipping it: CI installs every
    test dependency (`make test`), so a skip there would hide a broken install. Call it inside a
    test or fixture; `why` says what the test needs it for and how to get it.
    """
    if isinstance(what, Path):
        if what.exists():
            return what
        missing = f"{what} not found"
    else:
        try:
            return importlib.import_module(what)
        except ImportError as err:
            missing = f"cannot import {what} ({err})"
    message = f"{why}: {missing}"
    if in_ci():
        pytest.fail(f"{message}; CI=true, so a missing test dependency fails instead of skipping", pytrace=False)
    pytest.skip(message)


def needs_cuda(test_id: str) -> pytest.MarkDecorator:
    """skipif for a CUDA-only test whose report line says that every CPU machine skips it and how
    to run it where there is a GPU (`test_id`: its pytest node id)."""
    return pytest.mark.skipif(not torch.cuda.is_available(), reason=(
        f"needs a CUDA GPU, so it is skipped on every CPU machine; run on a GPU machine with: "
        f"python -m pytest {test_id}"))
