"""Mutation check: which behaviours does the test suite pin?

Each mutation in benchmarks/mutations.yaml replaces one exact piece of text in one file. The script
copies the repository (the files git tracks or would track: no .venv, no runs) to a temporary
folder, applies the mutation there (never in the working tree), runs the mutation's test files
with PYTHONPATH set to the copy and reports:

    killed    a test failed (the suite pins the behaviour)
    survived  every test passed (nothing pins it)
    stale     the text to replace is not in the file exactly once (the code moved: update the entry)
    timeout   the tests ran past --timeout
    error     pytest could not run the listed tests (a path or test name that does not exist)

First it runs every listed test on an unmutated copy (the baseline); if that fails, a "killed"
would mean nothing, so it stops. Exit status: 0 when every mutation is killed, 1 otherwise, 2 when
the baseline fails. The table is Markdown, for docs/testing.md.

    NO_ALBUMENTATIONS_UPDATE=1 .venv/bin/python benchmarks/mutations.py [--only NAME ...] [--out table.md]
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
DEFAULT_LIST = Path(__file__).resolve().parent / "mutations.yaml"
FIELDS = ("name", "file", "old", "new", "tests", "why")


@dataclass
class Mutation:
    name: str
    file: str
    old: str
    new: str
    tests: list[str]
    why: str


@dataclass
class Outcome:
    mutation: Mutation
    result: str  # killed | survived | stale | timeout | error
    detail: str  # the failing test, or why stale
    seconds: float


def read_mutations(path: Path) -> list[Mutation]:
    """The mutations of a YAML list, checked: every field present, names unique, old != new."""
    entries = yaml.safe_load(path.read_text()) or []
    if not isinstance(entries, list):
        raise SystemExit(f"{path}: expected a list of mutations")
    out, names = [], set()
    for i, entry in enumerate(entries, 1):
        missing = [f for f in FIELDS if not isinstance(entry, dict) or f not in entry]
        if missing:
            raise SystemExit(f"{path}: mutation {i} lacks {', '.join(missing)}")
        m = Mutation(**{f: entry[f] for f in FIELDS})
        if m.name in names:
            raise SystemExit(f"{path}: two mutations are named {m.name!r}")
        if m.old == m.new or not m.tests:
            raise SystemExit(f"{path}: mutation {m.name!r} changes nothing or runs no test")
        names.add(m.name)
        out.append(m)
    return out


def copy_repo(dest: Path) -> Path:
    """Copy the files git tracks or would track (cached + untracked, not ignored) to `dest`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if not src.exists() and not src.is_symlink():  # deleted in the working tree
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)
    link_mapped_packages(dest)
    return dest


def mapped_packages(copy: Path) -> dict[str, str]:
    """Packages that pyproject.toml maps to other folders ([tool.setuptools.package-dir], e.g.
    dermlow._app = app)."""
    pyproject = tomllib.loads((copy / "pyproject.toml").read_text())
    mapping = pyproject.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    return {package: folder for package, folder in mapping.items() if package}


def link_mapped_packages(copy: Path) -> None:
    """Make the mapped packages importable from the copy through PYTHONPATH, as an editable install
    of the copy would (a symlink dermlow/_app -> ../app); otherwise they would come from whichever
    checkout the interpreter's environment has installed, and mutations there would go untested."""
    for package, folder in mapped_packages(copy).items():
        link = copy.joinpath(*package.split("."))
        if not link.exists():
            link.symlink_to(os.path.relpath(copy / folder, link.parent), target_is_directory=True)


def apply(copy: Path, m: Mutation) -> str | None:
    """Apply `m` inside `copy`; the reason it is stale, or None when applied."""
    path = copy / m.file
    if not path.is_file():
        return f"{m.file} does not exist"
    text = path.read_text()
    count = text.count(m.old)
    if count != 1:
        return f"old text found {count} times in {m.file}"
    path.write_text(text.replace(m.old, m.new))
    return None


def child_env(copy: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(copy), "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}
    scorer = REPO / ".venv-scoring" / "bin" / "python"  # the copy has no venvs of its own
    if "DERMLOW_SCORING_PYTHON" not in env and scorer.exists():
        env["DERMLOW_SCORING_PYTHON"] = str(scorer)
    return env


def run_tests(python: str, copy: Path, tests: list[str], timeout: float, markers: str) -> tuple[str, str]:
    """(result, detail) of `pytest -x -m markers tests` in `copy`: passed / failed (first failing
    test) / timeout / error."""
    cmd = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header", "-m", markers, *tests]
    try:
        proc = subprocess.run(cmd, cwd=copy, env=child_env(copy), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"over {timeout:g} s"
    if proc.returncode == 0:
        return "passed", ""
    if proc.returncode in (4, 5):  # usage error (e.g. a test path that does not exist) / no tests collected
        return "error", f"pytest exit {proc.returncode}: {(proc.stdout + proc.stderr).strip()[-200:]}"
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.MULTILINE)
    if failed:
        return "failed", failed[0]
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [f"pytest exit {proc.returncode}"]
    return "failed", tail[0][:120]


def check_imports_from(python: str, copy: Path) -> None:
    """Stop unless dermlow and its mapped packages load from the copy in the test environment (not
    from an installed checkout)."""
    for package in ["dermlow", *mapped_packages(copy)]:
        code = f"import importlib.util; print(importlib.util.find_spec({package!r}).submodule_search_locations[0])"
        out = subprocess.run([python, "-c", code], cwd=copy, env=child_env(copy), capture_output=True, text=True,
                             check=True).stdout.strip()
        if not Path(out).resolve().is_relative_to(copy.resolve()):
            raise SystemExit(f"{package} loads from {out}, not from the copy under {copy}: mutations would not be tested")


def mutate_and_test(python: str, m: Mutation, timeout: float, markers: str) -> Outcome:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"dermlow-mutant-{m.name}-") as tmp:
        copy = copy_repo(Path(tmp))
        stale = apply(copy, m)
        if stale:
            return Outcome(m, "stale", stale, time.perf_counter() - start)
        result, detail = run_tests(python, copy, m.tests, timeout, markers)
    verdict = {"passed": "survived", "failed": "killed", "timeout": "timeout", "error": "error"}[result]
    return Outcome(m, verdict, detail, time.perf_counter() - start)


def commit() -> str:
    """HEAD's short hash, with "+ local changes" when the working tree differs from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return head.strip() + (" + local changes" if dirty else "")


def table(outcomes: list[Outcome]) -> str:
    """The Markdown table of the outcomes, with a totals line."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| mutation | file | breaks | result | caught by / why | s |", "|---|---|---|---|---|---|"]
    for o in outcomes:
        lines.append(f"| {o.mutation.name} | `{o.mutation.file}` | {cell(o.mutation.why)} | **{o.result}** | "
                     f"{cell(o.detail)} | {o.seconds:.0f} |")
    counts = {r: sum(o.result == r for o in outcomes) for r in ("killed", "survived", "stale", "timeout", "error")}
    lines.append("")
    lines.append(", ".join(f"{n} {r}" for r, n in counts.items() if n or r in ("killed", "survived")))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Mutations: benchmarks/mutations.yaml (its header says how to add one).")
    parser.add_argument("--mutations", type=Path, default=DEFAULT_LIST, help="YAML list of mutations")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run only these (repeatable)")
    parser.add_argument("--python", default=sys.executable, help="interpreter with the test dependencies")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per test run")
    parser.add_argument("--markers", default="not slow and not browser",
                        help="pytest -m expression (default: %(default)s; a listed test it deselects is an error)")
    parser.add_argument("--skip-baseline", action="store_true", help="do not run the unmutated tests first")
    parser.add_argument("--out", type=Path, help="also write the Markdown table to this file")
    args = parser.parse_args(argv)

    mutations = read_mutations(args.mutations)
    unknown = sorted(set(args.only) - {m.name for m in mutations})
    if unknown:
        parser.error(f"unknown mutation(s) {', '.join(unknown)}")
    if args.only:
        mutations = [m for m in mutations if m.name in args.only]
    when = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    started, version = time.perf_counter(), commit()
    print(f"{len(mutations)} mutations, commit {version}, {when}", flush=True)

    with tempfile.TemporaryDirectory(prefix="dermlow-baseline-") as tmp:
        copy = copy_repo(Path(tmp))
        check_imports_from(args.python, copy)
        if not args.skip_baseline:
            tests = list(dict.fromkeys(t for m in mutations for t in m.tests))
            start = time.perf_counter()
            result, detail = run_tests(args.python, copy, tests, args.timeout * 2, args.markers)
            if result != "passed":
                print(f"baseline: the unmutated tests did not pass ({result}: {detail}); fix that first")
                return 2
            print(f"baseline: {len(tests)} test paths pass unmutated ({time.perf_counter() - start:.0f} s)", flush=True)

    outcomes = []
    for m in mutations:
        outcomes.append(mutate_and_test(args.python, m, args.timeout, args.markers))
        o = outcomes[-1]
        print(f"{m.name}: {o.result} {o.detail} ({o.seconds:.0f} s)", flush=True)
    report = table(outcomes)
    print(f"\ntotal {time.perf_counter() - started:.0f} s\n")
    print(report)
    if args.out:
        args.out.write_text(f"Commit {version}, {when}.\n\n{report}\n")
    return 0 if all(o.result == "killed" for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
