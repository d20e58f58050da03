"""A file's pages in memory as the kernel counts them (cachestat(2), Linux 6.5+): how much of
what was written the disk does not have yet."""

from __future__ import annotations

import ctypes
import os
import platform

CACHESTAT = {"x86_64": 451, "aarch64": 451}  # include/uapi/asm-generic/unistd.h


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _CacheStat(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("cache", "dirty", "writeback", "evicted", "recently_evicted")
    ]


def waiting_bytes(fd: int) -> int:
    """The file's pages in memory that the disk does not have yet (dirty or being written)."""
    number = CACHESTAT.get(platform.machine())
    assert number is not None, f"cachestat's number on {platform.machine()} is not known here"
    found, whole = _CacheStat(), _Range(0, 0)  # len 0: to the end of the file
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(number, fd, ctypes.byref(whole), ctypes.byref(found), 0) != 0:
        code = ctypes.get_errno()
        raise AssertionError(f"cachestat(2) failed ({os.strerror(code)}): needs Linux 6.5+")
    return (found.dirty + found.writeback) * os.sysconf("SC_PAGE_SIZE")
