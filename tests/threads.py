"""The threads of a process as the kernel shows them, for tests that look inside jacod."""

from __future__ import annotations

import contextlib
from pathlib import Path

# The nice of jacod's backup threads above its own (jaco.server.snapshot.BACKUP_NICE): while
# one is there, a backup is being received.
BACKUP_NICE = 10


def nice_of_threads(pid: int) -> dict[int, list[int]]:
    """The threads of `pid` by their nice value."""
    threads: dict[int, list[int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            nice = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
            threads.setdefault(nice, []).append(int(task.name))
    return threads


def receiving(pid: int) -> bool:
    """Whether jacod `pid` has a backup's receiving thread (lowered by BACKUP_NICE)."""
    return BACKUP_NICE in nice_of_threads(pid)
