"""dermlow review app: where a dermoscopy model struggles, and which images deserve a second look.

Start it with `dermlow app RUNS_DIR` (or `streamlit run app/streamlit_app.py -- --runs RUNS_DIR`).
It reads run folders only, through dermlow.rundir (reader, flag scores, review marks), and works on
runs that are still training. Layout follows the streamlit demo-self-driving app: main() ->
run_the_app(), which reads as named steps; small *_ui() functions return the user's choices.

This folder is installed as the package `dermlow._app` (pyproject.toml), which is how this script
imports its sibling view modules, from a wheel, an editable install or `streamlit run` alike.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import streamlit as st
from dermlow._app import glossary
from dermlow._app import review_cases as cases
from dermlow._app import review_compare as compare
from dermlow._app import review_data as data
from dermlow._app import review_decisions as decisions
from dermlow._app import review_drill as drill
from dermlow._app import review_evidence as evidence
from dermlow._app import review_results as results
from dermlow._app.review_text import md

from dermlow.errors import UserError
from dermlow.rundir import files
from dermlow.rundir.reader import Run

RUNS_ENV = "DERMLOW_RUNS"


class View(NamedTuple):
    """A page of the app: its sidebar label and caption, and the function that draws it."""

    label: str
    caption: str
    show: Callable  # (Run) -> None; for the comparison view (list of run folders) -> None
    compares_runs: bool = False


VIEWS = [
    View("Runs", "compare runs", results.runs_view, compares_runs=True),
    View("Compare classes", "runs side by side, per class", compare.compare_view, compares_runs=True),
    View("Per-class", "metrics per class", results.per_class_view),
    View("Weights over training", "model difficulty (LOW weight) per training pass", results.weights_view),
    View("Lesion galleries", "images by split, given × predicted", drill.galleries_view),
    View("Case", "one image in detail", cases.case_view),
    View("Review", "queue, decisions, agreement", decisions.review_view),
    View("Duplicates", "near-identical images, leaks", evidence.duplicates_view),
]


def default_runs_path() -> str:
    """`--runs PATH` after `--` on the streamlit command line, else $DERMLOW_RUNS, else runs/."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--runs")
    known, _ = parser.parse_known_args(sys.argv[1:])
    return known.runs or os.environ.get(RUNS_ENV) or "runs"


def main() -> None:
    st.set_page_config(page_title="dermlow review", page_icon=":microscope:", layout="wide")
    run_the_app()


def run_the_app() -> None:
    root = runs_folder_ui()
    if root is None:
        return
    run_dirs = find_runs_or_explain(root)
    if not run_dirs:
        return
    view = view_selector_ui()
    glossary.glossary_ui()
    if view.compares_runs:
        view.show(runs_selector_ui(run_dirs))
        return
    run = load_run_or_explain(run_selector_ui(run_dirs))
    if run is None:
        return
    run_status_ui(run)
    show_view(view, run)


def runs_folder_ui() -> str | None:
    """The folder to show: the one the app was started on, or a folder below it (never elsewhere:
    whoever reaches the page must not browse the server's disk)."""
    st.sidebar.title("dermlow review")
    start = default_runs_path()
    typed = st.sidebar.text_input("Runs folder", value=start, key="root",
                                  help="A run folder (runs/<name>) or a folder holding several runs, inside "
                                  "the folder the app was started on.")
    folder = inside(start, typed)
    if folder is None:
        st.error(md(f"{typed} is not inside {start}, the folder this app was started on: it shows only that "
                    "folder and the runs below it. Start `dermlow app` on another folder to see other runs."))
    return folder


def inside(start: str, typed: str) -> str | None:
    """`typed` (relative paths are taken from `start`) when it resolves inside `start`, else None."""
    base = Path(start).expanduser().resolve()
    given = Path(start) / typed.strip()  # an absolute `typed` stays as it is
    return str(given) if given.resolve().is_relative_to(base) else None


def find_runs_or_explain(root: str) -> list[str]:
    try:
        return data.find_runs(root)
    except UserError as err:
        st.error(md(err))
        return []


def view_selector_ui() -> View:
    """The view to show: the one chosen, else the page address's `?view=` (a reload or a shared
    link lands where the reviewer was), else the first; the choice is written back to the address."""
    labels = [v.label for v in VIEWS]
    if st.session_state.get("view") not in labels:
        asked = st.query_params.get("view")
        st.session_state["view"] = asked if asked in labels else labels[0]
    label = st.sidebar.radio("View", labels, key="view", captions=[v.caption for v in VIEWS])
    st.query_params["view"] = label
    return VIEWS[labels.index(label)]


def _short(run_dir: str) -> str:
    return Path(run_dir).name


def runs_selector_ui(run_dirs: list[str]) -> list[str]:
    if len(run_dirs) == 1:
        return run_dirs
    return st.sidebar.multiselect("Runs to compare", run_dirs, default=run_dirs, format_func=_short, key="compare")


def run_selector_ui(run_dirs: list[str]) -> str:
    """The run to look at; kept while the user visits the Runs view (which hides this box) and, by
    its folder name in the page address (`?run=`), across a reload. An unknown name picks the first run."""
    if st.session_state.get("run") not in run_dirs:
        kept = st.session_state.get("run_choice")
        by_name = {_short(r): r for r in run_dirs}
        st.session_state["run"] = kept if kept in run_dirs else by_name.get(st.query_params.get("run"), run_dirs[0])
    choice = st.sidebar.selectbox("Run", run_dirs, format_func=_short, key="run")
    st.session_state["run_choice"] = choice
    st.query_params["run"] = _short(choice)
    return choice


def load_run_or_explain(run_dir: str) -> Run | None:
    try:
        return data.load_run(run_dir, data.stamp(run_dir))
    except UserError as err:
        st.error(md(err))
        return None


def run_status_ui(run: Run) -> None:
    planned = run.epochs_planned or "?"
    state = "finished" if run.done else "still training" if run.epochs_done else "no epoch completed yet"
    st.sidebar.caption(f"**{md(run.name)}** — epoch {run.epochs_done} of {planned}, {state}.")
    if not run.done:
        st.sidebar.button("Reload", help="Show the epochs written since the page was opened.")
    warnings = run.path / files.WARNINGS
    if warnings.is_file() and warnings.stat().st_size:
        with st.sidebar.expander("Training warnings"):
            st.text(warnings.read_text(errors="replace")[-3000:])


def show_view(view: View, run: Run) -> None:
    """Render one view; a problem with the run's files is shown as a message, not a crash."""
    try:
        view.show(run)
    except UserError as err:
        st.error(md(err))


if __name__ == "__main__":
    main()
