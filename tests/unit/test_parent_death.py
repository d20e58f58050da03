"""Children that die with the thread that started them (etcd under jacod, etcd's restore tool,
the tests' servers), set by setpriv rather than Python code between fork and exec; a
preexec_fn only where setpriv is missing."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from infra.localcluster import wait_for
from jaco.node.etcd_member import dying_with_parent


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def _started_from_a_thread_that_ends() -> tuple[list[str], int]:
    """Start `sleep 60` dying with parent (SIGKILL) from a thread that then ends: (the command
    it was started with, how it ended)."""
    started: list[tuple[list[str], subprocess.Popen[bytes]]] = []

    def start() -> None:
        cmd, preexec = dying_with_parent(["sleep", "60"], "KILL")
        started.append((cmd, subprocess.Popen(cmd, preexec_fn=preexec)))
        # setpriv asks for the signal, then execs: once `sleep` runs, it was asked for (a
        # thread gone before that would leave no parent to die: none of jaco's is that brief)
        wait_for(lambda: _cmdline(started[0][1].pid).startswith(b"sleep"), 10, "the exec")

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    cmd, child = started[0]
    try:
        return cmd, child.wait(10)
    finally:
        child.kill()


def test_a_child_started_so_dies_with_the_thread_that_started_it() -> None:
    cmd, ended = _started_from_a_thread_that_ends()
    assert cmd[0].endswith("setpriv") and cmd[-2:] == ["sleep", "60"]
    assert ended == -9  # SIGKILL, once the thread had gone


def test_without_setpriv_a_preexec_fn_asks_for_the_same_signal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    cmd, ended = _started_from_a_thread_that_ends()
    assert cmd == ["sleep", "60"] and ended == -9
