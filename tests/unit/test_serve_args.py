"""`python -m deployments.serve --poll-seconds`: a whole number of seconds, 1 or more. Prefect's
runner takes 0 or less as no pause at all between its asks of the Prefect server."""

from __future__ import annotations

import pytest

from deployments.serve import main


@pytest.mark.parametrize("given", ["0", "-3", "1.5", "often", "²"])
def test_a_poll_interval_that_is_not_a_whole_positive_number_is_refused(
    given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        main(["--config", "/nonexistent/clusters.toml", "--poll-seconds", given])
    assert ended.value.code == 2
    said = capsys.readouterr()
    assert said.err.splitlines()[-1] == (
        "python -m deployments.serve: error: argument --poll-seconds: "
        f"{given!r} is not a whole number of seconds, 1 or more"
    )
    assert said.out == ""
