"""`python -m deployments.serve --poll-seconds`: a whole number of seconds, 1 or more. Prefect's
runner takes 0 or less as no pause at all between its asks of the Prefect server."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("given", ["0", "-3", "1.5", "often"])
def test_a_poll_interval_that_is_not_a_whole_positive_number_is_refused(given: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "deployments.serve", "--config", "/nonexistent/clusters.toml",
         "--poll-seconds", given],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        "python -m deployments.serve: error: argument --poll-seconds: "
        f"{given!r} is not a whole number of seconds, 1 or more"
    )
    assert done.stdout == ""
