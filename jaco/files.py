"""Files that hold secrets or must never be seen half-written.

One way to do each: `write_private` (small files) and `private_output` (streams) write a
temp name in the target's directory (`.NAME.partial-PID`, created O_EXCL, mode 0600, held
under flock while it is written), fsync it, rename it into place and fsync the directory, so
a crash leaves either the old file or the new one, never a torn one; a failure removes the
temp file, and `sweep_partials` removes those of writers that died (their flock is gone).
`staged_dir` does the same for a whole directory (`.NAME.restore-PID`, renamed over an absent
or empty target), and `anonymous_file` holds scratch data that has no name at all, so no crash
can leave it behind. Streams through the process (reading, hashing, splicing) are
jaco.streams.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import os
import re
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from jaco.errors import InvalidArgument, JacoError

PARTIAL = ".partial-"
STAGING = ".restore-"


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private(path: Path, mode: str = "wb") -> IO[bytes]:
    """A new file, readable by its owner only; refuses to open anything that exists."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    return os.fdopen(fd, mode)


def check_output_target(path: Path) -> bool:
    """Whether `path` exists as a regular file that a write would replace.

    Anything else that exists there (a device, a directory, a FIFO, a socket, a symlink) is
    refused: replacing `/dev/null` with a file holding the CA key is never what was meant.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISREG(info.st_mode):
        return True
    kind = _kind(info.st_mode)
    raise InvalidArgument(f"{path} is {kind}, not a regular file; refusing to replace it")


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


@contextlib.contextmanager
def private_output(path: Path, durable: bool = True) -> Iterator[IO[bytes]]:
    """Write `path` atomically: yields the temp file; on a clean exit it replaces `path`.

    `durable=False` skips the fsyncs, for scratch copies deleted within the same run.
    """
    directory = path.parent
    if not directory.is_dir():
        raise InvalidArgument(f"the directory {directory} does not exist")
    check_output_target(path)
    tmp = directory / f".{path.name}{PARTIAL}{os.getpid()}"
    try:
        out = create_private(tmp)
    except FileExistsError:
        tmp.unlink()  # ours, from an earlier failed attempt in this very process
        out = create_private(tmp)
    except OSError as exc:
        raise InvalidArgument(f"cannot write to {directory}: {exc.strerror}") from None
    try:
        with out:
            fcntl.flock(out.fileno(), fcntl.LOCK_EX)  # tells sweep_partials we are alive
            yield out
            out.flush()
            if durable:
                os.fsync(out.fileno())
            check_output_target(path)  # still not a device/dir/link swapped in meanwhile
            os.replace(tmp, path)
        if durable:
            fsync_dir(directory)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def syncing(out: IO[bytes]) -> Iterator[None]:
    """fsync `out` on a thread of its own while the block runs: what was written before it
    goes to disk while the writer waits for something else (a backup's meta.json, which jacod
    reads from its copy after the last byte). The block's end waits for it, and raises the
    error it met (Linux reports a failed writeback to one fsync only, so the one after it could
    pass): a durable write that follows is then short, not skipped."""
    failed: list[OSError] = []

    def sync() -> None:
        try:
            os.fsync(out.fileno())
        except OSError as exc:
            failed.append(exc)

    thread = threading.Thread(target=sync, name="early-fsync", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()
    if failed:
        raise failed[0]


# sync_file_range(2)'s flags (linux/fs.h)
_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4
# Where sync_file_range cannot be called, or not for this file: the write goes on without it
_NO_SYNC_FILE_RANGE = {errno.ENOSYS, errno.EINVAL, errno.EPERM, errno.EOPNOTSUPP}
WRITE_BEHIND = 32 * 1024 * 1024


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range, or None where there is none (not Linux). ctypes is imported
    here, not with this module: only a long write needs it, not every command's start."""
    import ctypes

    call = getattr(ctypes.CDLL(None, use_errno=True), "sync_file_range", None)
    if call is not None:
        call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return call  # type: ignore[no-any-return]


class WriteBehind:
    """Keep the pages of a long write to disk few: once `window` more bytes of `out` have
    reached the kernel, start their write to disk, wait for the window before them
    (sync_file_range(2)) and let the page cache drop that window (posix_fadvise DONTNEED).
    Left to the kernel, a 2 GiB archive's pages wait in memory up to the machine's background
    limit (1.8 GiB here), and the kernel's writeback of them then runs beside etcd's log fsyncs
    for as long as the backup lasts (write p99 during a 2 GiB backup 1.61x -> 1.22x that during
    etcdctl's save; docs/benchmarks.md, stop 42). Once written, the pages would still stay
    cached: 2 GiB of memory taken from the node, and on a VM that hands freed memory back to its
    host (free page reporting) every one of them a first touch that costs about ten times the
    copy (6-7 s of CPU per new 2 GiB file here; stop 47). Dropped, the same few windows of
    memory serve the whole write. Only for what must reach the disk anyway (it is fsynced at
    its end) and is not read again at once: the writes come earlier, not more of them. For a
    regular file. Where a call is refused (not Linux), it is not made again; an error the wait
    reports for the file is raised: the wait took it, and no fsync after it would see it."""

    def __init__(self, out: IO[bytes], window: int | None = None) -> None:
        self._fd, self._window = out.fileno(), window or WRITE_BEHIND
        self._started = 0  # bytes whose write to disk has been started
        self._waited = 0  # bytes whose write has ended
        self._sync = _sync_file_range()  # None: not here, or refused for this file

    def wrote(self) -> None:
        """Call after writing to `out`, on the thread that writes."""
        if self._sync is None:
            return
        end = os.lseek(self._fd, 0, os.SEEK_CUR)  # what the kernel has, not what is buffered
        if end - self._started < self._window:
            return
        self._call(self._started, end, _WRITE)
        if self._waited < self._started:
            self._call(self._waited, self._started, _WAIT_BEFORE | _WRITE | _WAIT_AFTER)
            _forget(self._fd, self._waited, self._started)
        self._waited, self._started = self._started, end

    def _call(self, start: int, end: int, flags: int) -> None:
        if self._sync is None or self._sync(self._fd, start, end - start, flags) == 0:
            return
        import ctypes  # imported already: _sync_file_range found the call

        code = ctypes.get_errno()
        # Only a call that does not wait may be refused: a wait hands over the file's write
        # error whatever its number (EPERM from NFS, say), and no fsync after it would see it.
        if flags == _WRITE and code in _NO_SYNC_FILE_RANGE:
            self._sync = None
            return
        raise OSError(code, os.strerror(code))


# The page cache holds a file in folios of up to 2 MiB (a PMD with 4 KiB pages), and the kernel
# forgets only the folios a range covers whole: a window's first one may have begun before it.
LARGEST_FOLIO = 2 * 1024 * 1024


def _forget(fd: int, start: int, end: int) -> None:
    """Let the kernel forget the cached pages of [start, end) of `fd`, which the disk has, and
    the rest of the folio `start` falls in (the range before `start` is done with too): read
    again, they come from the disk. A folio that `end` falls in is forgotten by the next call.
    Advice only, so a refusal changes nothing but the memory kept."""
    if end <= start:
        return  # (a length of 0 would mean: to the end of the file)
    start -= start % LARGEST_FOLIO
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: not POSIX
        os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)


class ReadOnce:
    """A file read once, from its start to its end, whose pages the page cache forgets a window
    behind the reader: WriteBehind's counterpart for a long read (the encrypt stage's read of
    a backup archive that `jaco backup` did not leave cached). Read into the page cache and
    kept there, a 2 GiB archive would take 2 GiB of the node's memory, first touches included,
    for bytes that are never read again. `raw` must be unbuffered (open(..., buffering=0)):
    what the reader has taken is exactly what is forgotten, from where `raw` stood to its end."""

    def __init__(self, raw: IO[bytes], window: int | None = None) -> None:
        self._raw, self._fd, self._window = raw, raw.fileno(), window or WRITE_BEHIND
        self._read = self._forgotten = os.lseek(self._fd, 0, os.SEEK_CUR)

    def readinto(self, buffer: memoryview | bytearray) -> int:
        n = self._raw.readinto(buffer) or 0  # type: ignore[attr-defined]
        self._took(n)
        return n  # type: ignore[no-any-return]

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self._took(len(data))
        return data

    def _took(self, n: int) -> None:
        self._read += n
        if self._read - self._forgotten >= self._window or n == 0:  # n == 0: at the end
            _forget(self._fd, self._forgotten, self._read)
            self._forgotten = self._read


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, readable by its owner only, atomically and durably."""
    with private_output(path) as out:
        out.write(data)


@contextlib.contextmanager
def staged_dir(target: Path, marker: str = STAGING) -> Iterator[Path]:
    """Build a directory beside `target` and put it in place whole.

    Yields `.NAME<marker>PID` in target's parent (same filesystem, mode 0700, held under
    flock so `sweep_partials` can tell a live builder's from a dead one's). On a clean exit it
    is renamed over `target`, which must be absent or an empty directory, and the parent is
    fsynced; on failure it is removed. A crash at any moment leaves `target` as it was.
    """
    parent = target.parent
    staging = parent / f".{target.name}{marker}{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)  # ours, from an earlier failed attempt
    os.mkdir(staging, 0o700)
    fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield staging
        os.fsync(fd)
        try:
            os.rename(staging, target)
        except OSError as exc:  # not empty (any more), not a directory, a mount point...
            raise JacoError(f"cannot put {target} in place: {exc.strerror}") from None
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def anonymous_file(directory: Path) -> Iterator[IO[bytes]]:
    """A private scratch file on `directory`'s filesystem that has no name (O_TMPFILE): the
    kernel frees it when the last descriptor closes, so no crash can leave it behind. Other
    processes reach it through `/proc/self/fd/N` when given the descriptor."""
    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR, 0o600)
    except OSError as exc:  # a filesystem without O_TMPFILE: a name for an instant only
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
        named = directory / f".anonymous-{os.getpid()}"
        fd = os.open(named, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        named.unlink()
    with os.fdopen(fd, "w+b") as scratch:
        yield scratch


def sweep_partials(directory: Path, marker: str = PARTIAL, name: str = "") -> list[Path]:
    """Remove what writers that died left in `directory`: the `.NAME<marker>PID` files of
    `private_output` or directories of `staged_dir` that nobody holds under flock any more
    (only those of target NAME when `name` is given)."""
    pattern = re.compile(rf"^\.{re.escape(name) if name else '.+'}{re.escape(marker)}[0-9]+$")
    removed: list[Path] = []
    try:
        candidates = [p for p in directory.iterdir() if pattern.match(p.name)]
    except OSError:
        return removed
    for candidate in candidates:
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        except BlockingIOError:
            continue  # a live writer
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            if is_dir:
                shutil.rmtree(candidate)
            else:
                candidate.unlink()
            removed.append(candidate)
    return removed


def disk_full(exc: BaseException) -> bool:
    """No room left to write: the filesystem is full, or the writer's quota on it is used up."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def require_space(directory: Path, needed: int, what: str) -> None:
    """Refuse, before writing anything, when `directory`'s filesystem cannot hold `needed`."""
    free = os.statvfs(directory)
    available = free.f_bavail * free.f_frsize
    if needed > available:
        raise JacoError(
            f"{what} needs {needed} bytes but the filesystem holding {directory} has only "
            f"{available} free; nothing was written"
        )


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
