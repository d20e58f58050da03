"""Children that die with the thread that started them (etcd under jacod, etcd's restore tool,
the tests' servers), set by setpriv rather than Python code between fork and exec."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

from infra.localcluster import wait_for
from jaco.node.etcd_member import dying_with_parent


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def test_a_child_started_so_dies_with_the_thread_that_started_it() -> None:
    started: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        cmd, preexec = dying_with_parent(["sleep", "60"], "KILL")
        assert preexec is None and cmd[-2:] == ["sleep", "60"]  # setpriv, no preexec_fn
        started.append(subprocess.Popen(cmd, preexec_fn=preexec))
        # setpriv asks for the signal, then execs: once `sleep` runs, it was asked for (a
        # thread gone before that would leave no parent to die: none of jaco's is that brief)
        wait_for(lambda: _cmdline(started[0].pid).startswith(b"sleep"), 10, "setpriv's exec")

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    assert started[0].wait(10) == -9  # SIGKILL, once the thread had gone
