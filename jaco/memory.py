"""glibc malloc settings for the processes that move a backup through Python.

Two habits of glibc's malloc cost jaco's processes time or memory, and `mallopt` changes both
from inside the process. A setting the operator made (a `MALLOC_*` variable or a
`GLIBC_TUNABLES` entry, read by glibc at start) is left as it is.

- **Arenas** (`cap_malloc_arenas`, called by `import flows`). A flow process runs many threads
  (Prefect's API, log and event workers, boto3's transfer threads, the decrypter, the archive
  hasher); glibc gives each new thread an arena of its own, up to eight per core, and memory
  freed in an arena stays with the process. On a 10⁶-key cluster the backup-cluster flow's
  process peaked at 217–219 MiB with glibc's default and at 187–189 MiB with two arenas, at the
  same speed.
- **Giving freed memory back at once** (`keep_freed_memory`, called by `jaco backup`). A
  backup's messages are 1 MiB each. glibc returns the top of its heap to the kernel as soon as
  2 MiB of it are free, so the next messages are written to pages the kernel must map again:
  `jaco backup` of a 512 MiB store took 79 000–225 000 page faults, and 16 000–19 000 once up
  to 8 MiB of freed memory is kept and blocks under 4 MiB come from the heap; its CPU fell by
  0.1–0.9 s (docs/benchmarks.md, stop 44). Its peak RSS did not move. The flows do not set it:
  in the flow's process (Prefect's and boto3's allocations beside the backup's) it bought
  nothing measurable, and blocks of 4 MiB and more, such as boto3's 8 MiB upload parts, would
  be mapped afresh each time.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

ARENAS = 2
TRIM_THRESHOLD = 8 * 1024 * 1024  # free memory kept at the top of a heap
MMAP_THRESHOLD = 4 * 1024 * 1024  # blocks under this come from the heap, not mmap
# glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_THRESHOLDS = (  # the variable, the tunable, mallopt's parameter, jaco's value
    ("MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold", _M_MMAP_THRESHOLD, MMAP_THRESHOLD),
    ("MALLOC_TRIM_THRESHOLD_", "glibc.malloc.trim_threshold", _M_TRIM_THRESHOLD, TRIM_THRESHOLD),
)


def _mallopt() -> Callable[[int, int], int] | None:
    """The C library's mallopt, or None where there is none (not glibc)."""
    try:
        return ctypes.CDLL(None).mallopt  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def _chosen(variable: str, tunable: str) -> bool:
    """Did the operator set this malloc parameter, as a variable or in GLIBC_TUNABLES?"""
    tunables = os.environ.get("GLIBC_TUNABLES", "").split(":")
    return variable in os.environ or any(t.startswith(f"{tunable}=") for t in tunables)


def cap_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap the arenas of threads started from now on; False where nothing was capped (the
    operator chose a cap, or no glibc mallopt). Threads that already have an arena keep it:
    call this before a flow's threads start."""
    mallopt = _mallopt()
    if _chosen("MALLOC_ARENA_MAX", "glibc.malloc.arena_max") or mallopt is None:
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))


def keep_freed_memory() -> list[str]:
    """Keep up to TRIM_THRESHOLD of freed memory at the top of a heap for the next blocks, and
    take blocks under MMAP_THRESHOLD from the heap; returns the names of the variables whose
    setting was made. Setting either ends glibc's own adjustment of both (what returns the
    heap's top after every few freed messages), so where the operator chose one, the other is
    still set here."""
    mallopt = _mallopt()
    if mallopt is None:
        return []
    return [
        variable
        for variable, tunable, parameter, value in _THRESHOLDS
        if not _chosen(variable, tunable) and mallopt(parameter, value)
    ]
