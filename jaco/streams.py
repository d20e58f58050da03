"""Streams through this process: reading views, a part of a stream, SHA-256 on a thread of its
own, and splice(2) where the kernel can move the bytes instead.

`ChunkReader` reads an iterator of chunks; `Bounded` the next `limit` bytes of a stream (the
drill's stdin carries several parts); `BlockSha256` hashes whole blocks, on a thread if asked;
`HashingReader` counts and hashes what is read through it, in 1 MiB blocks; `spliced` moves a
file (or a buffered reader of one, whole or Bounded) into a pipe without copying it through
this process.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import queue
import select
import threading
from collections.abc import Callable, Iterator
from typing import Protocol

CHUNK = 1024 * 1024


class ChunkReader:
    """A `read()`-able view of an iterator of byte chunks (reads assembled across chunks)."""

    def __init__(self, chunks: Iterator[bytes], progress: Callable[[int], None] | None = None):
        self._chunks = chunks
        self._chunk = b""
        self._offset = 0
        self._progress = progress

    def read(self, n: int = -1) -> bytes:
        parts: list[bytes] = []
        need = n if n >= 0 else -1
        while need:
            if self._offset >= len(self._chunk):
                chunk = next(self._chunks, None)
                if chunk is None:
                    break
                if self._progress is not None:
                    self._progress(len(chunk))
                self._chunk, self._offset = chunk, 0
            end = len(self._chunk) if need < 0 else self._offset + need
            part = self._chunk[self._offset : end]
            self._offset += len(part)
            if need > 0:
                need -= len(part)
            parts.append(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)


class Readable(Protocol):
    def read(self, n: int, /) -> bytes: ...


class Writable(Protocol):
    def write(self, data: bytes | bytearray, /) -> int: ...

    def flush(self) -> None: ...


class Bounded:
    """The next `limit` bytes of a stream, and no more: one part of a stream that carries
    several (the drill's stdin: the backup, then its segments)."""

    def __init__(self, source: Readable, limit: int) -> None:
        self.source = source
        self.left = limit

    def read(self, n: int = -1) -> bytes:
        want = self.left if n < 0 else min(n, self.left)
        data = self.source.read(want) if want else b""
        self.left -= len(data)
        return data


class BlockSha256:
    """SHA-256 of whole blocks, `threaded` on a thread of its own: hashlib lets go of the GIL
    while it hashes a large buffer, so the thread that feeds it (an encrypter, the reader of a
    decryption) goes on meanwhile on another core. A block must not change once handed over.
    With `spare`, each bytearray block is put there once hashed, for the feeder to fill again
    (no new memory per block). `close` ends the thread whether or not the digest was taken;
    no block may follow it. Should the thread fail (a MemoryError), it goes on taking blocks
    without hashing them, so its feeder is never left waiting on a full queue, and the error
    is raised to the feeder by its next `update`, and by `hexdigest`."""

    def __init__(
        self, threaded: bool = False, spare: queue.SimpleQueue[bytearray] | None = None
    ) -> None:
        self._sha = hashlib.sha256()
        self._threaded = threaded
        self._spare = spare
        self._blocks: queue.Queue[bytes | bytearray | None] = queue.Queue(4)
        self._thread: threading.Thread | None = None
        self._closed = False
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            while (block := self._blocks.get()) is not None:
                self._sha.update(block)
                if self._spare is not None and isinstance(block, bytearray):
                    self._spare.put(block)
        except BaseException as exc:  # noqa: BLE001 - handed to the feeder, which raises it
            self._error = exc
            while self._blocks.get() is not None:
                pass  # the feeder goes on to its next update or its close, and learns then

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"the SHA-256 thread failed: {self._error!r}") from self._error

    def update(self, block: bytes | bytearray) -> None:
        if self._closed:
            raise RuntimeError("a closed BlockSha256 was fed (a bug)")
        if not self._threaded:
            self._sha.update(block)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
            self._thread.start()
        self._raise_failure()
        self._blocks.put(block)

    def close(self) -> None:
        self._closed = True
        if self._thread is not None:
            self._blocks.put(None)
            self._thread.join()
            self._thread = None

    def hexdigest(self) -> str:
        """The digest of every block handed over (the thread's last ones included)."""
        self.close()
        self._raise_failure()
        return self._sha.hexdigest()


class HashingReader:
    """A read-only source that counts and hashes what is read from it.

    The source is read in 1 MiB blocks whatever the caller asks for (pyrage asks for 8 KiB):
    the system calls and the hash updates (each one a GIL release) stay few. A read of a
    whole block or more with nothing buffered passes straight through, uncopied. With
    `threaded`, the blocks are hashed on a thread of their own (`close` it when done); or
    by the `sha256` given.
    """

    def __init__(
        self, source: Readable, threaded: bool = False, sha256: BlockSha256 | None = None
    ) -> None:
        self.sha256 = sha256 if sha256 is not None else BlockSha256(threaded)
        self.size = 0
        self._source = source
        self._block = memoryview(b"")
        self._at = 0

    def _take(self, block: bytes) -> bytes:
        self.sha256.update(block)
        self.size += len(block)
        return block

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            parts = [self._block[self._at :].tobytes()]
            self._at = len(self._block)
            while block := self._source.read(CHUNK):
                parts.append(self._take(block))
            return b"".join(parts)
        if self._at >= len(self._block):
            if n >= CHUNK:
                return self._take(self._source.read(n))
            self._block, self._at = memoryview(self._take(self._source.read(CHUNK))), 0
        piece = self._block[self._at : self._at + n].tobytes()
        self._at += len(piece)
        return piece

    def drain(self) -> None:
        """Read (and hash) whatever the consumer did not need."""
        self._at = len(self._block)
        while self.read(CHUNK):
            pass

    def hexdigest(self) -> str:
        return self.sha256.hexdigest()

    def close(self) -> None:
        self.sha256.close()


# What splice(2) may answer where a copy still works: a filesystem or descriptor without it,
# a sandbox whose seccomp filter refuses it. (EAGAIN is waited out: the copy could not read a
# non-blocking source to its end either.)
REFUSED = {errno.EINVAL, errno.ENOSYS, errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV}


def spliced(source: Readable, out: int) -> int | None:
    """Move `source` into the pipe `out` with splice(2), where it is a file or a buffered
    reader of one, whole or Bounded (a file to restore, the drill's stdin): the kernel moves
    the pages, where reading and writing them copied every byte twice through this process, a
    core-second per 2 GiB (docs/benchmarks.md, stop 41). What the reader holds buffered goes
    first. Returns the bytes moved, which a refused splice (REFUSED) ends early, leaving the
    rest to copy; or None for any other source, nothing read from it."""
    limit, inner = (source.left, source.source) if isinstance(source, Bounded) else (None, source)
    if isinstance(inner, io.BufferedReader):
        if not isinstance(inner.raw, io.FileIO):  # a raw stream may change what it reads
            return None
    elif not isinstance(inner, io.FileIO):
        return None
    if limit == 0:
        return 0
    fd = inner.fileno()
    moved = 0
    try:
        if isinstance(inner, io.BufferedReader):
            held = inner.peek(1)  # what is buffered (one read if nothing is)
            first = inner.read(len(held) if limit is None else min(len(held), limit))
            moved = len(first)
            view = memoryview(first)
            while view:
                view = view[os.write(out, view) :]
        while limit is None or moved < limit:
            try:
                n = os.splice(fd, out, CHUNK if limit is None else min(CHUNK, limit - moved))
            except BlockingIOError:  # a non-blocking source with nothing yet, or a full pipe
                _wait_for(fd, select.POLLIN)
                _wait_for(out, select.POLLOUT)
                continue
            except OSError as exc:
                if exc.errno in REFUSED:
                    break
                raise
            if not n:
                break
            moved += n
    finally:
        if isinstance(source, Bounded):
            source.left -= moved
    return moved


def _wait_for(fd: int, event: int) -> None:
    """Until `fd` is ready for `event`, or has ended (poll: any descriptor number)."""
    waiting = select.poll()
    waiting.register(fd, event)
    waiting.poll()
