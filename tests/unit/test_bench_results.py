"""Every benchmark results file the docs quote is in the repository.

bench/results/*.json is ignored by git unless listed as an exception in .gitignore: the four
files stop 25's figures quoted were never committed, and were lost with the machine."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
RESULT = re.compile(r"\b(?:[a-z][a-z0-9]*(?:-[a-z0-9]+)*-)?\d{8}T\d{6}Z\.(?:json|log|txt)\b")


def test_every_results_file_the_docs_quote_is_committed() -> None:
    quoted = {
        name: doc.relative_to(TOP).as_posix()
        for doc in [TOP / "README.md", *sorted((TOP / "docs").glob("*.md"))]
        for name in RESULT.findall(doc.read_text())
    }
    assert quoted, "the pattern finds no results file in the docs"
    # committed, not merely on this disk: results files are ignored by git unless listed
    listed = subprocess.run(
        ["git", "-C", str(TOP), "ls-files", "bench/results"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    committed = {Path(f).name for f in listed}
    missing = {n: d for n, d in quoted.items() if n not in committed}
    assert not missing, f"quoted but not committed in bench/results/: {missing}"
