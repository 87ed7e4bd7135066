"""The `dermlow review` subcommand: export cases for review, import decisions, show the state."""

from __future__ import annotations

import argparse
from pathlib import Path

DB_HELP = "review database (default RUN/review.sqlite); share one between runs on the same data"


def add_review(subparsers) -> None:
    """Add `review` (export, import, status) to the `dermlow` subcommands."""
    p = subparsers.add_parser(
        "review", help="send flagged cases to reviewers, bring their decisions back, see where they agree",
        description="Reviewers' decisions (confirm, relabel, exclude, unsure) about training images, kept in an "
        "SQLite database with their history (docs/review.md). Train on them with `dermlow train --review`.")
    sub = p.add_subparsers(title="review commands", metavar="ACTION")

    ex = sub.add_parser("export", help="write the cases with the highest flag score as CSV or Label Studio tasks",
                        description="Training images ranked by flag score, with the model's prediction and the "
                        "review state. --format labelstudio also writes <OUT stem>.labeling.xml, the labeling config.")
    ex.add_argument("run_dir", type=Path, metavar="RUN")
    ex.add_argument("--format", choices=("csv", "labelstudio"), default="csv")
    ex.add_argument("--out", type=Path, required=True, help="CSV or JSON file to write")
    ex.add_argument("--top", type=int, help="the N highest flag scores (per class with --per-class)")
    ex.add_argument("--per-class", action="store_true", help="rank within each given label")
    ex.add_argument("--review-db", type=Path, help=DB_HELP)
    ex.add_argument("--document-root", type=Path, help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (default: "
                    "that variable, else the run's data folder); image URLs are relative to it")
    ex.set_defaults(func=_export)

    im = sub.add_parser("import", help="record decisions from a Label Studio JSON export or a CSV",
                        description="FILE.json: a Label Studio 'JSON' export of tasks from `review export --format "
                        "labelstudio`. Otherwise a CSV with image_id, decision, label (or relabel_to), note. Every row "
                        "is checked first; one bad row and nothing is imported.")
    im.add_argument("run_dir", type=Path, metavar="RUN")
    im.add_argument("file", type=Path, metavar="FILE")
    im.add_argument("--reviewer", required=True, help="whose decisions these are")
    im.add_argument("--adjudicator", action="store_true", help="the reviewer adjudicates: their decisions settle ties")
    im.add_argument("--review-db", type=Path, help=DB_HELP)
    im.set_defaults(func=_import)

    st = sub.add_parser("status", help="decisions per class, agreement between reviewers, unresolved cases")
    st.add_argument("run_dir", type=Path, metavar="RUN")
    st.add_argument("--review-db", type=Path, help=DB_HELP)
    st.add_argument("--rule", choices=("majority", "absolute", "unanimous"), default="majority",
                    help="how several reviewers' decisions resolve (docs/review.md)")
    st.add_argument("--show", type=int, default=20, help="unresolved cases to list (default 20)")
    st.set_defaults(func=_status)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def _export(args: argparse.Namespace) -> int:
    from dermlow.errors import UserError
    from dermlow.rundir.review_export import export

    if args.top is not None and args.top < 1:
        raise UserError(f"--top must be a positive number of cases, got {args.top}.")
    n, written = export(args.run_dir, args.out, fmt=args.format, top=args.top, per_class=args.per_class,
                        review_db=args.review_db, root=args.document_root)
    print(f"{n} cases written to {written[0]}")
    if len(written) > 1:
        print(f"labeling config: {written[1]} (Settings > Labeling Interface > Code); Label Studio must run with "
              "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and the document root used here (docs/review.md)")
    return 0


def _import(args: argparse.Namespace) -> int:
    from dermlow.rundir.review_import import import_file
    from dermlow.rundir.review_store import db_path

    n = import_file(args.run_dir, args.file, args.reviewer, review_db=args.review_db, adjudicator=args.adjudicator)
    print(f"{n} decision(s) by {args.reviewer.strip()} recorded in {db_path(args.run_dir, args.review_db)}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from dermlow.rundir.review_status import status_text

    print(status_text(args.run_dir, review_db=args.review_db, rule=args.rule, show=args.show))
    return 0
