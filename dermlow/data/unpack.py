"""Unpacking downloaded archives (zip, tar) without trusting them.

Every member is validated before the first byte is written: its name must be a relative path
that stays inside the output folder ('..', absolute paths, drive letters and members named '.'
are refused), it must be a regular file or folder (symbolic and hard links, devices and FIFOs
are refused), and the unpacked total must stay below a cap (a multiple of the archive's own
size), so a small zip cannot fill the disk. Confinement is checked on the member's name, not by
resolving paths on disk, so an output folder whose image folder is a symlink the user made
(images kept on another disk) is fine; the archive itself can never create a link.
"""

from __future__ import annotations

import logging
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from dermlow.errors import UserError

log = logging.getLogger(__name__)

MAX_RATIO = 20
"""Default cap on unpacked bytes, as a multiple of the archive size (the official image zips
unpack to about 1x, the ground-truth zips to about 6x; a zip bomb to 1000x and more)."""
CHUNK = 1 << 20
SKIPPED_PREFIXES = ("__MACOSX",)


@dataclass(frozen=True)
class Member:
    """One archive entry, reduced to what unpacking needs."""

    name: str
    is_dir: bool
    size: int
    open: Callable[[], IO[bytes]]


def _zip_members(zf: zipfile.ZipFile) -> Iterator[Member]:
    for info in zf.infolist():
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode) if info.create_system == 3 and mode else 0  # 3: made on Unix
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise _OddMember(info.filename, "a symbolic link" if kind == stat.S_IFLNK else "a special file")
        yield Member(info.filename, info.is_dir(), info.file_size, lambda info=info: zf.open(info))


def _tar_members(tf: tarfile.TarFile) -> Iterator[Member]:
    for info in tf.getmembers():
        if not (info.isfile() or info.isdir()):
            what = "a link" if info.issym() or info.islnk() else "a device file or FIFO"
            raise _OddMember(info.name, what)
        yield Member(info.name, info.isdir(), info.size, lambda info=info: tf.extractfile(info))


class _OddMember(Exception):
    """A member that no official archive has: refused before anything is written."""

    def __init__(self, name: str, why: str):
        super().__init__(f"member {name!r} is {why}")


def member_path(name: str, is_dir: bool = False) -> PurePosixPath | None:
    """The relative path a member name stands for, None for entries to skip (macOS metadata, the
    folder '.' itself); raises _OddMember for names that would leave the output folder, and for a
    file named '.' or ''."""
    if "\x00" in name:
        raise _OddMember(name, "a name with a NUL byte")
    clean = name.replace("\\", "/")
    path = PurePosixPath(clean)
    if path.is_absolute() or clean.startswith("/") or (len(clean) > 1 and clean[1] == ":") or ".." in path.parts:
        raise _OddMember(name, "a path that would be written outside the output folder")
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        if is_dir:
            return None
        raise _OddMember(name, "a file named '.' or '', which names no file")
    if parts[0] in SKIPPED_PREFIXES:
        return None
    return PurePosixPath(*parts)


@contextmanager
def _members(archive: Path) -> Iterator[list[Member]]:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            yield list(_zip_members(zf))
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            yield list(_tar_members(tf))
    else:
        raise UserError(f"{archive}: is not a zip or tar archive. Delete it and run the same command again to "
                        "download it anew.")


def safe_unpack(archive: str | Path, out_dir: str | Path, *, max_ratio: float = MAX_RATIO,
                max_bytes: int | None = None) -> list[Path]:
    """Unpack a zip or tar archive into `out_dir` after validating every member (see the module
    docstring); returns the files written. `max_bytes` (default `max_ratio` x the archive size)
    caps the unpacked total. Any refusal is one UserError line naming the archive and member."""
    archive, out_dir = Path(archive), Path(out_dir)
    cap = max_bytes if max_bytes is not None else int(max_ratio * archive.stat().st_size) + (1 << 20)
    try:
        with _members(archive) as members:
            plan = [(m, p) for m in members if (p := member_path(m.name, m.is_dir)) is not None]
            total = sum(m.size for m, _ in plan if not m.is_dir)
            if total > cap:
                raise UserError(f"{archive}: would unpack to {total / 1e6:.1f} MB, more than the cap of "
                                f"{cap / 1e6:.1f} MB ({max_ratio:g}x its size); it is not an official archive "
                                "(a zip bomb?): delete it, or raise the cap with --max-unpack-ratio if you trust it.")
            return [target for m, p in plan if (target := _write(m, out_dir / p)) is not None]
    except _OddMember as err:
        raise UserError(f"{archive}: {err}; refusing to unpack it (nothing was written). The archive is not an "
                        "official one: delete it and download it again.") from None
    except (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError) as err:
        raise UserError(f"{archive}: is not a valid archive ({err}). Delete it and run the same command again "
                        "to download it anew.") from None


def _write(member: Member, target: Path) -> Path | None:
    """Write one validated member; problems on disk (a file where a folder should be) are one line."""
    try:
        if member.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            return None
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():  # never write through a link (the archive cannot make one; be sure)
            target.unlink()
        with member.open() as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, CHUNK)
    except OSError as err:
        raise UserError(f"cannot write {target} ({err.strerror or err}); check that the output folder is yours "
                        "and that nothing in it is in the way (a file named like a folder of the archive).") from None
    return target
