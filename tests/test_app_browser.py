"""The served app in a real browser: headless Chromium (Debian package) driven by Playwright."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import require
from run_factory import make_hostile_run, make_run

from dermlow.cli.serve import streamlit_command

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.browser


@pytest.fixture(autouse=True)
def browser_dependencies():
    """Chromium and Playwright, checked before the app is served (skip, or fail under CI=true)."""
    require(CHROMIUM, "the browser test needs Chromium (Debian package `chromium`: `make chromium`)")
    require("playwright.sync_api", "the browser test needs Playwright (a dev dependency: pip install -e '.[dev]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"the app at {url} did not come up in {timeout} s")


@pytest.fixture
def served(tmp_path):
    """The app served on 127.0.0.1 (a free port) over a factory run, as `dermlow app` runs it."""
    yield from _serve(make_run(tmp_path / "runs", "demo", epochs=5, flip_frac=0.1, image_size=96))


@contextlib.contextmanager
def open_page(url: str, viewport: dict[str, int]) -> Iterator:
    """A page of headless Chromium at `viewport`, opened on `url`; the browser is closed afterwards."""
    from playwright import sync_api

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page(viewport=viewport)
            page.goto(url, wait_until="domcontentloaded")
            yield page
        finally:
            browser.close()


def _serve(run_dir: Path):
    port = _free_port()
    env = {**os.environ, "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none"}
    proc = subprocess.Popen(streamlit_command(run_dir, port=port), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_gallery_images_load_in_chromium(served, tmp_path):
    with open_page(served, {"width": 1500, "height": 1100}) as page:
        page.get_by_text("Lesion galleries", exact=True).click(timeout=60_000)
        page.get_by_text("12 highest-weighted images").wait_for(timeout=60_000)
        images = page.locator('[data-testid="stMain"] [data-testid="stImage"] img')
        images.nth(23).wait_for(timeout=30_000)
        page.wait_for_function(
            """() => [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stImage"] img')]
                   .every(img => img.complete && img.naturalWidth > 0)""", timeout=30_000)
        widths = images.evaluate_all("imgs => imgs.map(img => img.naturalWidth)")
        page.screenshot(path=str(tmp_path / "galleries.png"), full_page=True)
    assert len(widths) == 24 and min(widths) > 0
    assert (tmp_path / "galleries.png").stat().st_size > 10_000


class Listener:
    """An HTTP server on 127.0.0.1 that only counts the requests it gets (a would-be leak target)."""

    def __init__(self):
        self.paths: list[str] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                state.paths.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()


def test_a_hostile_run_makes_the_page_fetch_nothing(tmp_path):
    listener = Listener()
    base = f"http://127.0.0.1:{listener.port}"
    text = f"![x]({base}/leak.png) [click]({base}/link) <img src={base}/html.png>"
    run_dir, _ = make_hostile_run(tmp_path / "runs", "hostile", text=text, image_size=48)
    for url in _serve(run_dir):
        with open_page(url, {"width": 1500, "height": 1100}) as page:
            page.get_by_text("Lesion galleries", exact=True).click(timeout=60_000)
            page.get_by_text("12 highest-weighted images").wait_for(timeout=60_000)
            page.wait_for_timeout(2000)
            shown = page.inner_text("body")
            page.get_by_text("Case", exact=True).first.click()
            page.get_by_text("Across the training passes").wait_for(timeout=60_000)
            page.wait_for_timeout(2000)
    assert listener.paths == []  # the browser made no request to the listener
    assert f"![x]({base}/leak.png) [click]({base}/link)" in shown  # the id is shown, as text


def test_a_decision_clicked_in_chromium_is_stored(served, tmp_path):
    from dermlow.rundir import flag_scores, reader, review_store

    require("playwright.sync_api", "the browser tests drive Chromium with Playwright (pip install playwright)")
    run_dir = tmp_path / "runs" / "demo"
    first = flag_scores.flag_scores(reader.weight_summary(run_dir), weight_from="weight_mean").iloc[0]["image_id"]
    with open_page(served, {"width": 1280, "height": 720}) as page:
        page.get_by_text("Review", exact=True).click(timeout=60_000)
        name = page.get_by_role("textbox", name="Your name")
        name.fill("Dr Ada")
        name.press("Enter")
        button = page.get_by_role("button", name="Confirm")
        page.wait_for_function("""() => [...document.querySelectorAll('button')].some(
            b => b.innerText.includes("Confirm") && !b.disabled)""", timeout=30_000)
        button.click()
        page.get_by_text(f"Saved: confirm for {first}").wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "review.png"))
    got = review_store.read_history(run_dir, "isic2018")
    assert list(zip(got["image_id"], got["reviewer"], got["decision"], strict=True)) == [(first, "Dr Ada", "confirm")]
