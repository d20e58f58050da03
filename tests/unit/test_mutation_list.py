"""Every break in infra/mutation.py still names code that exists: a break whose text is gone
from its file is not applied, and the check it was written for goes untested while the table
in docs/testing.md still says it is caught (five had drifted so by stop 28)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.mutation import MUTATIONS, Mutation, parts

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mutation", MUTATIONS, ids=lambda m: m.name)
def test_each_break_names_one_place_in_its_file(mutation: Mutation) -> None:
    text = (ROOT / mutation.path).read_text()
    for old, new in mutation.replacements:
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times"
        text = text.replace(old, new)


def test_each_break_has_a_name_of_its_own() -> None:
    """The runners' rows are gathered by name (`--jobs`): two breaks of one name would report
    one verdict twice and lose the other."""
    names = [x.name for x in MUTATIONS]
    assert len(set(names)) == len(names), sorted({n for n in names if names.count(n) > 1})


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_the_breaks_dealt_to_runners_are_each_run_once_and_native_ones_by_one(jobs: int) -> None:
    """`--jobs`: each break goes to exactly one runner, and every break of native/ to the
    first, the only one that may build a broken module into the shared cargo target."""
    dealt = parts(MUTATIONS, jobs)
    assert len(dealt) == jobs
    names = [x.name for part in dealt for x in part]
    assert sorted(names) == sorted(x.name for x in MUTATIONS)
    native = {x.name for x in MUTATIONS if x.path.startswith("native/")}
    assert native, "the list has breaks of the Rust code"
    assert native <= {x.name for x in dealt[0]}
    assert all(not x.path.startswith("native/") for part in dealt[1:] for x in part)
    assert parts([], jobs) == []
