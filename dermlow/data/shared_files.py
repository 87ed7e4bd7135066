"""Files that leave dermlow for people and other programs: CSV cells that spreadsheets cannot run,
and permissions that follow the user's umask.

A spreadsheet runs a cell that starts with = + - @ (or tab / CR) as a formula (OWASP: CSV
injection), so such text is refused where dermlow reads ids and labels, and escaped with a
leading single quote wherever dermlow writes a CSV (`rundir.files.write_csv`); dermlow's own
readers undo the escape, so ids and notes round-trip exactly.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd


def current_umask() -> int:
    """The process's umask (from /proc on Linux, which reads it without changing it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting, restored at once
    os.umask(mask)
    return mask


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a cell as a formula (OWASP CSV injection)."""
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def formula_like(text: object) -> bool:
    """True for text a spreadsheet would run as a formula: it starts with = + - @ tab or CR and
    is not a plain number (-1 and +2.5 are numbers to a spreadsheet, not formulas)."""
    return isinstance(text, str) and text.startswith(FORMULA_START) and not _NUMBER.fullmatch(text)


def escape_cell(text: object) -> object:
    """OWASP's rule: a formula-like text gets a leading single quote, so spreadsheets show it as
    text. Text that already starts with a quote gets one more, which makes `unescape_cell` exact."""
    if isinstance(text, str) and (formula_like(text) or text.startswith("'")):
        return "'" + text
    return text


def unescape_cell(text: object) -> object:
    """The inverse of `escape_cell` (dermlow's own readers see the original text again)."""
    if isinstance(text, str) and text.startswith("'") and (formula_like(text[1:]) or text[1:].startswith("'")):
        return text[1:]
    return text


def _map_text(frame: pd.DataFrame, cell: Callable[[object], object]) -> pd.DataFrame:
    """A copy of `frame` with `cell` applied to its column names and to the cells of its text columns."""
    out = frame.copy()
    out.columns = [cell(c) for c in frame.columns]
    for i, dtype in enumerate(frame.dtypes):
        if pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
            out.iloc[:, i] = frame.iloc[:, i].map(cell)
    return out


def escape_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` whose text cells and column names are escaped with `escape_cell`."""
    return _map_text(frame, escape_cell)


def unescape_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` as read from a CSV that `write_csv` wrote, text cells and column names unescaped."""
    return _map_text(frame, unescape_cell)
