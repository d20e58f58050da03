"""What a drill sandbox may take of its host: the cap of its tmpfs (`JACO_DRILL_TMPFS`), read
the same by both drivers, and whether this host's bubblewrap can apply it."""

from __future__ import annotations

import functools
import os
import re
import stat
import subprocess

from flows.errors import PipelineError

TMPFS_ENV = "JACO_DRILL_TMPFS"  # each sandbox tmpfs's cap: bytes, or a number with k, m or g
UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def tmpfs_bytes() -> int:
    """The cap of each of a sandbox's two tmpfs (the restored node's data dir, /tmp): a drill
    that needs more fails at that point (ENOSPC), it does not take the host's memory."""
    raw = os.environ.get(TMPFS_ENV, "8g").strip().lower()
    found = re.fullmatch(r"([0-9]+)([kmg]?)", raw)
    if found is None or int(found[1]) == 0:
        raise PipelineError(f"{TMPFS_ENV}={raw!r}: not a size (bytes, or a number with k, m or g)")
    return int(found[1]) * UNITS[found[2]]


@functools.cache
def can_cap_tmpfs(bwrap: str) -> None:
    """Refuse a bwrap that cannot cap its tmpfs (`--size`: bubblewrap 0.7 or later, and never
    in setuid mode): uncapped, a drill's tmpfs may take half of this host's memory."""
    if os.stat(bwrap).st_mode & stat.S_ISUID:
        why = "is setuid, and a setuid bwrap may not cap a tmpfs (--size)"
    else:
        done = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=30)
        if "--size" in done.stdout + done.stderr:
            return
        why = "cannot cap a tmpfs (no --size: bubblewrap 0.7 or later has it)"
    raise PipelineError(f"{bwrap} {why}: install one that can, or use the docker driver")
