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
