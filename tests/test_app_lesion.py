"""Lesion-level evidence in the Case view: conflicting siblings, lesion-wide decisions, dx_type, captions, non-LOW runs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from dermlow._app import review_lesion as lesion
from dermlow._app.glossary import CLASS_COLOURS, dx_type_text, label, title
from dermlow._app.review_text import md
from run_factory import make_run
from streamlit.testing.v1 import AppTest

from dermlow.rundir import files, reader, review_store
from dermlow.rundir.review_store import Decision

APP = str(Path(__file__).resolve().parent.parent / "app" / "streamlit_app.py")


def manifest_of(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["image_id", "label", "split", "lesion_id"])


SMALL = manifest_of([("a", 0, "train", "L1"), ("b", 1, "train", "L1"), ("c", 0, "test", "L1"),
                     ("d", 0, "train", "L2"), ("e", 2, "train", ""), ("f", 2, "val", "")])


def test_lesion_rows_siblings_and_conflicts():
    assert lesion.lesion_rows(SMALL, "L1")["image_id"].tolist() == ["a", "b", "c"]
    assert lesion.lesion_rows(SMALL, "").empty and lesion.lesion_rows(SMALL, float("nan")).empty
    assert lesion.siblings_of(SMALL, "a")["image_id"].tolist() == ["b", "c"]
    assert lesion.siblings_of(SMALL, "e").empty  # no lesion id: images without one are not siblings
    assert lesion.conflicting_labels(SMALL, "a")["image_id"].tolist() == ["b"]
    assert lesion.conflicting_labels(SMALL, "b")["image_id"].tolist() == ["a", "c"]
    assert lesion.conflicting_labels(SMALL, "d").empty
    text = lesion.conflict_text(lesion.conflicting_labels(SMALL, "b"), ["MEL", "NV", "BCC"], 1)
    assert "**a** (training): **MEL**" in text and "**c** (test): **MEL**" in text and "**NV**" in text
    hostile = manifest_of([("![x](http://e/)", 0, ":red[s]", "L"), ("g", 1, "train", "L")])
    text = lesion.conflict_text(lesion.conflicting_labels(hostile, "g"), ["$x$", "NV"], 1)
    assert md("![x](http://e/)") in text and md(":red[s]") in text and md("$x$") in text and "](" not in text


def test_lesion_decisions_cover_the_training_images_only():
    d = Decision("a", "Dr Ada", "relabel", "NV", "", "same lesion as b", True)
    out = lesion.lesion_decisions(SMALL, "a", d)
    assert [x.image_id for x in out] == ["a", "b"]  # c is a test image
    assert {(x.reviewer, x.decision, x.label, x.adjudicator) for x in out} == {("Dr Ada", "relabel", "NV", True)}
    assert out[0].note == "applied to the whole lesion L1 (2 training images); same lesion as b"
    assert [x.image_id for x in lesion.lesion_decisions(SMALL, "e", d)] == ["e"]  # alone: itself
    assert lesion.lesion_decisions(SMALL, "f", d) == []  # a validation image is never decided on


def test_shown_path_is_never_absolute(tmp_path):
    data = tmp_path / "data"
    assert lesion.shown_path(data / "train" / "ISIC_1.jpg", data) == "train/ISIC_1.jpg"
    assert lesion.shown_path("/somewhere/else/ISIC_1.jpg", data) == "ISIC_1.jpg"
    assert lesion.shown_path("/somewhere/else/ISIC_1.jpg", None) == "ISIC_1.jpg"
    assert lesion.shown_path("images/ISIC_1.png", data) == "images/ISIC_1.png"


def test_dx_type_words_and_untrusted_values():
    assert [dx_type_text(v) for v in ("histo", "follow_up", "consensus", "confocal")] == [
        "histopathology", "follow-up", "expert consensus", "confocal microscopy"]
    assert dx_type_text("single image expert consensus") == "single image expert consensus"
    assert dx_type_text("![x](http://evil/)") == "![x](http://evil/)"  # as given: md() escapes it where shown
    assert dx_type_text("") == "" and dx_type_text(None) == ""


def test_predicted_codes_from_the_summary_and_the_saved_predictions():
    rows = manifest_of([("a", 0, "train", "L"), ("c", 0, "test", "L"), ("z", 0, "val", "L")])
    summary = pd.DataFrame({"image_id": ["a"], "predicted_last": [2]})
    held = pd.DataFrame({"image_id": ["c"], "MEL": [0.1], "NV": [0.7], "BCC": [0.2]})
    assert lesion.predicted_codes(rows, summary, held, ["MEL", "NV", "BCC"]) == ["BCC", "NV", ""]


# ---------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def lesion_run(tmp_path_factory):
    """A run with flipped labels whose first lesion with conflicting training labels also gets a
    test image (a held-out sibling); returns (run folder, that lesion's manifest rows)."""
    run_dir = make_run(tmp_path_factory.mktemp("lesion"), "flipped", seed=2, epochs=5, flip_frac=0.1,
                       extra_columns=True, image_size=32)
    m = reader.read_manifest(run_dir)
    train = m[m["split"] == "train"]
    counts = train.groupby("lesion_id")["label"].agg(["nunique", "size"])
    chosen = counts[(counts["nunique"] > 1) & (counts["size"] == 3)].index[0]
    test_image = m.index[(m["split"] == "test") & (m.groupby("lesion_id")["image_id"].transform("size") == 1)][0]
    m.loc[test_image, "lesion_id"] = chosen
    files.write_csv(run_dir / files.MANIFEST, m)
    return run_dir, m[m["lesion_id"] == chosen].sort_values("image_id")


def case_app(run_dir, monkeypatch, image_id: str) -> AppTest:
    monkeypatch.setenv("DERMLOW_RUNS", str(run_dir))
    monkeypatch.delenv("DERMLOW_REVIEW_DB", raising=False)
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.sidebar.radio(key="view").set_value("Case").run()
    return at.selectbox(key="case_select").set_value(image_id).run()


def chart_specs(at: AppTest) -> list[str]:
    return [c.proto.spec for c in at.get("vega_lite_chart")]


def chart_series(at: AppTest) -> set[str]:
    """The legend entries (`series`) of every chart on the page."""
    out = set()
    for c in at.get("vega_lite_chart"):
        for d in c.proto.datasets:
            frame = pa.ipc.open_stream(d.data.data).read_all().to_pandas()
            out |= set(frame["series"]) if "series" in frame else set()
    return out


def tile_text(at: AppTest, image_id: str) -> list[str]:
    """The Markdown under a sibling's picture."""
    return [m.value for m in at.main.markdown if m.value.startswith(f"**{md(image_id)}** ·")]


def clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def image_captions(at: AppTest) -> list[str]:
    return [c for el in at.image for c in el.captions]


def test_case_warns_of_a_sibling_with_another_label_and_shows_evidence(lesion_run, monkeypatch):
    run_dir, rows = lesion_run
    train = rows[rows["split"] == "train"]
    flipped = train[train["flipped"]].iloc[0]
    at = case_app(run_dir, monkeypatch, flipped["image_id"])
    clean(at)
    codes = reader.load_run(run_dir).codes
    warning = at.warning[0].value  # first on the page
    others = rows[(rows["label"] != flipped["label"]) & (rows["image_id"] != flipped["image_id"])]
    for _, o in others.iterrows():
        assert f"**{md(o['image_id'])}**" in warning and f"**{codes[int(o['label'])]}**" in warning
    # LOW weights drawn, with the line at 1; the probability chart names the most likely other label
    charts = chart_specs(at)
    assert any('"field": "weight"' in c and '"rule"' in c for c in charts)
    other = reader.weight_summary(run_dir).set_index("image_id").loc[flipped["image_id"], "other_label"]
    assert f"{label('other_label')}: {codes[int(other)]}" in chart_series(at)
    assert f"{label('given')}: {codes[int(flipped['label'])]}" in chart_series(at)
    colours = [CLASS_COLOURS[int(flipped["label"])], CLASS_COLOURS[int(other)]]  # each line in its class's colour
    assert any(json.loads(c).get("encoding", {}).get("color", {}).get("scale", {}).get("range") == colours for c in charts)
    # caption: the id and the data-relative path, never the absolute path
    captions = image_captions(at)
    assert md(f"{flipped['image_id']} — {Path(flipped['path']).name}") in captions  # relative to data.data_dir
    assert Path(flipped["path"]).is_absolute() and not any(md(run_dir.parent) in c for c in captions)
    # how the label was confirmed, spelled out
    text = [m.value for m in at.main.markdown]
    assert f"**{title('dx_type')}:** {md(dx_type_text(flipped['dx_type']))}" in text
    # siblings, each openable; the test image read-only
    for _, o in rows[rows["image_id"] != flipped["image_id"]].iterrows():
        assert at.button(key=f"lesion-open-{o['image_id']}")
    test_id = rows.loc[rows["split"] == "test", "image_id"].iloc[0]
    at.button(key=f"lesion-open-{test_id}").click().run()
    clean(at)
    assert at.info and "shown read-only" in at.info[0].value
    assert any(c.startswith(md(test_id)) for c in image_captions(at))
    at.button(key="case-back").click().run()
    assert at.selectbox(key="case_select").value == flipped["image_id"]
    sibling = train.loc[train["image_id"] != flipped["image_id"], "image_id"].iloc[0]
    at.button(key=f"lesion-open-{sibling}").click().run()
    clean(at)
    assert at.selectbox(key="case_select").value == sibling and not at.info


def test_apply_to_the_whole_lesion_writes_one_row_per_training_image(lesion_run, monkeypatch):
    run_dir, rows = lesion_run
    first = rows[rows["split"] == "train"].iloc[0]
    at = case_app(run_dir, monkeypatch, first["image_id"])
    key = f"lesion-{first['lesion_id']}"
    assert at.button(key=f"{key}-apply").disabled  # no reviewer name yet
    sibling = rows[(rows["image_id"] != first["image_id"]) & (rows["split"] == "train")].iloc[0]["image_id"]
    assert any(f"{label('predicted')}: " in t for t in tile_text(at, sibling))  # siblings' predictions shown...
    at.sidebar.text_input(key="reviewer_widget").input("Dr Ada").run()
    at.sidebar.checkbox(key="blind_widget").check().run()
    assert not any(f"{label('predicted')}: " in t for t in tile_text(at, sibling))  # ...not in blind review
    at.selectbox(key=f"{key}-decision").set_value("relabel").run()
    at.selectbox(key=f"{key}-label").set_value("BKL").run()
    at.text_input(key=f"{key}-note").input("one lesion, one diagnosis").run()
    at.button(key=f"{key}-apply").click().run()
    clean(at)
    got = review_store.read_history(run_dir, "isic2018")
    train_ids = rows.loc[rows["split"] == "train", "image_id"].tolist()
    assert sorted(got["image_id"]) == sorted(train_ids) and len(train_ids) == 3  # not the test image
    assert set(got["reviewer"]) == {"Dr Ada"} and set(got["decision"]) == {"relabel"} and set(got["label"]) == {"BKL"}
    assert got["note"].str.startswith(f"applied to the whole lesion {first['lesion_id']}").all()
    assert got["note"].str.endswith("one lesion, one diagnosis").all()
    assert any(md("Saved: relabel to BKL for 3 training images") in s.value for s in at.success)
    assert any("your decision: relabel BKL" in t for t in tile_text(at, sibling))
    at.selectbox(key=f"{key}-decision").set_value("exclude").run()
    at.selectbox(key=f"{key}-reason").set_value("duplicate").run()
    at.button(key=f"{key}-apply").click().run()
    latest = review_store.read_history(run_dir, "isic2018").tail(3)
    assert sorted(latest["image_id"]) == sorted(train_ids)
    assert set(latest["decision"]) == {"exclude"} and set(latest["reason"]) == {"duplicate"}
    assert any(f"{label('predicted')}: " in t for t in tile_text(at, sibling))  # decided: no longer blind
    (run_dir / review_store.DB_NAME).unlink()


def test_a_run_without_low_says_so_instead_of_flat_weights(tmp_path, monkeypatch):
    run_dir = make_run(tmp_path, "plain", seed=1, epochs=4, weighting="none", image_size=32)
    first = reader.weight_summary(run_dir)["image_id"].iloc[0]
    at = case_app(run_dir, monkeypatch, first)
    clean(at)
    sentence = title("no_low")
    assert any(sentence in i.value for i in at.info)
    text = " ".join(m.value for m in at.main.markdown)  # not the sidebar's glossary
    assert sentence in text and label("weight_mean") not in text
    assert len(charts := chart_specs(at)) == 2 and not any('"field": "weight"' in s for s in charts)  # loss, probability


@pytest.mark.browser
def test_case_view_in_chromium_warns_above_the_fold(lesion_run, tmp_path):
    """At 1280x720 the conflict warning and the lesion's decision are reachable; screenshot for docs."""
    from conftest import require
    from test_app_browser import CHROMIUM, _serve, open_page

    require(CHROMIUM, "the browser test needs Chromium (Debian package `chromium`: `make chromium`)")
    require("playwright.sync_api", "the browser tests drive Chromium with Playwright (pip install playwright)")
    run_dir, rows = lesion_run
    target = rows[(rows["split"] == "train") & rows["flipped"]].iloc[0]["image_id"]
    shots = Path(os.environ.get("DERMLOW_SCREENSHOTS") or tmp_path)  # docs/screenshots holds the committed ones
    shots.mkdir(parents=True, exist_ok=True)
    for url in _serve(run_dir):
        with open_page(url, {"width": 1280, "height": 720}) as page:
            page.get_by_text("Case", exact=True).first.click(timeout=60_000)
            box = page.get_by_role("combobox", name="Training image")
            box.click(timeout=60_000)
            page.keyboard.type(target)
            started = time.monotonic()
            page.keyboard.press("Enter")
            warning = page.get_by_text("Other images of this lesion carry a different label")
            warning.wait_for(timeout=30_000)
            page.get_by_role("button", name="Apply to all 3 training images of this lesion").wait_for(timeout=30_000)
            page.get_by_text(f"{target} — {target}.").wait_for(timeout=30_000)  # the caption: rerun done
            seconds = time.monotonic() - started
            page.wait_for_timeout(500)
            top = warning.bounding_box()
            confirm = page.get_by_role("button", name="Confirm", exact=True).bounding_box()
            page.screenshot(path=str(shots / "case-1280x720.png"))
            page.get_by_text("Other images of this lesion", exact=True).scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "case-siblings-1280x720.png"))
            page.get_by_role("button", name="Apply to all 3 training images of this lesion").scroll_into_view_if_needed()
            page.screenshot(path=str(shots / "case-lesion-decision-1280x720.png"))
    print(f"case view with the lesion warning and the siblings after {seconds:.2f} s")
    assert top is not None and top["y"] + top["height"] < 720  # above the fold
    assert confirm is not None and confirm["y"] + confirm["height"] < 720  # so are the decision buttons
    assert (shots / "case-1280x720.png").stat().st_size > 10_000


def test_siblings_still_shown_when_the_saved_predictions_cannot_be_read(tmp_path, monkeypatch):
    run_dir = make_run(tmp_path, "broken", seed=3, epochs=3, image_size=32)
    (run_dir / files.PREDICTIONS_VAL).write_text("image,XX\nISIC_0000000,1\n")  # another run's classes
    m = reader.read_manifest(run_dir)
    train = m[m["split"] == "train"]
    image_id = train[train.groupby("lesion_id")["image_id"].transform("size") > 1]["image_id"].iloc[0]
    at = case_app(run_dir, monkeypatch, image_id)
    assert not at.exception and not at.error
    sibling = lesion.siblings_of(m, image_id)["image_id"].iloc[0]
    assert tile_text(at, sibling) and at.button(key=f"lesion-open-{sibling}")


def test_the_review_view_shows_the_lesion_warning_and_siblings_of_the_queued_case(lesion_run, monkeypatch):
    """The Review view's case panel carries the same lesion evidence as the Case view."""
    run_dir, rows = lesion_run
    flipped = rows[(rows["split"] == "train") & rows["flipped"]].iloc[0]
    monkeypatch.setenv("DERMLOW_RUNS", str(run_dir))
    monkeypatch.delenv("DERMLOW_REVIEW_DB", raising=False)
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"view": "Review", "case": flipped["image_id"]})
    at.run()
    clean(at)
    others = rows[(rows["label"] != flipped["label"]) & (rows["image_id"] != flipped["image_id"])]
    assert at.warning and all(f"**{md(i)}**" in at.warning[0].value for i in others["image_id"])
    for _, o in rows[rows["image_id"] != flipped["image_id"]].iterrows():
        assert at.button(key=f"lesion-open-{o['image_id']}")
    assert at.button(key=f"lesion-{flipped['lesion_id']}-apply")
    assert not any(str(run_dir.parent) in c for c in image_captions(at))  # no absolute path in the caption


def test_which_runs_have_low_weights_one_rule_for_every_view():
    """Old configs without a weighting section were LOW runs; every other weighting is not LOW."""
    assert lesion.uses_low({}) and lesion.uses_low({"weighting": {"lam": 1.0}})
    assert lesion.uses_low({"weighting": {"name": "low"}})
    assert not any(lesion.uses_low({"weighting": {"name": n}}) for n in ("none", "mwnet", "mentornet", "spl", "is"))
