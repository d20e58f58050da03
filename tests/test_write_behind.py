"""jaco.files.WriteBehind: a long write to disk keeps few of its pages waiting in memory, so a
2 GiB backup does not bring the machine to its dirty limit, where every writer (etcd's WAL
among them) is made to wait. The pages are counted by the kernel (cachestat(2), Linux 6.5+);
a disk that fails its writes is a real one (ext4 on a loop device whose backing file cannot
grow), and its error is raised, not left for an fsync that would no longer see it."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

import jaco.files
from jaco.client.backup import write_backup_stream
from jaco.errors import JacoError
from jaco.files import WriteBehind
from jaco.v1 import jaco_pb2 as pb
from tests.archives import bolt_head, etcd_trailed
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
    is full, the disk's writes fail (ENOSPC from the loop device; a dying disk says EIO). Taken
    down lazily and without raising, so that a failing test shows its own error."""
    backing, mounted = tmp_path / "backing", tmp_path / "disk"
    backing.mkdir()
    mounted.mkdir()
    with contextlib.ExitStack() as undo:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(backing)], check=True
        )
        undo.callback(subprocess.run, ["umount", "-l", str(backing)], check=False)
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
        undo.callback(subprocess.run, ["losetup", "-d", device], check=False)
        subprocess.run(["mount", "-t", "ext4", device, str(mounted)], check=True)
        undo.callback(subprocess.run, ["umount", "-l", str(mounted)], check=False)
        yield mounted


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


def test_a_backup_onto_a_failing_disk_fails_in_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`jaco backup`'s writer onto the same failing disk: the write-behind's wait takes the
    error on the gzip thread, and the one line names the file and the error; no archive (nor
    its temp name) is left."""
    snapshot = etcd_trailed(bolt_head() + os.urandom(40 * MIB + 512))
    meta = {
        "cluster_id": "c0ffee",
        "snapshot_index": 42,
        "snapshot_term": 3,
        "jaco_version": "1.0.0",
        "taken_at": "2026-11-26T00:00:00+00:00",
        "leader_at_snapshot": "node-1",
        "format": 2,
        "snapshot_sha256": hashlib.sha256(snapshot).hexdigest(),
        "snapshot_size": len(snapshot),
        "counts": {"deployments": 1},
        "state_digest": "ab" * 32,
    }
    stream = [
        pb.BackupChunk(snapshot_size=len(snapshot)),
        *(pb.BackupChunk(data=snapshot[at : at + MIB]) for at in range(0, len(snapshot), MIB)),
        pb.BackupChunk(meta_json=json.dumps(meta)),
    ]
    monkeypatch.setattr(jaco.files, "WRITE_BEHIND", 2 * MIB)  # waited for before the end
    with _failing_disk(tmp_path) as disk:
        out = disk / "b.tar.gz"
        with pytest.raises(JacoError) as failed:
            write_backup_stream(iter(stream), out, lambda s: None, lambda n: None)
        left = sorted(p.name for p in disk.iterdir() if p.name != "lost+found")
    # the loop device reports its backing store full (ENOSPC); a dying disk would say EIO
    assert str(failed.value) in (
        f"the disk holding {disk} is full; nothing was written to b.tar.gz",
        f"writing {out} failed: [Errno 5] Input/output error",
    ), failed.value
    assert failed.value.exit_code == 1
    assert left == []


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
        with pytest.raises(OSError) as failed:
            for _ in range(4):
                out.write(b"x" * MIB)
                out.flush()
                behind.wrote()
        assert failed.value.errno == errno.EPERM and calls == [2, 2, 7]
    calls.clear()
    with tempfile.TemporaryFile(dir="/var/tmp") as out:
        monkeypatch.setattr(jaco.files, "_sync_file_range", refusing({2: errno.ENOSYS}))
        behind = WriteBehind(out, MIB)
        for _ in range(4):
            out.write(b"x" * MIB)
            out.flush()
            behind.wrote()
        assert calls == [2]  # refused once, then never asked again
