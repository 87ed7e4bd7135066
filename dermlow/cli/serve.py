"""`dermlow app`: serve the Streamlit review app (app/streamlit_app.py, shipped as dermlow._app) on a run folder."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path

from dermlow.errors import UserError
from dermlow.resources import app_script
from dermlow.rundir.reader import find_runs

log = logging.getLogger(__name__)

RUNS_ENV = "DERMLOW_RUNS"
"""The app reads the runs folder from `--runs PATH` after `--`, else from this variable."""


def streamlit_command(path: str | Path, *, host: str = "127.0.0.1", port: int = 8501,
                      open_browser: bool = False, review_db: str | Path | None = None) -> list[str]:
    """The `streamlit run` command line that serves the app on `path` (a run or a folder of runs);
    `review_db`: one review database for every run instead of each run's RUN/review.sqlite."""
    shared = ["--review-db", str(Path(review_db).resolve())] if review_db else []
    return [
        sys.executable, "-m", "streamlit", "run", str(app_script()),
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
    if not app_script().is_file():
        raise UserError(f"the app script {app_script()} is missing: reinstall dermlow (pip install .).")
    if not 0 < port < 65536:
        raise UserError(f"--port must be between 1 and 65535, got {port}.")
    log.info("serving the dermlow review app at http://%s:%d (Ctrl+C stops it)", host, port)
    proc = subprocess.Popen(streamlit_command(path, host=host, port=port, open_browser=open_browser,
                                              review_db=review_db))
    return wait_forwarding_signals(proc)


def wait_forwarding_signals(proc: subprocess.Popen, *, grace: float = 10.0) -> int:
    """Wait for `proc`, passing SIGTERM and SIGINT on to it, so stopping `dermlow app` (Ctrl+C, kill,
    a service manager) stops the server too; after `grace` seconds a child that ignores them is
    killed. Returns the child's exit code, or 128 + the signal number when stopped by a signal."""
    received: list[int] = []

    def forward(signum: int, _frame) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)
        if not received:  # the first signal ends the plain wait; later ones are only passed on
            received.append(signum)
            raise _Stop(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    except _Stop:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return 128 + received[0]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Stop(Exception):
    """Raised by the signal handler to leave the first wait."""
