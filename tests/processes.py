"""Which drill agents and drill containers are this test's, when other tests run beside it
(`make test` runs the suite on two workers; a developer may run a second suite).

An agent process is this test's when its ancestry reaches this process, or when it is an
orphan (a killed run's agent is reparented away from us); it is another's when it, or an
ancestor, is another pytest run (an xdist worker, or the run that started one) or a container
runtime's shim (a drill in a container belongs to the scope its label names). A drill
container is this test's when it carries this process's drill scope (`JACO_DRILL_SCOPE`, set
per pytest process by tests/conftest.py and inherited by the runs it starts)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from flows.sandbox import LABEL, SCOPE_ENV


def own_agents() -> list[int]:
    """Drill agents alive that are this test's (sandboxed by bubblewrap or run plainly)."""
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and b"jaco.drill.agent" in _cmdline(p.name) and not others(int(p.name))
    ]


def own_drill_containers(owner: int | None = None, running: bool = False) -> list[str]:
    """IDs of this process's drill containers (its drill scope), only those running if
    `running`, only those `owner` (a pid) started if given."""
    filters = ["--filter", f"label={LABEL}.scope={os.environ[SCOPE_ENV]}"]
    if owner is not None:
        filters += ["--filter", f"label={LABEL}.pid={owner}"]
    listed = subprocess.run(
        ["docker", "ps", *([] if running else ["-a"]), "-q", *filters],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return listed.stdout.split()


def others(pid: int) -> bool:
    """Is `pid`, or an ancestor short of this process, another pytest run or a container's
    shim?"""
    while pid > 1:
        if pid == os.getpid():
            return False
        if _foreign(_cmdline(str(pid)).split(b"\0")):
            return True
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return False


def _foreign(argv: list[bytes]) -> bool:
    """A pytest run (`pytest …`, `python -m pytest …`), an xdist worker (execnet's
    `python -u -c "import sys;exec(eval(sys.stdin.readline()))"`) or a container runtime's
    shim, by its arguments: not by a mention anywhere (a path under /tmp/pytest-of-root is no
    pytest)."""
    names = [os.path.basename(a).decode(errors="replace") for a in argv[:2]]
    return (
        any(n in ("pytest", "py.test") for n in names)
        or argv[1:3] == [b"-m", b"pytest"]
        or (len(argv) > 3 and argv[2] == b"-c" and argv[3].startswith(b"import sys;exec(eval("))
        or names[0].startswith("containerd-shim")
    )


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
