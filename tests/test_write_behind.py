"""jaco.files.WriteBehind and ReadOnce: a long write to disk keeps few of its pages waiting in
memory, so a 2 GiB backup's pages are not written back by the kernel in one long stretch beside
etcd's log fsyncs (docs/benchmarks.md, stop 42); once on disk they leave memory, and a long read
done once (the encrypt stage's) forgets what it has read, so a 2 GiB archive never takes 2 GiB
of the node's memory (stop 47). The pages are counted by the kernel (cachestat(2), Linux 6.5+);
a disk that fails its writes is a real one (ext4 on a loop device whose backing file cannot
grow), and its error is raised, not left for an fsync that would no longer see it."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest

import jaco.files
from flows.storage import LocalStore
from jaco.archive.age import encrypt_file
from jaco.files import ReadOnce, WriteBehind, sha256_file
from tests.keys import age_keygen, ssh_keygen
from tests.mounts import failing_disk
from tests.pages import cached_bytes, waiting_bytes

MIB = 1024 * 1024


def _write(out: IO[bytes], behind: WriteBehind | None, mib: int = 64) -> bytes:
    """`mib` times the same random MiB, written as the archive writer does; returns the MiB."""
    block = os.urandom(MIB)
    for _ in range(mib):
        out.write(block)
        out.flush()
        if behind is not None:
            behind.wrote()
    return block


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
        block = _write(out, WriteBehind(out, 4 * MIB))
        cached = cached_bytes(out.fileno())
        out.seek(0)
        assert all(out.read(MIB) == block for _ in range(64))
    # written back, the plain file's 64 MiB all stay cached
    assert kept_by_the_kernel >= 60 * MIB, kept_by_the_kernel
    # the window being written, the one started, and the last MiB not yet a whole window
    assert cached <= 2 * 4 * MIB + MIB, cached


def _on_disk(directory: Path, size: int = 64 * MIB) -> tuple[Path, str]:
    """A file of `size` random bytes, fsynced (its pages clean, so they may be dropped), and
    its SHA-256; still cached, as a file just written is. Written in one call, so the page
    cache holds it in its largest folios (2 MiB here): written a MiB at a time, its folios
    end on every MiB, and a window edge on a MiB falls inside none (the folio test would
    pass without the fix it guards)."""
    data, path = os.urandom(size), directory / "archive"
    with open(path, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    return path, hashlib.sha256(data).hexdigest()


def test_a_file_read_once_leaves_few_of_its_pages_in_memory() -> None:
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        path, sha256 = _on_disk(Path(tmp))
        with open(path, "rb", buffering=0) as raw:
            cached_before = cached_bytes(raw.fileno())
            reader, read = ReadOnce(raw, 4 * MIB), hashlib.sha256()
            while block := reader.read(MIB // 2):
                read.update(block)
            buffer = bytearray(MIB)
            assert reader.readinto(buffer) == 0  # at the end
            cached = cached_bytes(raw.fileno())
    assert read.hexdigest() == sha256  # every byte, in order
    assert cached_before >= 60 * MIB, cached_before  # the kernel keeps what was written
    # the window being read, and what the kernel read ahead of it
    assert cached <= 4 * MIB + 4 * MIB, cached


def test_a_read_once_forgets_its_last_part_window_and_only_from_where_it_began() -> None:
    """A file that is not a whole number of windows, read from its fifth MiB on: at its end
    the last 2.5 MiB, less than a window, are forgotten too; the first 4 MiB, read before the
    reader took the file, stay."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        path, _ = _on_disk(Path(tmp), 30 * MIB + MIB // 2)
        with open(path, "rb", buffering=0) as raw:
            head = raw.read(4 * MIB)
            reader, rest = ReadOnce(raw, 4 * MIB), bytearray()
            buffer = bytearray(MIB // 2)
            while n := reader.readinto(buffer):
                rest += buffer[:n]
            cached_head = cached_bytes(raw.fileno(), 0, 4 * MIB)
            cached_rest = cached_bytes(raw.fileno(), 4 * MIB)
        assert head + rest == path.read_bytes()
    assert cached_head == 4 * MIB, cached_head
    assert cached_rest == 0, cached_rest


def test_a_window_that_does_not_begin_on_a_folio_is_forgotten_whole() -> None:
    """The page cache keeps a file in folios of up to 2 MiB and forgets only those a range
    covers whole: windows of 3 MiB (their edges inside folios) leave nothing behind either."""
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        path, _ = _on_disk(Path(tmp), 30 * MIB)
        with open(path, "rb", buffering=0) as raw:
            reader = ReadOnce(raw, 3 * MIB)
            while reader.read(MIB):
                pass
            cached = cached_bytes(raw.fileno())
    assert cached == 0, cached


@pytest.mark.parametrize("keygen", [age_keygen, ssh_keygen], ids=["x25519", "ssh-ed25519"])
def test_the_encrypt_stage_leaves_few_of_the_archives_pages_in_memory(
    monkeypatch: pytest.MonkeyPatch, keygen: Callable[[Path], str]
) -> None:
    """The archive is read once by the encrypt stage, on either path (jaco's age writer,
    pyrage): `jaco backup` did not leave it in memory and the stage does not bring it back
    whole (a 2 GiB archive, 2 GiB of the node's memory)."""
    monkeypatch.setattr(jaco.files, "WRITE_BEHIND", 4 * MIB)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        path, sha256 = _on_disk(Path(tmp), 62 * MIB)  # not a whole number of windows
        recipient = keygen(Path(tmp) / "key")
        with open(path, "rb") as raw:
            cached_before = cached_bytes(raw.fileno())
        plain_sha, _ = encrypt_file(path, Path(tmp) / "archive.age", [recipient])
        with open(path, "rb") as raw:
            cached = cached_bytes(raw.fileno())
    assert plain_sha == sha256
    assert cached_before >= 60 * MIB, cached_before  # all cached before the stage read it
    assert cached <= 4 * MIB + 4 * MIB, cached


def test_the_local_copy_leaves_few_of_its_pages_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """The local store's copy of an encrypted archive is read again only by a restore: written,
    it does not stay in memory (a 2 GiB copy, 2 GiB of the node's memory)."""
    monkeypatch.setattr(jaco.files, "WRITE_BEHIND", 4 * MIB)
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        path, sha256 = _on_disk(Path(tmp))
        LocalStore(Path(tmp) / "store").put("c1/archive.age", path, {"sha256": sha256})
        stored = Path(tmp) / "store" / "c1" / "archive.age"
        with open(stored, "rb") as raw, open(path, "rb") as source:
            cached, source_cached = cached_bytes(raw.fileno()), cached_bytes(source.fileno())
        assert sha256_file(stored) == sha256
    # the control: the source, only read, is still all cached; the copy is not
    assert source_cached >= 60 * MIB, source_cached
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
