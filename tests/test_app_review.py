"""The app's review: name, queue, decisions, blind review, agreement (streamlit AppTest, factory runs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dermlow._app.glossary import label
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


def case_shown(at: AppTest) -> int:
    """The 1-based place of the case shown ('Case **n** of ...')."""
    line = next(m.value for m in at.markdown if m.value.startswith("Case **"))
    return int(line.split("**")[1])


def said(at: AppTest, text: str) -> bool:
    """Whether some Markdown on the page reads `text` (md() escapes punctuation with backslashes)."""
    return any(text in m.value.replace("\\", "") for m in at.markdown)


def test_two_clicks_per_case_confirm_relabel_exclude_unsure_skip_back(run_dir, monkeypatch):
    at = review_app(run_dir, monkeypatch)
    clean(at)
    order = ranked(run_dir)
    ids = order["image_id"].tolist()
    codes = reader.load_run(run_dir).codes
    assert at.button(key="decide-confirm").disabled and any("Enter your name" in w.value for w in at.warning)
    assert case_shown(at) == 1
    at.sidebar.text_input(key="reviewer_widget").input("Dr Ada").run()
    assert not at.button(key="decide-confirm").disabled
    at.button(key="decide-confirm").click().run()  # confirm & next: saved, and case 2 is shown
    clean(at)
    got = history(run_dir)
    assert list(zip(got["image_id"], got["reviewer"], got["decision"], strict=True)) == [(ids[0], "Dr Ada", "confirm")]
    assert case_shown(at) == 2 and said(at, f"Saved: confirm for {ids[0]}.")
    # relabel & next, pre-filled with the most likely other label (shown on the button)
    second = order.iloc[1]
    suggested = codes[int(second["other_label"])]
    assert at.selectbox(key=f"relabel-{ids[1]}").value == suggested
    assert f"Relabel to {suggested} & next" == at.button(key="decide-relabel").label
    at.text_input(key=f"note-{ids[1]}").input("**bold** :red[alarm]")
    at.button(key="decide-relabel").click().run()
    clean(at)
    last = history(run_dir).iloc[-1]
    assert (last.image_id, last.decision, last.label, last.note) == (ids[1], "relabel", suggested,
                                                                     "**bold** :red[alarm]")
    assert case_shown(at) == 3
    at.button(key="decide-exclude").click().run()  # the first reason, unless another is chosen
    last = history(run_dir).iloc[-1]
    assert (last.image_id, last.decision, last.reason) == (ids[2], "exclude", "image quality") and case_shown(at) == 4
    at.button(key="queue_next").click().run()  # skip: nothing saved
    assert len(history(run_dir)) == 3 and case_shown(at) == 5
    at.button(key="decide-unsure").click().run()
    assert history(run_dir).iloc[-1].image_id == ids[4] and case_shown(at) == 6
    at.button(key="queue_prev").click().run()
    at.button(key="queue_prev").click().run()
    assert case_shown(at) == 4 and len(history(run_dir)) == 4  # back: nothing saved either
    queue = frame_with(at, "decided by me")
    assert queue["decided by me"].head(6).tolist() == [True, True, True, False, True, False]
    assert len(queue) == len(ids) and queue["image_id"].tolist() == ids  # the whole queue, not the first 50
    assert queue[""].tolist().index("▶") == 3 and queue["image"].iloc[0].startswith("data:image/jpeg;base64,")
    # the place and the name stay for the browser session, also across views
    at.sidebar.radio(key="view").set_value("Runs").run()
    at.sidebar.radio(key="view").set_value("Review").run()
    assert at.sidebar.text_input(key="reviewer_widget").value == "Dr Ada" and case_shown(at) == 4
    assert at.query_params["case"] == ids[3] and at.query_params["reviewer"] == "Dr Ada"


def test_the_last_case_saves_and_stays_with_a_note(run_dir, monkeypatch):
    order = ranked(run_dir)
    at = review_app(run_dir, monkeypatch)
    at.sidebar.text_input(key="reviewer_widget").input("Dr Ada").run()
    at.selectbox(key="queue_class").set_value(6).run()
    last_id = order.loc[order["label"] == 6, "image_id"].iloc[-1]
    at.query_params["case"] = last_id  # ignored: the session already has a place
    n = len(frame_with(at, "decided by me"))
    for _ in range(n - 1):
        at.button(key="queue_next").click().run()
    assert case_shown(at) == n and at.button(key="queue_next").disabled
    at.button(key="decide-confirm").click().run()
    assert history(run_dir).iloc[-1].image_id == last_id and case_shown(at) == n
    assert said(at, "That was the last case of the queue.")


@pytest.mark.parametrize("given, shown", [("ids[7]", 8), ("<img src=x onerror=alert(1)>", 1), ("", 1)])
def test_a_reload_restores_the_case_and_the_reviewer_from_the_address(run_dir, monkeypatch, given, shown):
    ids = ranked(run_dir)["image_id"].tolist()
    monkeypatch.setenv("DERMLOW_RUNS", str(run_dir))
    monkeypatch.delenv("DERMLOW_REVIEW_DB", raising=False)
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"case": ids[7] if given == "ids[7]" else given, "reviewer": "Dr Ada",
                            "class": "not-a-class"})
    at.run()
    at.sidebar.radio(key="view").set_value("Review").run()
    clean(at)
    assert case_shown(at) == shown and at.sidebar.text_input(key="reviewer_widget").value == "Dr Ada"
    assert at.selectbox(key="queue_class").value is None  # an unknown class: all classes
    assert at.query_params["case"] == ids[shown - 1]


def test_the_class_filter_comes_back_from_the_address(run_dir, monkeypatch):
    monkeypatch.setenv("DERMLOW_RUNS", str(run_dir))
    codes = reader.load_run(run_dir).codes
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"class": codes[2], "reviewer": "x" * 101})  # too long a name: none
    at.run()
    at.sidebar.radio(key="view").set_value("Review").run()
    assert at.selectbox(key="queue_class").value == 2 and set(frame_with(at, "decided by me")["given label"]) == {codes[2]}
    assert at.sidebar.text_input(key="reviewer_widget").value == ""


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
                                          if lab == 1 and i != order.iloc[0]["image_id"]]


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
    first = order.iloc[0]
    codes = reader.load_run(run_dir).codes
    assert bool(first["flipped"])  # the factory's most suspicious case is a deliberate flip
    page = " ".join(m.value.replace("\\", "") for m in at.main.markdown)
    assert "1 of" not in page.split("Case")[-1] and "flipped on purpose" not in page
    assert label("predicted") not in page.lower() and label("other_label") not in page.lower()
    assert said(at, "Blind review: the model's view of this case is hidden")
    assert at.selectbox(key=f"relabel-{ids[0]}").value is None and at.button(key="decide-relabel").disabled
    queue = frame_with(at, "decided by me")
    assert {label("rank"), label("other_label"), label("flag_score"), "state"}.isdisjoint(queue.columns)
    assert any("1 other decision(s) hidden" in c.value for c in at.caption)
    assert not any("secret" in str(d.value) for d in at.dataframe)
    at.selectbox(key=f"relabel-{ids[0]}").set_value(codes[int(first["original_label"])]).run()
    at.button(key="decide-relabel").click().run()
    clean(at)
    assert history(run_dir).iloc[-1].label == codes[int(first["original_label"])]
    assert said(at, "Back shows the model's view of it.")
    at.button(key="queue_prev").click().run()  # my decision is saved: everything shows
    assert said(at, "Label flipped on purpose for this study") and said(at, "Suspicion rank:** 1 of")
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


def test_blind_review_is_remembered_for_the_name_in_a_new_session(run_dir, monkeypatch):
    at = review_app(run_dir, monkeypatch)
    at.sidebar.text_input(key="reviewer_widget").input("Dr Ada").run()
    at.sidebar.checkbox(key="blind_widget").check().run()
    assert review_store.read_settings(run_dir, "Dr Ada") == {"blind": "1"}
    fresh = review_app(run_dir, monkeypatch)  # a new browser session
    assert not fresh.sidebar.checkbox(key="blind_widget").value
    fresh.sidebar.text_input(key="reviewer_widget").input("Dr Ada").run()
    clean(fresh)
    assert fresh.sidebar.checkbox(key="blind_widget").value and said(fresh, "hidden until you save")
    fresh.sidebar.text_input(key="reviewer_widget").input("Dr Bo").run()  # another name: its own setting
    fresh.sidebar.checkbox(key="blind_widget").uncheck().run()
    assert review_store.read_settings(run_dir, "Dr Bo") == {"blind": "0"}
    assert review_store.read_settings(run_dir, "Dr Ada") == {"blind": "1"}
    case = review_app(run_dir, monkeypatch, view="Case")  # also where the Case view asks for the name
    case.sidebar.text_input(key="reviewer_widget").input("Dr Ada").run()
    assert case.sidebar.checkbox(key="blind_widget").value


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


def test_what_comes_next_in_the_queue():
    from dermlow._app import review_flow as flow

    ids = ["a", "b", "c"]
    assert [flow.next_case(ids, i) for i in ids] == ["b", "c", None]  # after the last: none (stay, say so)
    assert flow.next_case(ids, "gone") == "a" and flow.next_case([], "a") is None
    assert [flow.step_case(ids, "a", -1), flow.step_case(ids, "c", 1), flow.step_case(ids, "b", 1)] == ["a", "c", "c"]
    assert flow.step_case(ids, "gone", 1) == "b" and flow.step_case([], "a", 1) is None
    assert [flow.start_case(ids, w) for w in ("c", "x", None, ["c"], "")] == ["c", "a", "a", "a", "a"]
    assert flow.start_case([], "a") is None
    assert [flow.picked_case(ids, r) for r in ([1], [], [3], [-1])] == ["b", None, None, None]
    assert [flow.clean_reviewer(n) for n in (" Dr Ada ", "", "a\nb", "x" * 101, None, ["Dr"])] == [
        "Dr Ada", "", "", "", "", ""]
    assert flow.saved_text("relabel", "MEL", "ISIC_1") == "Saved: relabel to MEL for ISIC_1."
    assert flow.saved_text("confirm", "", "ISIC_1", at_end=True).endswith("last case of the queue.")


def test_blind_review_hides_the_models_view_until_decided(run_dir):
    from dermlow._app import review_flow as flow

    assert flow.hidden_fields(False, False) == flow.hidden_fields(True, True) == frozenset()
    assert flow.hidden_fields(True, False) == {"prediction", "other_label", "suspicion", "flip_note", "trajectories",
                                               "others"}
    run = reader.load_run(run_dir)
    row = ranked(run_dir).iloc[0].copy()
    row["image_id"] = "**x**"
    shown = "\n".join(flow.facts_lines(run, row, 99, frozenset()))
    assert "flipped on purpose" in shown and "of 99" in shown and "confidence" in shown
    assert shown.count("\n") == 4  # given, prediction, other label, rank, flip note: short
    blind = "\n".join(flow.facts_lines(run, row, 99, flow.hidden_fields(True, False)))
    assert blind.startswith(f"**{label('given').capitalize()}:**")
    for gone in ("flipped on purpose", "of 99", "confidence", label("predicted"), label("other_label")):
        assert gone not in blind.lower()


def test_reviewer_settings_are_kept_per_name_and_read_without_writing(tmp_path):
    assert review_store.read_settings(tmp_path, "Dr Ada") == {}  # no database: none, and none made
    assert not (tmp_path / review_store.DB_NAME).exists()
    with review_store.open_store(tmp_path, D) as store:
        store.set_setting("Dr Ada", "blind", "1")
        store.set_setting("Dr Ada", "blind", "0")
        store.set_setting("Dr Bo", "blind", "1")
    assert review_store.read_settings(tmp_path, "Dr Ada") == {"blind": "0"}
    assert review_store.read_settings(tmp_path, "Dr Bo") == {"blind": "1"}
    assert review_store.read_settings(tmp_path, "") == {} and history(tmp_path).empty  # settings are no decisions
    with review_store.open_store(tmp_path, D) as store:  # a database from before the settings table
        store._conn.execute("DROP TABLE reviewer_settings")
    assert review_store.read_settings(tmp_path, "Dr Ada") == {}


@pytest.mark.parametrize("asked, shown", [("Review", "Review"), ("<b>nope</b>", "Runs")])
def test_a_reload_lands_on_the_view_and_run_of_the_address(tmp_path, monkeypatch, asked, shown):
    """`?view=` and `?run=` bring a reload (or a shared link) back to the same view of the same
    run; an unknown view or run name falls back to the first."""
    for seed, name in enumerate(("alpha", "beta")):
        make_run(tmp_path / "runs", name, seed=seed, epochs=2, image_size=32)
    monkeypatch.setenv("DERMLOW_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("DERMLOW_REVIEW_DB", raising=False)
    at = AppTest.from_file(APP, default_timeout=60)
    at.query_params.update({"view": asked, "run": "beta" if shown == "Review" else "../etc"})
    at.run()
    clean(at)
    assert at.sidebar.radio(key="view").value == shown and at.query_params["view"] == shown
    if shown == "Review":
        assert Path(at.sidebar.selectbox(key="run").value).name == "beta" and at.query_params["run"] == "beta"
    at.sidebar.radio(key="view").set_value("Case").run()
    assert at.query_params["view"] == "Case"
