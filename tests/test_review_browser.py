"""The review flow in headless Chromium at 1280x720: 20 cases in at most 45 clicks, every decision
control in view without scrolling, the decisions stored, blind review, and the place kept on reload.

Prints the clicks and the time from a click to the next case (read them with `pytest -s`); the
screenshots go to $DERMLOW_SCREENSHOTS when set (docs/screenshots), else to the test's tmp_path.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pytest
import test_app_browser
from test_app_browser import open_page

browser_dependencies = test_app_browser.browser_dependencies  # Chromium and Playwright, or skip
served = test_app_browser.served  # the app over make_run(..., "demo", flip_frac=0.1)

pytestmark = pytest.mark.browser

VIEWPORT = {"width": 1280, "height": 720}
CASES = 20
MAX_CLICKS = 45
EXCLUDE_AT, SKIP_AT = 4, 9  # 0-based places in the queue
SHORTCUT_CONFIRM = "1"  # review_decisions.SHORTCUTS
HEADER_PX, ROW_PX = 35, 44  # the queue table's header and row heights (review_queue: row_height=44)


class Counter:
    """Clicks and keypresses that submit something, as a reviewer would count them."""

    def __init__(self):
        self.clicks = 0
        self.keys = 0
        self.waits: list[float] = []

    def click(self, locator) -> None:
        locator.click()
        self.clicks += 1

    def press(self, locator, key: str) -> None:
        locator.press(key)
        self.keys += 1


def idle(page) -> None:
    """Wait until the app has finished its rerun: Streamlit's running indicator is gone and no element
    of the previous run is left (stale copies of moved widgets would match twice)."""
    page.wait_for_function("""() => !document.querySelector('[data-testid="stStatusWidget"]')
                              && !document.querySelector('[data-stale="true"]')""", timeout=60_000)


def wait_case(page, n: int) -> None:
    page.get_by_text(f"Case {n} of", exact=False).first.wait_for(timeout=60_000)
    idle(page)


def in_view(page, locator) -> bool:
    box = locator.bounding_box()
    return box is not None and box["y"] >= 0 and box["y"] + box["height"] <= VIEWPORT["height"] \
        and box["x"] + box["width"] <= VIEWPORT["width"]


def button(page, text: str):
    """The app's button whose label holds `text` (not the help icons beside widgets)."""
    return page.locator('button[data-testid^="stBaseButton"]:visible').filter(has_text=text)


def picker(page, name: str):
    """The case's own picker labelled `name` (the first on the page: the lesion-wide decision's
    pickers, below the case, have the same labels)."""
    return page.locator('[data-testid="stSelectbox"]:visible').filter(has_text=name).first


def plan(run_dir: Path) -> list[tuple[str, str, str]]:
    """(image id, decision, label) for the first CASES cases of the queue, as the app orders them:
    a deliberate flip relabelled to its original class, any other confirmed, one exclude, one skip."""
    from dermlow.rundir import flag_scores, reader

    run = reader.load_run(run_dir)
    scores = flag_scores.flag_scores(reader.weight_summary(run_dir), weight_from=flag_scores.weight_source(run.config))
    out = []
    for i, r in enumerate(scores.sort_values("rank").head(CASES).itertuples()):
        if i == EXCLUDE_AT:
            out.append((r.image_id, "exclude", ""))
        elif i == SKIP_AT:
            out.append((r.image_id, "skip", ""))
        elif r.flipped:
            out.append((r.image_id, "relabel", run.codes[int(r.original_label)]))
        else:
            out.append((r.image_id, "confirm", ""))
    return out


def test_twenty_cases_in_at_most_45_clicks(served, tmp_path):
    from playwright import sync_api

    from dermlow.rundir import reader, review_store

    run_dir = tmp_path / "runs" / "demo"
    run = reader.load_run(run_dir)
    cases = plan(run_dir)
    shots = Path(os.environ.get("DERMLOW_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    count = Counter()

    def history():
        return review_store.read_history(run_dir, review_store.dataset_key(run.config))
    with open_page(served, VIEWPORT) as page:
        count.click(page.get_by_text("Review", exact=True))
        name = page.get_by_role("textbox", name="Your name")
        name.fill("Dr Ada")
        count.press(name, "Enter")
        confirm = button(page, "Confirm & next")
        page.wait_for_function("""() => [...document.querySelectorAll('button')].some(
            b => b.innerText.includes('Confirm & next') && !b.disabled)""", timeout=60_000)
        idle(page)
        controls = {"confirm": confirm, "relabel": button(page, "Relabel"),
                    "exclude": button(page, "Exclude & next"),
                    "unsure": button(page, "Unsure & next"),
                    "skip": button(page, "Skip"), "back": button(page, "Back"),
                    "relabel picker": picker(page, "Relabel to"), "reason picker": picker(page, "Exclusion reason")}
        outside = [k for k, loc in controls.items() if not in_view(page, loc)]
        page.screenshot(path=str(shots / "review.png"))
        keyed, typed_saved = None, None
        for i, (_, decision, code) in enumerate(cases):
            suggested = button(page, f"Relabel to {code} & next")
            start = time.monotonic()
            if decision == "relabel" and suggested.count() == 0:  # the suggestion is not the original
                count.click(picker(page, "Relabel to"))
                count.click(page.get_by_role("option").filter(has_text=f"{code} —"))
                idle(page)
                start = time.monotonic()
                count.click(suggested)
            elif decision == "relabel":
                count.click(suggested)
            elif decision == "confirm" and not keyed:  # once by keyboard: the shortcut, "1"
                note = page.get_by_role("textbox", name="Note (optional)").first  # the case's (the lesion-wide one is below)
                before = len(history())
                note.fill("1")  # typing the key into a text box decides nothing
                page.wait_for_timeout(500)
                typed_saved = len(history()) - before
                note.fill("")
                note.evaluate("e => e.blur()")  # (a check, not part of the flow: no click counted)
                start = time.monotonic()
                page.keyboard.press(SHORTCUT_CONFIRM)
                count.keys += 1
                keyed = i
            else:
                count.click(controls[decision])
            wait_case(page, i + 2)
            count.waits.append(time.monotonic() - start)
        clicks_for_cases = count.clicks - 1  # less the click on "Review"
        # blind review: a fresh look at the next case, remembered for the name
        count.click(page.get_by_text("Blind review", exact=True))
        page.get_by_text("Blind review: the model's view of this case is hidden").wait_for(timeout=60_000)
        idle(page)
        blind_relabel_disabled = button(page, "Relabel & next").is_disabled()
        blind_picker_empty = "choose a class" in picker(page, "Relabel to").evaluate(
            "e => e.innerText + ' ' + [...e.querySelectorAll('input')].map(i => i.placeholder).join(' ')")
        page.screenshot(path=str(shots / "review-blind.png"))
        # a click on a row of the queue table opens its case (case 2: decided, so nothing is hidden)
        table = page.locator('[data-testid="stDataFrame"]:visible').first
        table.scroll_into_view_if_needed()
        box = table.bounding_box()
        page.mouse.click(box["x"] + 12, box["y"] + HEADER_PX + ROW_PX * 1 + ROW_PX / 2)
        wait_case(page, 2)
        revealed = page.get_by_text("Suspicion rank:").count()
        # a reload keeps the place, the name and blind review
        page.reload(wait_until="domcontentloaded")
        wait_case(page, 2)  # no click on "Review": the address (?view=) brings the reload back to it
        name_box = page.get_by_role("textbox", name="Your name")
        sync_api.expect(name_box).to_have_value("Dr Ada", timeout=20_000)  # may settle after the case text
        kept_name = name_box.input_value()
        kept_blind = page.get_by_text("Blind review: the model's view of this case is hidden").count()
        kept_blind_box = page.get_by_role("checkbox", name="Blind review").is_checked()
    waits = sorted(count.waits)
    print(f"\nreview flow at 1280x720: {CASES} cases, {clicks_for_cases} clicks + {count.keys} keypresses (name, one shortcut) "
          f"+ 1 click to open Review; click -> next case: median {statistics.median(waits):.2f} s, "
          f"max {waits[-1]:.2f} s")
    assert outside == [], f"not visible without scrolling at 1280x720: {outside}"
    assert clicks_for_cases + count.keys <= MAX_CLICKS
    got = history()
    want = [(i, d, c) for i, d, c in cases if d != "skip"]
    assert list(zip(got["image_id"], got["decision"], got["label"], strict=True)) == want
    assert (got["reviewer"] == "Dr Ada").all() and got.loc[got["decision"] == "exclude", "reason"].tolist() == [
        "image quality"]
    assert keyed is not None and typed_saved == 0  # one case decided by the key; the typed "1" saved nothing
    assert blind_relabel_disabled and blind_picker_empty and revealed >= 1
    assert kept_name == "Dr Ada" and kept_blind == 0 and kept_blind_box
    assert (shots / "review.png").stat().st_size > 10_000 and (shots / "review-blind.png").stat().st_size > 10_000
