"""glibc malloc settings for the processes that move a backup through Python.

Two habits of glibc's malloc cost jaco's processes time or memory, and `mallopt` changes both
from inside the process (an operator's own MALLOC_* variable, read by glibc at start, wins):

- **Arenas** (`cap_malloc_arenas`). A flow process runs many threads (Prefect's API, log and
  event workers, boto3's transfer threads, the decrypter, the archive hasher); glibc gives each
  new thread an arena of its own, up to eight per core, and memory freed in an arena stays with
  the process. On a 10⁶-key cluster the backup-cluster flow's process peaked at 217–219 MiB
  with glibc's default and at 187–189 MiB with two arenas, at the same speed.
- **Giving freed memory back at once** (`keep_freed_memory`). A backup's messages are 1 MiB
  each. glibc returns the top of its heap to the kernel as soon as 2 MiB of it are free, so the
  next messages are written to pages the kernel must map again: `jaco backup` of a 512 MiB
  store took 80 000–225 000 page faults, where it takes 16 000–18 000 once freed memory is kept
  up to 8 MiB and blocks under 4 MiB come from the heap, and its CPU fell by 0.1–0.9 s
  (docs/benchmarks.md, stop 44). Its peak RSS did not move.
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


def _mallopt() -> Callable[[int, int], int] | None:
    """The C library's mallopt, or None where there is none (not glibc)."""
    try:
        return ctypes.CDLL(None).mallopt  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def cap_malloc_arenas(arenas: int = ARENAS) -> bool:
    """Cap the arenas of threads started from now on; False where nothing was capped (the
    environment sets MALLOC_ARENA_MAX, read by glibc at start; or no glibc mallopt). Threads
    that already have an arena keep it: call this before a flow's threads start."""
    mallopt = _mallopt()
    if "MALLOC_ARENA_MAX" in os.environ or mallopt is None:
        return False
    return bool(mallopt(_M_ARENA_MAX, arenas))


def keep_freed_memory() -> bool:
    """Keep up to TRIM_THRESHOLD of freed memory per heap for the next blocks, and take blocks
    under MMAP_THRESHOLD from the heap; False where nothing was set (the environment sets
    either threshold, or no glibc mallopt). Setting them also ends glibc's own adjustment of
    both, which is what returns the heap's top after every few freed messages."""
    mallopt = _mallopt()
    chosen = {"MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"} & os.environ.keys()
    if chosen or mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
