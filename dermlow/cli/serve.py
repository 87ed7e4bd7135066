"""`dermlow app`: serve the Streamlit review app (app/streamlit_app.py) on a run folder."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from dermlow.errors import UserError
from dermlow.rundir.reader import find_runs

log = logging.getLogger(__name__)

APP = Path(__file__).resolve().parents[2] / "app" / "streamlit_app.py"
RUNS_ENV = "DERMLOW_RUNS"
"""The app reads the runs folder from `--runs PATH` after `--`, else from this variable."""


def streamlit_command(path: str | Path, *, host: str = "127.0.0.1", port: int = 8501,
                      open_browser: bool = False, review_db: str | Path | None = None) -> list[str]:
    """The `streamlit run` command line that serves the app on `path` (a run or a folder of runs);
    `review_db`: one review database for every run instead of each run's RUN/review.sqlite."""
    shared = ["--review-db", str(Path(review_db).resolve())] if review_db else []
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host, "--server.port", str(port),
        "--server.headless", "false" if open_browser else "true",
        "--browser.gatherUsageStats", "false",  # no telemetry: the app must work offline
        "--client.toolbarMode", "minimal",  # no "Deploy" button for clinicians
        "--", "--runs", str(Path(path).resolve()), *shared,
    ]


def serve(path: str | Path, *, host: str = "127.0.0.1", port: int = 8501, open_browser: bool = False,
          review_db: str | Path | None = None) -> int:
    """Serve the review app on `path` until interrupted; returns streamlit's exit code.

    The path is checked first (a UserError if it holds no run), and the address is logged.
    """
    find_runs(path)
    if not APP.is_file():
        raise UserError(f"the app script {APP} is missing: run dermlow from its source checkout.")
    if not 0 < port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {port}.")
    log.info("serving the dermlow review app at http://%s:%d (Ctrl+C stops it)", host, port)
    proc = subprocess.Popen(streamlit_command(path, host=host, port=port, open_browser=open_browser,
                                              review_db=review_db))
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()
