"""How bench's A/B modules name the trees they compare (bench.node_ready.trees_of): a tree
with uncommitted changes to the code a bench runs must not read as its base commit, or an
uncommitted A/B against a `--before` of that commit reads as the same code twice."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from bench.node_ready import HERE, commit_of, described_commit, trees_of


def _git(tree: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(tree), *args], check=True, capture_output=True)


@pytest.mark.parametrize("changed", ["jaco/x.py", "flows/y.py", "native/src/z.rs"])
def test_a_tree_with_uncommitted_code_is_named_so(tmp_path: Path, changed: str) -> None:
    tree = tmp_path / "tree"
    (tree / Path(changed).parent).mkdir(parents=True)
    (tree / changed).write_text("one\n")
    (tree / "README.md").write_text("docs\n")
    _git(tree, "init", "-q")
    _git(tree, "add", "-A")
    _git(tree, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base")
    base = commit_of(tree)
    assert described_commit(tree) == base
    (tree / "README.md").write_text("docs changed\n")  # not code a bench runs
    assert described_commit(tree) == base
    (tree / changed).write_text("two\n")
    assert described_commit(tree) == f"{base} with uncommitted changes"
    names = trees_of([tree])
    assert f"{base} with uncommitted changes" in names
    assert names[f"{described_commit(HERE)} (this tree)"] == HERE
