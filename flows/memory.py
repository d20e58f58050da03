"""How many malloc arenas a flow process keeps.

A flow process runs many threads (Prefect's API, log and event workers, boto3's transfer
threads, the decrypter, the archive hasher). glibc's malloc gives each new thread an arena of
its own, up to eight per core, and memory freed in an arena stays with the process. Measured on
a 10⁶-key cluster (docs/benchmarks.md), the backup-cluster flow's process peaked at 217–219 MiB
with glibc's default and at 187–189 MiB with two arenas, at the same speed. Importing `flows`
caps them at two, as `MALLOC_ARENA_MAX=2` would; an operator's own `MALLOC_ARENA_MAX` wins.
"""

from __future__ import annotations

import ctypes
import os

ARENAS = 2
_M_ARENA_MAX = -8  # glibc's malloc.h


def cap_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap the arenas of threads started from now on; False where nothing was capped (the
    environment sets MALLOC_ARENA_MAX, read by glibc at start; or no glibc mallopt). Threads
    that already have an arena keep it: call this before a flow's threads start."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))
