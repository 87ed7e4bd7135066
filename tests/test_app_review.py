"""The app's review: name, queue, decisions, blind review, agreement (streamlit AppTest, factory runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from run_factory import make_run
from streamlit.testing.v1 import AppTest

from dermlow.rundir import flag_scores, reader, review_store
from dermlow.rundir.review_store import Decision

APP = str(Path(__file__).resolve().parent.parent / "app" / "streamlit_app.py")
D = "isic2018"


@pytest.fixture
def run_dir(tmp_path):
    return make_run(tmp_path, "flipped", seed=2, epochs=5, flip_frac=0.1, extra_columns=True, image_size=32)


def review_app(run_dir, monkeypatch, view: str = "Review") -> AppTest:
    monkeypatch.setenv("DERMLOW_RUNS", str(run_dir))
    monkeypatch.delenv("DERMLOW_REVIEW_DB", raising=False)
    at = AppTest.from_file(APP, default_timeout=60).run()
    return at.sidebar.radio(key="view").set_value(view).run()


def clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def frame_with(at: AppTest, column: str):
    """The first table on the page with `column`."""
    return next(d.value for d in at.dataframe if column in d.value)


def ranked(run_dir):
    summary = reader.weight_summary(run_dir)
    return flag_scores.flag_scores(summary, weight_from="weight_mean").sort_values("rank")


def history(run_dir):
    return review_store.read_history(run_dir, D)


def test_deciding_needs_a_name_then_confirm_relabel_and_next(run_dir, monkeypatch):
    at = review_app(run_dir, monkeypatch)
    clean(at)
    order = ranked(run_dir)
    assert at.button(key="decide-confirm").disabled and any("Enter your name" in w.value for w in at.warning)
    assert any("Case **1** of" in m.value for m in at.markdown)
    at.sidebar.text_input(key="reviewer_widget").input("Dr Ada").run()
    assert not at.button(key="decide-confirm").disabled
    at.button(key="decide-confirm").click().run()
    clean(at)
    first = order.iloc[0]
    got = history(run_dir)
    assert list(zip(got["image_id"], got["reviewer"], got["decision"], strict=True)) == [(first["image_id"], "Dr Ada", "confirm")]
    # next without scrolling: the second case by flag score, relabel pre-filled with its most likely other label
    at.button(key="queue_next").click().run()
    second = order.iloc[1]
    codes = reader.load_run(run_dir).codes
    picker = at.selectbox(key=f"relabel-{second['image_id']}")
    assert picker.value == codes[int(second["other_label"])]
    at.text_input(key=f"note-{second['image_id']}").input("**bold** :red[alarm]")
    at.button(key="decide-relabel").click().run()
    clean(at)
    last = history(run_dir).iloc[-1]
    assert (last.image_id, last.decision, last.label, last.note) == (
        second["image_id"], "relabel", codes[int(second["other_label"])], "**bold** :red[alarm]")
    queue = frame_with(at, "decided by me")
    assert queue["decided by me"].head(2).tolist() == [True, True] and not queue["decided by me"].iloc[2]
    at.button(key="queue_prev").click().run()
    assert any("Case **1** of" in m.value for m in at.markdown)
    # the name stays for the browser session, also across views
    at.sidebar.radio(key="view").set_value("Runs").run()
    at.sidebar.radio(key="view").set_value("Review").run()
    assert at.sidebar.text_input(key="reviewer_widget").value == "Dr Ada"


def test_queue_filters_by_class_and_by_not_yet_decided(run_dir, monkeypatch):
    order = ranked(run_dir)
    with review_store.open_store(run_dir, D) as store:
        store.add(D, [Decision(order.iloc[0]["image_id"], "Dr Ada", "exclude")])
    at = review_app(run_dir, monkeypatch)
    at.sidebar.text_input(key="reviewer_widget").input("Dr Ada").run()
    at.checkbox(key="queue_undecided").check().run()
    clean(at)
    queue = frame_with(at, "decided by me")
    assert queue["image_id"].iloc[0] == order.iloc[1]["image_id"] and not queue["decided by me"].any()
    at.selectbox(key="queue_class").set_value(1).run()
    queue = frame_with(at, "decided by me")
    codes = reader.load_run(run_dir).codes
    assert set(queue["given label"]) == {codes[1]}
    assert queue["image_id"].tolist() == [i for i, lab in zip(order["image_id"], order["label"], strict=True)
                                          if lab == 1 and i != order.iloc[0]["image_id"]][:50]


def test_blind_review_hides_others_until_mine_is_saved_and_agreement_appears(run_dir, monkeypatch):
    order = ranked(run_dir)
    ids = order["image_id"].tolist()
    with review_store.open_store(run_dir, D) as store:
        store.add(D, [Decision(ids[0], "Dr Bo", "exclude", note="**secret** opinion"),
                      Decision(ids[1], "Dr Bo", "confirm"), Decision(ids[2], "Dr Bo", "confirm")])
    with review_store.open_store(run_dir, D) as store:
        store.add(D, [Decision(ids[1], "Dr Ada", "confirm"), Decision(ids[2], "Dr Ada", "exclude")])
    at = review_app(run_dir, monkeypatch)
    at.sidebar.text_input(key="reviewer_widget").input("Dr Ada").run()
    at.sidebar.checkbox(key="blind_widget").check().run()
    clean(at)
    assert any("1 other decision(s) hidden" in c.value for c in at.caption)
    assert not any("secret" in str(d.value) for d in at.dataframe)
    at.button(key="decide-confirm").click().run()
    clean(at)
    others = frame_with(at, "role")
    assert set(others["reviewer"]) == {"Dr Ada", "Dr Bo"} and "**secret** opinion" in others["note"].tolist()
    agree = frame_with(at, "kappa").set_index("class")
    assert agree.loc["all", "images"] == 3 and agree.loc["all", "method"] == "Cohen"
    unresolved = frame_with(at, "why")
    assert set(unresolved["image_id"]) == {ids[0], ids[2]} and set(unresolved["why"]) == {"tie"}
    # an adjudicator settles one from the unresolved list
    at.sidebar.text_input(key="reviewer_widget").input("Prof Cy").run()
    at.sidebar.checkbox(key="adjudicator_widget").check().run()
    at.sidebar.checkbox(key="blind_widget").uncheck().run()
    at.selectbox(key="unresolved_select").set_value(ids[2]).run()
    at.button(key="open-unresolved").click().run()
    at.button(key="decide-exclude").click().run()
    clean(at)
    last = history(run_dir).iloc[-1]
    assert (last.image_id, last.reviewer, last.decision, bool(last.adjudicator)) == (ids[2], "Prof Cy", "exclude", True)
    unresolved = frame_with(at, "why")
    assert set(unresolved["image_id"]) == {ids[0]}


def test_deciding_from_the_case_view(run_dir, monkeypatch):
    at = review_app(run_dir, monkeypatch, view="Case")
    target = at.selectbox(key="case_select").value
    at.sidebar.text_input(key="reviewer_widget").input("Dr Ada").run()
    at.button(key="decide-unsure").click().run()
    clean(at)
    got = history(run_dir)
    assert list(zip(got["image_id"], got["decision"], strict=True)) == [(target, "unsure")]


def test_plain_text_escapes_markdown_and_streamlit_directives():
    from dermlow._app.review_decisions import plain

    text = plain("**x** :red[y] [link](http://e) <b>\nnext")
    assert "**" not in text.replace("\\*", "") and ":red[" not in text and "](" not in text
    assert "<b>" not in text and "\n" not in text  # one line, no HTML
    assert text.replace("\\", "") == "**x** :red[y] [link](http://e) <b> next"  # the text itself is kept
