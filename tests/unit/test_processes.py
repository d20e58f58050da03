"""tests/processes.py: whose drill agent is whose, when two pytest runs share the machine."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import others

# Starts a child, says its pid, sleeps (this interpreter by its path: one run as "pytest"
# would find another sys.executable).
PARENT = (
    "import subprocess, time; "
    f"c = subprocess.Popen([{sys.executable!r}, '-c', 'import time; time.sleep(60)']); "
    "print(c.pid, flush=True); time.sleep(60)"
)
XDIST_WORKER = "import sys;exec(eval(sys.stdin.readline()))"  # execnet's, as /proc shows it


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        process.kill()
        process.wait()


def _start(started: list[subprocess.Popen[str]], argv: list[str], stdin: str = "") -> list[int]:
    """[pid, its child's pid] of a process run with `argv` (the interpreter, as /proc shows)."""
    parent = subprocess.Popen(
        argv, executable=sys.executable, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    started.append(parent)
    assert parent.stdin is not None and parent.stdout is not None
    parent.stdin.write(stdin)
    parent.stdin.flush()
    return [parent.pid, int(parent.stdout.readline())]


def test_a_run_of_ours_naming_pytest_in_an_argument_is_ours(
    started: list[subprocess.Popen[str]],
) -> None:
    """A drill run started by a test carries the test's tmp_path (/tmp/pytest-of-root/…) in
    its arguments: still ours, and so is what it starts."""
    pids = _start(started, ["python", "-c", PARENT, "/tmp/pytest-of-root/pytest-1/drills"])
    assert [others(pid) for pid in pids] == [False, False]


def test_another_pytest_run_and_what_it_starts_are_another_s(
    started: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    script = tmp_path / "pytest"
    script.write_text(PARENT)
    pids = _start(started, ["pytest", "-c", PARENT])  # a pytest entry point
    pids += _start(started, ["python", str(script)])  # python .venv/bin/pytest
    pids += _start(started, ["python", "-u", "-c", XDIST_WORKER], f"{PARENT!r}\n")  # a worker
    assert [others(pid) for pid in pids] == [True] * 6
