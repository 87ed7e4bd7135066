"""`dermlow flag --copy-images DIR`: copy flagged images for a relabelling tool, confined both ways.

A run folder may come from elsewhere, so its manifest paths and class codes are untrusted: a
source must resolve (symlinks followed) inside the run's data folder (`data.data_dir`, or
`data.image_dir` for generic sets; never the derived image cache) and be a JPEG or PNG that
decodes; a destination is DIR/<class code as one safe path component>/<file name>, and nothing
is written through a symlink. Everything else is skipped and counted in the final message.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pandas as pd

from dermlow.data.image_check import check_image
from dermlow.data.label_files import IMAGE_EXTENSIONS
from dermlow.rundir import files, reader

log = logging.getLogger(__name__)

REASONS = {"missing": "missing", "outside": "outside the run's data folder", "not_image": "not a JPEG/PNG image",
           "destination": "destination not inside DIR"}


def source_roots(run: reader.Run) -> tuple[list[Path], list[Path]]:
    """(folders images may be copied from, folders they may not: the image cache), resolved.

    A data folder that is a filesystem root or the home folder confines nothing and is left out.
    """
    data = run.config.get("data") or {}
    too_broad = {Path("/").resolve(), Path.home().resolve()}
    roots = []
    for key in ("data_dir", "image_dir"):
        value = data.get(key)
        if isinstance(value, str) and value:
            folder = Path(value).expanduser().resolve()
            if folder in too_broad:
                log.warning("%s: data.%s is %s, which is too broad to copy images from", run.path, key, folder)
            else:
                roots.append(folder)
    cache = data.get("cache_dir")
    excluded = [Path(cache).expanduser().resolve()] if isinstance(cache, str) and cache else []
    return roots, excluded


def _source(run: reader.Run, path: str, roots: list[Path], excluded: list[Path]) -> tuple[Path | None, str]:
    """The resolved image a manifest path points to, or (None, reason it is skipped)."""
    try:
        real = run.image_path(str(path)).resolve(strict=True)
    except (OSError, RuntimeError):
        return None, "missing"
    if not any(real.is_relative_to(r) for r in roots) or any(real.is_relative_to(e) for e in excluded):
        return None, "outside"
    if not real.is_file() or real.suffix.lower() not in IMAGE_EXTENSIONS or check_image(real)[1]:
        return None, "not_image"
    return real, ""


def _copy_into(src: Path, folder: Path, name: str) -> None:
    """Copy through a temporary file and a rename, so a symlink at the target is replaced, not followed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, 1 << 20)
        os.chmod(tmp, 0o666 & ~files.current_umask())
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def copy_flagged_images(run_dir: str | Path, table: pd.DataFrame, dest: str | Path) -> int:
    """Copy each row's image (columns path, label) into dest/<label>/; returns the number copied.
    Skipped rows are counted by reason in one log line."""
    run = reader.load_run(run_dir)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    roots, excluded = source_roots(run)
    skipped: Counter[str] = Counter()
    example: dict[str, str] = {}
    copied = 0
    for row in table[["image_id", "path", "label"]].itertuples(index=False):
        src, why = _source(run, row.path, roots, excluded)
        folder = dest / files.safe_name(row.label)
        if src is not None and (folder.is_symlink() or (folder.exists() and not folder.is_dir())):
            why = "destination"
        if src is not None and not why:
            folder.mkdir(exist_ok=True)
            why = "" if folder.resolve().parent == root else "destination"
        if why:
            skipped[why] += 1
            example.setdefault(why, repr(str(row.image_id))[:60])  # repr: no terminal escapes from a file
            continue
        _copy_into(src, folder, files.safe_name(src.name))
        copied += 1
    message = f"copied {copied} image(s) into {dest}"
    if skipped:
        where = " or ".join(str(r) for r in roots) or "no usable data folder in config.yaml"
        message += (f"; skipped {sum(skipped.values())}: "
                    + ", ".join(f"{n} {REASONS[k]} (e.g. {example[k]})" for k, n in skipped.items())
                    + f"; data folder: {where}")
    (log.warning if skipped else log.info)(message)
    return copied
