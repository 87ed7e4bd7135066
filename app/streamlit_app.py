"""dermlow review app: where a dermoscopy model struggles, and which images deserve a second look.

Start it with `dermlow app RUNS_DIR` (or `streamlit run app/streamlit_app.py -- --runs RUNS_DIR`).
It reads run folders only, through dermlow.runs / flags / review, and works on runs that are still
training. Layout follows the streamlit demo-self-driving app: main() -> run_the_app(), which
reads as named steps; small *_ui() functions return the user's choices.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling view modules, also under AppTest

import review_cases as cases  # noqa: E402
import review_data as data  # noqa: E402
import review_evidence as evidence  # noqa: E402
import review_results as results  # noqa: E402
import streamlit as st  # noqa: E402

from dermlow.rundir import files  # noqa: E402
from dermlow.errors import UserError  # noqa: E402
from dermlow.rundir.reader import Run  # noqa: E402

RUNS_ENV = "DERMLOW_RUNS"
VIEWS = {
    "Runs": "compare runs",
    "Per-class": "metrics per class",
    "Weights over training": "LOW weights per epoch",
    "Lesion galleries": "lowest / highest weighted",
    "Case": "one image in detail",
    "Review": "flagged cases",
    "Duplicates": "near-identical images, leaks",
}


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
    run_dirs = find_runs_or_explain(root)
    if not run_dirs:
        return
    view = view_selector_ui()
    if view == "Runs":
        results.runs_view(runs_selector_ui(run_dirs))
        return
    run = load_run_or_explain(run_selector_ui(run_dirs))
    if run is None:
        return
    run_status_ui(run)
    show_view(view, run)


def runs_folder_ui() -> str:
    st.sidebar.title("dermlow review")
    return st.sidebar.text_input("Runs folder", value=default_runs_path(), key="root",
                                 help="A run folder (runs/<name>) or a folder holding several runs.")


def find_runs_or_explain(root: str) -> list[str]:
    try:
        return data.find_runs(root)
    except UserError as err:
        st.error(str(err))
        return []


def view_selector_ui() -> str:
    st.session_state.setdefault("view", "Runs")
    return st.sidebar.radio("View", list(VIEWS), key="view", captions=list(VIEWS.values()))


def _short(run_dir: str) -> str:
    return Path(run_dir).name


def runs_selector_ui(run_dirs: list[str]) -> list[str]:
    if len(run_dirs) == 1:
        return run_dirs
    return st.sidebar.multiselect("Runs to compare", run_dirs, default=run_dirs, format_func=_short, key="compare")


def run_selector_ui(run_dirs: list[str]) -> str:
    """The run to look at; kept while the user visits the Runs view (which hides this box)."""
    if st.session_state.get("run") not in run_dirs:
        kept = st.session_state.get("run_choice")
        st.session_state["run"] = kept if kept in run_dirs else run_dirs[0]
    choice = st.sidebar.selectbox("Run", run_dirs, format_func=_short, key="run")
    st.session_state["run_choice"] = choice
    return choice


def load_run_or_explain(run_dir: str) -> Run | None:
    try:
        return data.load_run(run_dir, data.stamp(run_dir))
    except UserError as err:
        st.error(str(err))
        return None


def run_status_ui(run: Run) -> None:
    planned = run.epochs_planned or "?"
    state = "finished" if run.done else "still training" if run.epochs_done else "no epoch completed yet"
    st.sidebar.caption(f"**{run.name}** — epoch {run.epochs_done} of {planned}, {state}.")
    if not run.done:
        st.sidebar.button("Reload", help="Show the epochs written since the page was opened.")
    warnings = run.path / files.WARNINGS
    if warnings.is_file() and warnings.stat().st_size:
        with st.sidebar.expander("Training warnings"):
            st.text(warnings.read_text(errors="replace")[-3000:])


def show_view(view: str, run: Run) -> None:
    """Render one view; a problem with the run's files is shown as a message, not a crash."""
    pages = {"Per-class": results.per_class_view, "Weights over training": results.weights_view,
             "Lesion galleries": cases.galleries_view, "Case": cases.case_view, "Review": cases.review_view,
             "Duplicates": evidence.duplicates_view}
    try:
        pages[view](run)
    except UserError as err:
        st.error(str(err))


if __name__ == "__main__":
    main()
