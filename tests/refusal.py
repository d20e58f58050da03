"""What a refusal of bad input looks like from outside: exactly one line on stderr (no
traceback), the error's exit code, and nothing on stdout. And a server that must not be
contacted (conftest's `silent_server`): `untouched` tells whether anyone knocked."""

from __future__ import annotations

import re
import socket

from infra.localcluster import Result

# A token of the right shape: a client would use it to fetch the server's CA.
SHAPED_TOKEN = f"jaco1.op.{'a' * 64}.{'b' * 12}.{'c' * 43}"


def refused(result: Result, code: int, message: str) -> str:
    """Assert `result` is a one-line refusal matching `message` (a regex); returns the line."""
    assert "Traceback" not in result.err + result.out, result.err
    lines = result.err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.err}"
    assert result.code == code, f"exit {result.code}, not {code}: {result.err}"
    assert re.search(message, lines[0]), lines[0]
    assert result.out == "", result.out
    return lines[0]


def untouched(listener: socket.socket) -> bool:
    try:
        listener.accept()[0].close()
    except BlockingIOError:
        return True
    return False


def silent_env(listener: socket.socket) -> dict[str, str]:
    return {"JACO_SERVER": f"127.0.0.1:{listener.getsockname()[1]}", "JACO_TOKEN": SHAPED_TOKEN}
