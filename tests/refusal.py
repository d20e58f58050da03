"""What a refusal of bad input looks like from outside: exactly one line on stderr (no
traceback), the error's exit code, and nothing on stdout."""

from __future__ import annotations

import re

from infra.localcluster import Result


def refused(result: Result, code: int, message: str) -> str:
    """Assert `result` is a one-line refusal matching `message` (a regex); returns the line."""
    assert "Traceback" not in result.err + result.out, result.err
    lines = result.err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.err}"
    assert result.code == code, f"exit {result.code}, not {code}: {result.err}"
    assert re.search(message, lines[0]), lines[0]
    assert result.out == "", result.out
    return lines[0]
