"""The results views in headless Chromium at 1280x720: a click on a confusion-matrix cell lists
that cell's images, and two runs are compared per class with intervals, every column in view.

Screenshots go to $DERMLOW_SCREENSHOTS when set (docs/screenshots/ holds the committed ones),
else to the test's tmp_path.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from run_factory import make_run
from test_app_browser import _serve, browser_dependencies, open_page  # noqa: F401 (autouse fixture)

from dermlow.rundir import reader

pytestmark = pytest.mark.browser
VIEWPORT = {"width": 1280, "height": 720}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two runs on the same images (one seed): LOW λ 1, and another (learning rate of the simulation up) with λ 2."""
    root = tmp_path_factory.mktemp("browser_results") / "runs"
    make_run(root, "base", seed=0, epochs=5, image_size=64)
    make_run(root, "other", seed=0, epochs=5, image_size=64, sim={"learn": 5.0}, lam=2.0, images=False)
    return root


def _shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("DERMLOW_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _busy_done(page) -> None:
    """Wait until Streamlit has finished the current rerun (no running indicator)."""
    page.wait_for_function("""() => !document.querySelector('[data-testid="stStatusWidget"]')""", timeout=60_000)


def _go(page, view: str, marker: str, tries: int = 3) -> None:
    """Open a view from the sidebar and wait for `marker` text; the click is repeated when a rerun
    still under way swallowed it (seen under heavy load)."""
    for attempt in range(tries):
        page.get_by_text(view, exact=True).first.click(timeout=60_000)
        try:
            page.get_by_text(marker).first.wait_for(timeout=20_000)
            return
        except Exception:  # playwright's TimeoutError
            if attempt == tries - 1:
                raise


def test_a_confusion_cell_click_lists_its_images(two_runs, tmp_path):

    run_dir = two_runs / "base"
    run = reader.load_run(run_dir)
    pred = reader.load_predictions(run_dir, "test")
    y, top = pred["label"].to_numpy(), pred[run.codes].to_numpy().argmax(1)
    cm = np.zeros((len(run.codes),) * 2, dtype=int)
    np.add.at(cm, (y, top), 1)
    off = cm - np.diag(np.diag(cm))
    g, p = np.unravel_index(off.argmax(), off.shape)  # the commonest confusion
    want = set(pred["image_id"][(y == g) & (top == p)])
    shots = _shots(tmp_path)
    for url in _serve(two_runs):
        with open_page(url, VIEWPORT) as page:
            _go(page, "Per-class", "Rows: given label")
            chart = page.locator('[data-testid="stMain"] [data-testid="stVegaLiteChart"]').first
            cells = chart.locator(".mark-rect path")
            cells.nth(len(run.codes) ** 2 - 1).wait_for(timeout=30_000)
            chart.scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "confusion_1280x720.png"))
            page.get_by_text("Zoom to the top-left corner").click()
            _busy_done(page)
            page.wait_for_timeout(500)
            roc = page.locator('[data-testid="stMain"] [data-testid="stVegaLiteChart"]').nth(1)
            roc.screenshot(path=str(shots / "roc_zoom.png"))
            started = time.monotonic()
            counts = chart.locator(".mark-text text")  # the number drawn on the cell: where one clicks
            counts.nth(int(g) * len(run.codes) + int(p)).click()
            heading = page.get_by_text(f" of {len(want)} — given {run.class_label(int(g))}", exact=False)
            heading.first.wait_for(timeout=60_000)
            seconds = time.monotonic() - started
            for image_id in sorted(want):
                page.get_by_text(image_id, exact=True).first.wait_for(timeout=30_000)
            _busy_done(page)
            text = page.inner_text('[data-testid="stMain"]')
            page.screenshot(path=str(shots / "cell_images_1280x720.png"))
            # back, and a click on the square of the first diagonal cell (off its number)
            _go(page, "Per-class", "Rows: given label")
            _busy_done(page)
            cells.first.click(position={"x": 3, "y": 3})
            page.get_by_text(f" of {cm[0, 0]} — given {run.class_label(0)}", exact=False).first.wait_for(
                timeout=60_000)
            _busy_done(page)
            _go(page, "Weights over training", "Dashed grey line")
            _busy_done(page)
            page.wait_for_timeout(500)
            page.screenshot(path=str(shots / "weights_1280x720.png"))
    shown = {i for i in want if i in text}
    assert shown == want, (sorted(want - shown), len(want))
    assert f"predicted {run.class_label(int(p))}" in text and "Test" in text
    print(f"cell click -> its {len(want)} images listed in {seconds:.2f} s")


def test_two_runs_compared_per_class_with_intervals_in_view(two_runs, tmp_path):

    shots = _shots(tmp_path)
    for url in _serve(two_runs):
        with open_page(url, VIEWPORT) as page:
            page.get_by_text("Every run").click(timeout=60_000)  # the Runs view opens first
            page.wait_for_function("""() => document.querySelectorAll(
                '[data-testid="stMain"] [data-testid="stDataFrame"] [role="columnheader"]').length >= 12""",
                                   timeout=30_000)
            every = page.evaluate("""() => [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stDataFrame"]')]
                .slice(-1).flatMap(g => [...g.querySelectorAll('[role="columnheader"]')].map(
                    h => ({text: h.innerText, right: h.getBoundingClientRect().right})))""")
            page.screenshot(path=str(shots / "runs_1280x720.png"))
            page.get_by_text("Compare classes", exact=True).click(timeout=60_000)
            started = time.monotonic()
            grid = page.locator('[data-testid="stMain"] [data-testid="stDataFrame"]').first
            grid.wait_for(timeout=90_000)
            page.get_by_text("Seeds per column", exact=False).wait_for(timeout=90_000)
            seconds = time.monotonic() - started
            _busy_done(page)
            grid.scroll_into_view_if_needed()
            page.wait_for_function("""() => document.querySelectorAll(
                '[data-testid="stMain"] [data-testid="stDataFrame"] [role="columnheader"]').length >= 6""",
                                   timeout=30_000)
            headers = page.evaluate("""() => {
                const g = document.querySelector('[data-testid="stMain"] [data-testid="stDataFrame"]');
                const box = g.getBoundingClientRect();
                return [...g.querySelectorAll('[role="columnheader"]')].map(h => {
                    const r = h.getBoundingClientRect();
                    return {text: h.innerText, left: r.left, right: r.right, gridRight: box.right};
                });
            }""")
            page.screenshot(path=str(shots / "compare_classes_1280x720.png"))
    first = {h["text"]: h["right"] for h in every}
    assert all(first[m] <= VIEWPORT["width"] for m in ("run", "BAcc", "Acc", "mAUC", "mF1")), every  # metrics in view
    names = [h["text"] for h in headers]
    assert any(n.startswith("base (%") for n in names) and any(n.startswith("other − base") for n in names), names
    inside = [h for h in headers if h["text"].strip()]
    assert all(h["right"] <= min(h["gridRight"], VIEWPORT["width"]) + 1 for h in inside), headers  # no hidden column
    print(f"compare view answered in {seconds:.2f} s")
