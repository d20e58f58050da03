"""A file's pages in memory as the kernel counts them (cachestat(2), Linux 6.5+): how much of
what was written the disk does not have yet, and how much of the file is cached at all."""

from __future__ import annotations

import ctypes
import os

CACHESTAT = 451  # one number on every architecture but alpha (syscalls added since 5.1)


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _CacheStat(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("cache", "dirty", "writeback", "evicted", "recently_evicted")
    ]


def _cachestat(fd: int, start: int = 0, length: int = 0) -> _CacheStat:
    found, span = _CacheStat(), _Range(start, length)  # length 0: to the end of the file
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(CACHESTAT, fd, ctypes.byref(span), ctypes.byref(found), 0) != 0:
        code = ctypes.get_errno()
        raise AssertionError(f"cachestat(2) failed ({os.strerror(code)}): needs Linux 6.5+")
    return found


def waiting_bytes(fd: int) -> int:
    """The file's pages in memory that the disk does not have yet (dirty or being written)."""
    found = _cachestat(fd)
    return (found.dirty + found.writeback) * os.sysconf("SC_PAGE_SIZE")


def cached_bytes(fd: int, start: int = 0, length: int = 0) -> int:
    """The file's pages in memory (from `start`, `length` bytes; 0: to its end), whether the
    disk has them or not."""
    return _cachestat(fd, start, length).cache * os.sysconf("SC_PAGE_SIZE")
