"""One writer per run folder: an atomic claim of a new folder and an exclusive lock held for the run.

A new run creates its folder with `os.mkdir` (which fails if the folder exists), and every run,
`--resume` included, holds `fcntl.flock(LOCK_EX)` on `RUN/.lock` until it ends; the file holds
the pid of the holder so the refusal can name it. The kernel drops a flock when its process
dies, however it dies, so a lock left by a killed run is free: the next run takes it over and
says whose it was. (flock is advisory and local: it does not protect a folder written from two
machines over a network file system.)
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from pathlib import Path
from types import TracebackType

from dermlow.errors import UserError
from dermlow.rundir import files

log = logging.getLogger(__name__)

LOCK = ".lock"


class RunClaim:
    """The exclusive right to write one run folder; release it (or use it as a context manager)."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        """Give up the lock (the lock file stays; a released or stale one is free to take)."""
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> RunClaim:
        return self

    def __exit__(self, kind: type | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def claim_run_dir(path: str | Path, *, resume: bool) -> RunClaim:
    """Claim run folder `path` for writing: a new one (`resume=False`) or an existing run.

    A new run needs a folder that does not exist yet (or one left by a start that was killed
    before it wrote config.yaml, which it writes last); `--resume` needs a run folder. Either way a folder held
    by another live process is a UserError naming the folder and that process.
    """
    path = Path(path)
    if resume:
        if not files.is_run_dir(path):
            raise UserError(f"--resume {path}: not a dermlow run folder (no config.yaml and manifest.csv).")
        return _lock(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
        return _lock(path)
    except FileExistsError:
        pass
    if not path.is_dir():
        raise UserError(f"{path} exists and is not a folder: pick another run name (--name NAME).")
    claim = _lock(path)
    if files.is_run_dir(path):
        claim.release()
        raise UserError(f"{path} already holds a run. Continue it with --resume {path}, "
                        f"or pick another name with --name NAME.")
    start_files = {LOCK, files.MANIFEST, files.CLASSES, files.SKIPPED}  # a start killed before config.yaml
    leftovers = [p.name for p in path.iterdir() if p.name not in start_files and not p.match(files.TMP_GLOB)]
    if leftovers:
        claim.release()
        raise UserError(f"{path} exists and holds files that are not a run ({', '.join(sorted(leftovers)[:3])}); "
                        f"pick another name with --name NAME, or move that folder away.")
    return claim


def _lock(folder: Path) -> RunClaim:
    """Take RUN/.lock exclusively (without waiting) and write our pid into it."""
    file = folder / LOCK
    try:  # never through a symlink: the lock file is written
        fd = os.open(file, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as err:
        raise UserError(f"{file}: cannot lock it ({err.strerror}); remove it if it is not a plain file.") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        who = f"process {holder}" if holder else "another process"
        raise UserError(f"{folder} is in use by {who} (it holds {file}); two runs must not write one folder. "
                        f"Wait for it to finish, stop it, or use another --name.") from None
    except OSError as err:
        os.close(fd)
        raise UserError(f"{file}: cannot lock it ({err}); put the runs folder on a local disk.") from None
    previous = _read_pid(fd)
    if previous and previous != os.getpid():
        state = "no longer running" if not _alive(previous) else "no longer holding it"
        log.warning("%s: taking over the lock left by process %d (%s; a run that was stopped or killed)",
                    folder, previous, state)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    os.fsync(fd)
    return RunClaim(folder, fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _holder(fd: int, wait: float = 1.0) -> int | None:
    """The pid in a held lock file (its holder may still be writing it: wait a moment)."""
    deadline = time.monotonic() + wait
    while (pid := _read_pid(fd)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
