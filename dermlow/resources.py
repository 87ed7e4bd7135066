"""Files that ship with dermlow: the YAML configs and the Streamlit review app.

In the repository they are the top-level folders `configs/` and `app/`. pyproject.toml maps them
to the packages `dermlow._configs` and `dermlow._app`, so a wheel carries them inside `dermlow/`
and an editable install finds them in the checkout. Code reaches them only through this module
(importlib.resources), never through paths relative to a source file.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from dermlow.errors import UserError

CONFIGS_PACKAGE = "dermlow._configs"
APP_PACKAGE = "dermlow._app"
APP_SCRIPT = "streamlit_app.py"


def package_folder(package: str) -> Path:
    """The folder on disk of one of dermlow's data packages (a UserError if it is not installed)."""
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        raise UserError(f"{package} is not installed: dermlow is imported from a source folder that was not "
                        "installed. Run `pip install .` (or `pip install -e .`) in the checkout.") from None
    if not isinstance(root, Path) or not root.is_dir():
        raise UserError(f"{package} is not a folder on disk ({root}); install dermlow unzipped (pip install).")
    return root


def config_dir() -> Path:
    """The shipped YAML configs (`configs/` of the repository): isic<year>.yaml, demo.yaml, bench/."""
    return package_folder(CONFIGS_PACKAGE)


def app_script() -> Path:
    """The review app's Streamlit script (`app/streamlit_app.py` of the repository)."""
    return package_folder(APP_PACKAGE) / APP_SCRIPT
