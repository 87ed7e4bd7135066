"""The served app in headless Chromium: the case view with its Grad-CAM map, the Per-class view with
its reliability diagram (set-up as in tests/test_app_browser.py)."""

from __future__ import annotations

import pytest
from evidence_factory import add_best_checkpoint
from run_factory import make_run
from test_app_browser import _serve, browser_dependencies, open_page  # noqa: F401 (an autouse fixture)

from dermlow.rundir.calibrated import calibrate_run

pytestmark = pytest.mark.browser


@pytest.fixture
def served(tmp_path):
    """The app served over a factory run with a best.pt and a fitted temperature."""
    run_dir = make_run(tmp_path / "runs", "demo", epochs=5, image_size=96)
    add_best_checkpoint(run_dir)
    calibrate_run(run_dir)
    yield from _serve(run_dir)


def test_case_saliency_and_reliability_diagram_in_chromium(served, tmp_path):
    with open_page(served, {"width": 1500, "height": 1100}) as page:
        page.get_by_text("Case", exact=True).click(timeout=60_000)
        page.get_by_text("Grad-CAM of", exact=False).wait_for(timeout=90_000)
        images = page.locator('[data-testid="stMain"] [data-testid="stImage"] img')
        images.nth(1).wait_for(timeout=30_000)
        page.wait_for_function(
            """() => [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stImage"] img')]
                   .slice(0, 2).every(img => img.complete && img.naturalWidth > 0)""", timeout=30_000)
        saliency_width = images.nth(1).evaluate("img => img.naturalWidth")
        images.nth(1).screenshot(path=str(tmp_path / "saliency.png"))

        page.get_by_text("Per-class", exact=True).click(timeout=30_000)
        page.get_by_text("Calibration (reliability diagram)").wait_for(timeout=60_000)
        page.get_by_text("temperature-scaled", exact=False).first.wait_for(timeout=30_000)
        charts = page.locator('[data-testid="stMain"] [data-testid="stVegaLiteChart"]')
        charts.nth(2).wait_for(timeout=30_000)  # confusion, ROC, reliability
        page.wait_for_function(
            """() => [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stVegaLiteChart"]')]
                   .length >= 3 && [...document.querySelectorAll(
                   '[data-testid="stMain"] [data-testid="stVegaLiteChart"] canvas, '
                   + '[data-testid="stMain"] [data-testid="stVegaLiteChart"] svg')].length >= 3""",
            timeout=30_000)
        charts.nth(2).scroll_into_view_if_needed()
        charts.nth(2).screenshot(path=str(tmp_path / "reliability.png"))
    assert saliency_width >= 256  # the overlay (enlarged network input), not a placeholder
    assert (tmp_path / "saliency.png").stat().st_size > 10_000
    assert (tmp_path / "reliability.png").stat().st_size > 5_000
