"""jaco.files.WriteBehind: a long write to disk keeps few of its pages waiting in memory, so a
2 GiB backup does not bring the machine to its dirty limit, where every writer (etcd's WAL
among them) is made to wait. The pages are counted by the kernel (cachestat(2), Linux 6.5+);
a disk that fails its writes is a real one (ext4 on a loop device whose backing file cannot
grow), and its error is raised, not left for an fsync that would no longer see it."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from jaco.files import WriteBehind
from tests.mounts import tmpfs
from tests.pages import waiting_bytes

MIB = 1024 * 1024


def _write(out: IO[bytes], behind: WriteBehind | None) -> None:
    block = os.urandom(MIB)
    for _ in range(64):
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


@contextlib.contextmanager
def _failing_disk(tmp_path: Path) -> Iterator[Path]:
    """An ext4 of 64 MiB on a loop device whose backing file lies on a 12 MiB tmpfs: once that
    is full, the disk's writes fail (EIO), as a dying disk's do."""
    with tmpfs(tmp_path / "backing", "size=12m") as backing:
        image = backing / "disk.img"
        with open(image, "wb") as f:
            f.truncate(64 * MIB)
        subprocess.run(
            ["mkfs.ext4", "-q", "-E", "lazy_itable_init=1,lazy_journal_init=1", "-J", "size=4",
             str(image)],
            check=True,
        )  # fmt: skip
        device = subprocess.run(
            ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
        ).stdout.strip()
        mounted = tmp_path / "disk"
        mounted.mkdir()
        try:
            subprocess.run(["mount", "-t", "ext4", device, str(mounted)], check=True)
            try:
                yield mounted
            finally:
                subprocess.run(["umount", "-l", str(mounted)], check=True)
        finally:
            subprocess.run(["losetup", "-d", device], check=True)


def test_a_write_the_disk_fails_is_raised_by_the_write_behind(tmp_path: Path) -> None:
    """Waiting for a window takes the file's write error (an fsync after it would not see it):
    it is raised, so the archive is not renamed into place as if it were whole."""
    failed: OSError | None = None
    with _failing_disk(tmp_path) as disk, open(disk / "archive", "wb") as out:
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
