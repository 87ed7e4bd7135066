"""The one exception type for mistakes a user can fix (bad files, bad flags, bad configs).

The CLI prints such an error as one line and exits non-zero, without a traceback; any other
exception is a bug in dermlow and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input: its message says what is wrong and what to do."""

    exit_code = 2


ROWS_NOTE = "rows are counted as in a spreadsheet: the header is row 1"


def format_rows(rows: list[int], limit: int = 20) -> str:
    """'rows 3, 7, 9' for error messages: the first `limit` row numbers and a count of the rest."""
    rows = sorted(rows)
    shown = ", ".join(str(r) for r in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    word = "row" if len(rows) == 1 else "rows"
    return f"{word} {shown}{more} ({len(rows)} in all)"


class TrainingDiverged(UserError):
    """Training produced a non-finite loss or model output: the settings, not the input, must change.

    Exits with code 3 (bad input exits with 2), so scripts and grids can tell the two apart.
    """

    exit_code = 3
