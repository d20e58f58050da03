"""The docker tests' own check: without a Docker engine they are skipped, for that reason."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def skipped_without_an_engine(module: str, basetemp: Path) -> list[str]:
    """pytest on the other tests of `module` with DOCKER_HOST pointing nowhere: its SKIPPED
    lines, once it is checked that nothing passed and nothing failed."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", module,
         "-k", "not without_an_engine", f"--basetemp={basetemp}"],
        env={**os.environ, "DOCKER_HOST": "tcp://127.0.0.1:9"},
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:]
    assert "passed" not in done.stdout and "failed" not in done.stdout, done.stdout[-500:]
    return [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
