"""Checking image files before a run: size from the header first, then a strict full decode.

Training decodes with OpenCV (libjpeg-turbo, libpng), which *warns* about corrupt JPEG data
("Corrupt JPEG data: premature end of data segment") and returns an image whose pixels are
partly wrong. The check treats every such warning as an error: JPEGs are decoded by the same
libjpeg-turbo through simplejpeg in strict mode (at 1/8 scale: every byte is still entropy-
decoded, so corruption anywhere is found), PNGs by OpenCV itself (libpng fails on bad CRCs and
truncation). Before any decoding, the pixel count is read from the header and images above
`max_pixels` are refused, so a decompression bomb costs a few bytes of reading, not gigabytes.
"""

from __future__ import annotations

import logging
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import simplejpeg

from dermlow.errors import ROWS_NOTE, UserError, format_rows

log = logging.getLogger(__name__)

MAX_IMAGE_PIXELS = 100_000_000
"""Default pixel limit (100 MP; the largest ISIC 2017 images have about 29 MP)."""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_MODES = {(0, 8): "L", (0, 16): "I;16", (2, 8): "RGB", (2, 16): "RGB;16", (4, 8): "LA", (4, 16): "LA;16",
             (6, 8): "RGBA", (6, 16): "RGBA;16"}
JPEG_MODES = {"Gray": "L", "CMYK": "CMYK", "YCCK": "CMYK"}


def image_header(data: bytes) -> tuple[str, int, int, str]:
    """(format "jpeg" | "png", width, height, Pillow-style mode) from the first bytes of an image
    file, without decoding any pixels; ValueError for anything else."""
    if data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR" and len(data) >= 26:
        width, height, depth, color = struct.unpack(">IIBB", data[16:26])
        mode = "P" if color == 3 else PNG_MODES.get((color, depth), f"L;{depth}" if color == 0 else "?")
        return "png", width, height, mode
    if data.startswith(b"\xff\xd8"):
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        return "jpeg", width, height, JPEG_MODES.get(colorspace, "RGB")
    raise ValueError(f"not a JPEG or PNG file (it starts with {data[:8]!r})")


def check_image(path: str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[str, str]:
    """(mode, problem) of one image file; problem is "" when the whole file decodes cleanly.

    Problems: "missing", "too large (...)" (checked from the header, before decoding), and
    "unreadable (...)" for files that are not JPEG/PNG, or that are truncated or corrupt.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return "", "missing"
    except OSError as e:
        return "", f"unreadable ({e.strerror})"
    try:
        kind, width, height, mode = image_header(data)
    except ValueError as e:
        return "", f"unreadable ({e})"
    if width * height > max_pixels:
        return "", (f"too large ({width}x{height} = {width * height / 1e6:.0f} MP, above the limit of "
                    f"{max_pixels / 1e6:g} MP; raise it with --max-image-pixels if the image is genuine)")
    if kind == "jpeg":
        try:
            simplejpeg.decode_jpeg(data, colorspace={"L": "GRAY", "CMYK": "CMYK"}.get(mode, "RGB"), min_factor=8,
                                   strict=True)
        except ValueError as e:
            return "", f"unreadable (corrupt or truncated JPEG data: {e})"
    elif cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) is None:
        return "", "unreadable (corrupt or truncated PNG data)"
    return mode, ""


def check_images(table: pd.DataFrame, skip: bool, *,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[pd.DataFrame, list[str]]:
    """The rows of `table` (columns path, csv, row) whose image is fine, and "path: problem" of the
    others; with `skip` False any problem is a UserError listing the images."""
    workers = min(8, 2 * (os.cpu_count() or 1))
    log.info("checking %d image files with %d threads", len(table), workers)
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda p: check_image(p, max_pixels=max_pixels), table["path"]))
    modes, problems = (pd.Series(list(col), index=table.index, dtype=str) for col in zip(*results, strict=True))
    if len(converted := modes[(modes != "RGB") & (modes != "")]):
        log.warning("%d image(s) are not 8-bit RGB (%s); they are converted when loaded: grey copied to 3 "
                    "channels, palette expanded, alpha dropped, 16-bit scaled to 8-bit", len(converted),
                    ", ".join(f"{m}: {n}" for m, n in converted.value_counts().items()))
    bad = problems != ""
    skipped = [f"{p}: {r}" for p, r in zip(table.loc[bad, "path"], problems[bad], strict=True)]
    if bad.any() and not skip:
        raise bad_images_error(table[bad], problems[bad])
    if skipped:
        log.warning("skipping %d bad image(s): %s", len(skipped), "; ".join(skipped[:5]))
    return table[~bad], skipped


def bad_images_error(bad: pd.DataFrame, problems: pd.Series) -> UserError:
    """One line per label file and kind of problem, with rows and examples."""
    lines = []
    kind = problems.map(lambda p: p.split(" (")[0])
    for (csv, what), g in bad.groupby(["csv", kind], sort=True):
        examples = "; ".join(f"{p}: {problems[i]}" for i, p in g["path"].head(3).items())
        what = {"missing": "missing on disk"}.get(what, what)
        lines.append(f"{csv}: {len(g)} image(s) {what}, {format_rows(g['row'].tolist())} ({ROWS_NOTE}); "
                     f"e.g. {examples}")
    if (kind == "too large").all():
        return UserError(lines[0] + "; or pass --skip-bad-images to leave them out." if len(lines) == 1 else
                         "\n".join(lines) + "\nOr pass --skip-bad-images to leave them out.")
    folders = sorted({str(Path(p).parent) for p in bad["path"]})
    return UserError("\n".join(lines) + f"\nLooked in {', '.join(folders)} for <id>.jpg/.jpeg/.png. Put the "
                     "(re-downloaded) images there or fix the ids, or pass skip_bad_images "
                     "(--skip-bad-images) to continue without them.")
