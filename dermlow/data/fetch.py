"""Download and unpack the official ISIC 2017 / 2018 challenge files (urllib only).

Each file is downloaded to `<name>.part` and renamed when its size matches the server's
Content-Length, so an interrupted download resumes with an HTTP Range request, on the next try
or the next run. Files already complete are skipped. Zips are kept in `archives/` and unpacked
into the output folder (the official layout that `dermlow.data.isic` reads) by `data.unpack`,
which validates every member before writing any; a `<zip>.unpacked` marker makes re-runs skip them.
"""

from __future__ import annotations

import http.client
import logging
import os
import ssl
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from tqdm import tqdm

from dermlow.data.unpack import MAX_RATIO, safe_unpack
from dermlow.errors import UserError

__all__ = ["FILES", "download", "fetch", "remote_size", "safe_unpack"]

log = logging.getLogger(__name__)

BASE_URL = "https://isic-challenge-data.s3.amazonaws.com/"
FILES = {
    2018: ("2018/ISIC2018_Task3_Training_Input.zip", "2018/ISIC2018_Task3_Training_GroundTruth.zip",
           "2018/ISIC2018_Task3_Training_LesionGroupings.csv", "2018/ISIC2018_Task3_Validation_Input.zip",
           "2018/ISIC2018_Task3_Validation_GroundTruth.zip", "2018/ISIC2018_Task3_Test_Input.zip",
           "2018/ISIC2018_Task3_Test_GroundTruth.zip"),
    2017: ("2017/ISIC-2017_Training_Data.zip", "2017/ISIC-2017_Training_Part3_GroundTruth.csv",
           "2017/ISIC-2017_Validation_Data.zip", "2017/ISIC-2017_Validation_Part3_GroundTruth.csv",
           "2017/ISIC-2017_Test_v2_Data.zip", "2017/ISIC-2017_Test_v2_Part3_GroundTruth.csv"),
}
CHUNK = 1 << 20
TRANSIENT = (URLError, http.client.HTTPException, ConnectionError, TimeoutError, ssl.SSLError)


def _network_error(url: str, error: Exception) -> UserError:
    if isinstance(error, HTTPError):
        why = f"the server answered HTTP {error.code} {error.reason}"
    else:
        why = f"the connection failed ({getattr(error, 'reason', error)})"
    return UserError(f"{url}: {why}. Check your internet connection or proxy and run the same command again "
                     "(finished files are kept and partial ones resume); or download the file by hand into "
                     "the output folder.")


def remote_size(url: str, *, timeout: float = 60) -> int | None:
    """Content-Length of `url` from a HEAD request (None if the server does not say)."""
    try:
        with urlopen(Request(url, method="HEAD"), timeout=timeout) as response:
            length = response.headers.get("Content-Length")
    except TRANSIENT as e:
        raise _network_error(url, e) from e
    return int(length) if length and length.isdigit() else None


def _get(url: str, part: Path, offset: int, total: int | None, progress: bool, timeout: float) -> None:
    """Append the bytes of `url` from `offset` to `part` (or restart it if Range is ignored)."""
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with urlopen(Request(url, headers=headers), timeout=timeout) as response:
        if offset and response.status != 206:
            log.info("%s: the server ignored the Range request; downloading from the start", url)
            offset = 0
        with open(part, "ab" if offset else "wb") as out, tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=part.name[:-5], disable=not progress,
            leave=False,
        ) as bar:
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))


def download(url: str, dest: Path, *, progress: bool = True, retries: int = 3, timeout: float = 60) -> Path:
    """Download `url` to `dest` via `dest.part`, resuming it; verify the size against Content-Length."""
    if dest.exists():
        try:
            total = remote_size(url, timeout=timeout)
        except UserError:
            log.warning("%s: could not reach %s to re-check the size; keeping the file on disk", dest, url)
            return dest
        if total is None or dest.stat().st_size == total:
            log.info("%s: already complete, skipped", dest.name)
            return dest
        log.warning("%s: %d bytes on disk but the server has %d; downloading it again",
                    dest, dest.stat().st_size, total)
        dest.unlink()
    total = remote_size(url, timeout=timeout)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries + 1):
        offset = part.stat().st_size if part.exists() else 0
        if total is not None and offset > total:
            part.unlink()
            offset = 0
        if total is not None and offset == total:
            break
        if offset:
            log.info("%s: resuming at byte %d of %s", dest.name, offset, total)
        try:
            _get(url, part, offset, total, progress, timeout)
        except HTTPError as e:
            raise _network_error(url, e) from e
        except TRANSIENT as e:
            if attempt == retries:
                raise _network_error(url, e) from e
            log.warning("%s: interrupted (%s); retrying (%d of %d)", dest.name, e, attempt + 1, retries)
            continue
        if total is None or part.stat().st_size == total:
            break
        log.warning("%s: got %d of %d bytes; resuming (%d of %d)", dest.name, part.stat().st_size, total,
                    attempt + 1, retries)
    size = part.stat().st_size if part.exists() else 0
    if total is not None and size != total:
        raise UserError(f"{url}: the download stopped at {size} of {total} bytes after {retries + 1} tries. "
                        f"Run the same command again to resume from {part}.")
    if total is None:
        log.warning("%s: the server gave no size, so the download cannot be verified", url)
    os.replace(part, dest)
    return dest


def fetch(year: int, out_dir: str | Path, *, base_url: str = BASE_URL, progress: bool = True,
          max_unpack_ratio: float = MAX_RATIO) -> Path:
    """Download (resuming, size-verified) and unpack the official ISIC `year` files into out_dir
    (every archive member validated first, the unpacked size capped: data.unpack)."""
    if year not in FILES:
        raise UserError(f"no official files known for year {year}: choose one of {', '.join(map(str, FILES))}")
    out = Path(out_dir).expanduser().resolve()
    archives = out / "archives"
    archives.mkdir(parents=True, exist_ok=True)
    for remote in FILES[year]:
        name = remote.rsplit("/", 1)[-1]
        url = base_url.rstrip("/") + "/" + remote
        if not name.endswith(".zip"):
            download(url, out / name, progress=progress)
            continue
        archive = download(url, archives / name, progress=progress)
        marker = archives / f"{name}.unpacked"
        if marker.exists() and marker.stat().st_mtime >= archive.stat().st_mtime:
            log.info("%s: already unpacked, skipped", name)
            continue
        log.info("unpacking %s", name)
        written = safe_unpack(archive, out, max_ratio=max_unpack_ratio)
        marker.write_text(f"{len(written)} files\n")
    log.debug("ISIC %d files are in %s", year, out)
    return out
