"""Every benchmark results file the docs quote is in the repository.

bench/results/*.json is ignored by git unless listed as an exception in .gitignore: the four
files stop 25's figures quoted were never committed, and were lost with the machine."""

from __future__ import annotations

import re
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]
RESULT = re.compile(r"\b(?:[a-z]+(?:-[a-z]+)*-)?\d{8}T\d{6}Z\.(?:json|log|txt)\b")


def test_every_results_file_the_docs_quote_is_committed() -> None:
    quoted = {
        name: doc.relative_to(TOP).as_posix()
        for doc in [TOP / "README.md", *sorted((TOP / "docs").glob("*.md"))]
        for name in RESULT.findall(doc.read_text())
    }
    assert quoted, "the pattern finds no results file in the docs"
    missing = {n: d for n, d in quoted.items() if not (TOP / "bench" / "results" / n).is_file()}
    assert not missing, f"quoted but not in bench/results/: {missing}"
