"""Which drill agents and drill containers are this test's, when other tests run beside it
(`make test` runs the suite on two workers; a developer may run a second suite).

A process is this test's when its ancestry reaches this process, or when it is an orphan (a
killed run's agent is reparented away from us). It is another's when its ancestry reaches a
different pytest run (a parallel worker descends from the run that started it) or a container
runtime's shim (a drill in a container belongs to whoever its label names)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from flows.sandbox import LABEL

_FOREIGN = (b"pytest", b"containerd-shim")


def own_agents() -> list[int]:
    """Drill agents alive that are this test's (sandboxed by bubblewrap or run plainly)."""
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and b"jaco.drill.agent" in _cmdline(p) and not _others(int(p.name))
    ]


def own_drill_containers(owner: int | None = None, running: bool = False) -> list[str]:
    """IDs of drill containers (only those running, if `running`) started by `owner`, or
    (None) by this process, a child of it, or a process now dead (a killed run's)."""
    listed = subprocess.run(
        ["docker", "ps", *([] if running else ["-a"]), "--filter", f"label={LABEL}",
         "--format", f'{{{{.ID}}}} {{{{.Label "{LABEL}.pid"}}}}'],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = []
    for line in listed.stdout.splitlines():
        container, _, pid = line.partition(" ")
        if owner is not None:
            if pid == str(owner):
                found.append(container)
        elif not pid.isdigit() or not _others(int(pid)):
            found.append(container)
    return found


def _others(pid: int) -> bool:
    """Does `pid` descend from a pytest run other than this one, or from a container's shim?"""
    while pid > 1:
        if pid == os.getpid():
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid == os.getpid():
            return False
        if any(mark in _cmdline(Path(f"/proc/{pid}")) for mark in _FOREIGN):
            return True
    return False


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
