"""jaco.files.WriteBehind: a long write to disk keeps few of its pages waiting in memory, so a
2 GiB backup's pages are not written back by the kernel in one long stretch beside etcd's log
fsyncs (docs/benchmarks.md, stop 42). The pages are counted by the kernel (cachestat(2),
Linux 6.5+); a disk that fails its writes is a real one (ext4 on a loop device whose backing
file cannot grow), and its error is raised, not left for an fsync that would no longer see
it."""

from __future__ import annotations

import ctypes
import errno
import os
import tempfile
from pathlib import Path
from typing import IO

import pytest

import jaco.files
from jaco.files import WriteBehind
from tests.mounts import failing_disk
from tests.pages import cached_bytes, waiting_bytes

MIB = 1024 * 1024


def _write(out: IO[bytes], behind: WriteBehind | None, mib: int = 64) -> None:
    block = os.urandom(MIB)
    for _ in range(mib):
        out.write(block)
        out.flush()
        if behind is not None:
            behind.wrote()


def test_a_long_write_keeps_at_most_two_windows_waiting_for_the_disk() -> None:
    # /var/tmp is a disk's filesystem here, as on CI: tmpfs pages are never written back
    with tempfile.NamedTemporaryFile(dir="/var/tmp") as plain:
        _write(plain, None)
        left_to_the_kernel = waiting_bytes(plain.fileno())
    with tempfile.NamedTemporaryFile(dir="/var/tmp") as out:
        _write(out, WriteBehind(out, 4 * MIB))
        waiting = waiting_bytes(out.fileno())
        assert os.fstat(out.fileno()).st_size == 64 * MIB
    # the kernel alone writes back after 30 s or at the machine's dirty limit: all 64 MiB wait
    assert left_to_the_kernel >= 32 * MIB, left_to_the_kernel
    # the window being written, the one started, and the last MiB not yet a whole window
    assert waiting <= 2 * 4 * MIB + MIB, waiting


def test_a_long_write_keeps_few_of_its_pages_in_memory_once_written() -> None:
    """Written back, a window's pages are dropped from the page cache too: a 2 GiB archive does
    not take 2 GiB of the node's memory, nor, on a VM that hands freed memory to its host,
    2 GiB of first touches (docs/benchmarks.md, stop 47). What was written is all there."""
    with tempfile.NamedTemporaryFile(dir="/var/tmp") as plain:
        _write(plain, None)
        os.fsync(plain.fileno())
        kept_by_the_kernel = cached_bytes(plain.fileno())
    with tempfile.NamedTemporaryFile(dir="/var/tmp") as out:
        block = os.urandom(MIB)
        behind = WriteBehind(out, 4 * MIB)
        for _ in range(64):
            out.write(block)
            out.flush()
            behind.wrote()
        cached = cached_bytes(out.fileno())
        out.seek(0)
        assert all(out.read(MIB) == block for _ in range(64))
    # written back, the plain file's 64 MiB all stay cached
    assert kept_by_the_kernel >= 60 * MIB, kept_by_the_kernel
    # the window being written, the one started, and the last MiB not yet a whole window
    assert cached <= 2 * 4 * MIB + MIB, cached


def test_a_write_the_disk_fails_is_raised_by_the_write_behind(tmp_path: Path) -> None:
    """Waiting for a window takes the file's write error (an fsync after it would not see it):
    it is raised, so the archive is not renamed into place as if it were whole."""
    failed: OSError | None = None
    with failing_disk(tmp_path) as disk, open(disk / "archive", "wb") as out:
        behind = WriteBehind(out, 2 * MIB)
        block = os.urandom(MIB)
        for _ in range(48):
            out.write(block)
            out.flush()
            try:
                behind.wrote()
            except OSError as exc:
                failed = exc
                break
    assert failed is not None, "48 MiB written to a disk that holds 12 and no error raised"
    assert failed.errno in (errno.EIO, errno.ENOSPC), failed


def test_a_wait_raises_whatever_error_the_file_has_only_a_first_call_may_be_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The errors that mean "not here" (EPERM, EINVAL, ...) turn the write-behind off only on a
    call that does not wait: a wait hands over the file's write error, and an NFS or FUSE disk
    may give any number. (libc's call stands in here: no disk on this machine fails with
    EPERM.)"""
    calls: list[int] = []

    def refusing(answer: dict[int, int]) -> object:
        def call(fd: int, offset: int, count: int, flags: int) -> int:
            calls.append(flags)
            if flags in answer:
                ctypes.set_errno(answer[flags])
                return -1
            return 0

        return lambda: call

    with tempfile.TemporaryFile(dir="/var/tmp") as out:
        monkeypatch.setattr(jaco.files, "_sync_file_range", refusing({7: errno.EPERM}))
        behind = WriteBehind(out, MIB)
        with pytest.raises(OSError) as failed:  # writes to /var/tmp fail in no other way
            _write(out, behind, 4)
        assert failed.value.errno == errno.EPERM and calls == [2, 2, 7]
    calls.clear()
    with tempfile.TemporaryFile(dir="/var/tmp") as out:
        monkeypatch.setattr(jaco.files, "_sync_file_range", refusing({2: errno.ENOSYS}))
        _write(out, WriteBehind(out, MIB), 4)
        assert calls == [2]  # refused once, then never asked again
