"""bench.ceiling measures this tree's jacod beside a copy patched to relay only
(bench/ceiling.patch): the patch must still apply, or the bench measures nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

TOP = Path(__file__).resolve().parents[2]


def test_the_relay_only_patch_applies_to_this_tree() -> None:
    check = subprocess.run(
        ["git", "-C", str(TOP), "apply", "--check", "bench/ceiling.patch"],
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
