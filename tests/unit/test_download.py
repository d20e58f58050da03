"""flows.download.Download: an object read in order, hashed and counted as it passes; a store
failing midway is kept, not raised into the consumer (the drill's sandbox feeder), what a
consumer left unread is still hashed (the object's SHA-256 decides whether it is the one
recorded), and a reader stalled in another thread is cut loose without its bytes counting."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator

import pytest

from flows.download import RESUMES, Download, Resuming
from flows.errors import StorageError

CHUNKS = [b"a" * 1000, b"b" * 1000, b"c" * 1000]


def _chunks(fail_after: int | None = None) -> Iterator[bytes]:
    for i, chunk in enumerate(CHUNKS):
        if i == fail_after:
            raise StorageError("S3 download of k: connection reset")
        yield chunk


def _download(chunks: Iterator[bytes]) -> Download:
    return Download("k", {"cluster-id": "c"}, 3000, chunks, lambda: None)


def test_read_whole_hashed_and_counted() -> None:
    download = _download(_chunks())
    assert b"".join(download) == b"".join(CHUNKS)
    assert download.received == 3000 and download.error is None
    assert download.sha256 == hashlib.sha256(b"".join(CHUNKS)).hexdigest()


def test_a_store_failing_midway_ends_the_reading_and_is_kept() -> None:
    download = _download(_chunks(fail_after=2))
    assert list(download) == CHUNKS[:2]  # no exception into the consumer
    assert download.received == 2000
    assert isinstance(download.error, StorageError) and download.error.retryable


def test_what_a_consumer_left_is_drained_into_the_hash() -> None:
    download = _download(_chunks())
    chunks = iter(download)
    next(chunks)  # the consumer (a sandbox's stdin) went away after one chunk
    with pytest.raises(RuntimeError, match="two readers"):
        next(iter(download))  # not while the first one holds it
    chunks.close()
    download.drain()
    assert download.received == 3000 and download.error is None
    assert download.sha256 == hashlib.sha256(b"".join(CHUNKS)).hexdigest()


def test_a_reader_stalled_in_another_thread_is_cut_loose() -> None:
    release = threading.Event()
    closed: list[bool] = []

    def stalling() -> Iterator[bytes]:
        yield CHUNKS[0]
        release.wait()  # a store that stopped answering
        raise StorageError("S3 download of k: read timed out")

    download = Download("k", {}, 3000, stalling(), lambda: (closed.append(True), release.set()))
    reader = threading.Thread(target=lambda: list(download))
    reader.start()
    assert not download.finish(0.2)  # still reading: closed
    reader.join(5)
    assert not reader.is_alive() and closed == [True]
    assert download.closed and download.received == 1000
    assert download.error is None  # what failed after the close is not the store's failure
    assert download.finish(0.2)


class _Body:
    """An S3 body over `data[at:]` whose reads fail once `cut` bytes have been read."""

    def __init__(self, data: bytes, at: int, cut: int | None) -> None:
        self.data, self.at, self.left, self.closed = data, at, cut, False

    def read(self, n: int) -> bytes:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        if self.left is not None and self.left <= 0:
            raise ConnectionResetError("connection reset by peer")
        n = n if self.left is None else min(n, self.left)
        piece = self.data[self.at : self.at + n]
        self.at += len(piece)
        if self.left is not None:
            self.left -= len(piece)
        return piece

    def close(self) -> None:
        self.closed = True


def _resuming(data: bytes, cuts: list[int | None]) -> tuple[Resuming, list[int]]:
    """Resuming over bodies cut after the given numbers of bytes (None: not cut)."""
    asked: list[int] = []

    def reopen(at: int) -> _Body:
        asked.append(at)
        return _Body(data, at, cuts[len(asked)] if len(asked) < len(cuts) else None)

    return Resuming(_Body(data, 0, cuts[0]), reopen, lambda e: StorageError(f"S3: {e}")), asked


def test_a_cut_read_resumes_where_it_stopped() -> None:
    data = os.urandom(5 * 1024 * 1024 + 7)
    body, asked = _resuming(data, [1_500_000, 2_000_000, None])
    assert b"".join(body) == data
    assert asked == [1_500_000, 3_500_000] and body.resumed == 2


def test_resumes_are_bounded_then_the_failure_is_the_stores() -> None:
    data = os.urandom(10 * 1024 * 1024)
    body, asked = _resuming(data, [1_000_000] * 10)
    got = bytearray()
    with pytest.raises(StorageError, match="^S3: connection reset by peer$"):
        for chunk in body:
            got += chunk
    assert len(asked) == RESUMES and bytes(got) == data[: len(got)]
    assert len(got) == (RESUMES + 1) * 1_000_000


def test_a_closed_download_is_not_resumed() -> None:
    body, asked = _resuming(os.urandom(3 * 1024 * 1024), [None])
    chunks = iter(body)
    next(chunks)
    body.close()  # as Download.close does from another thread: the next read fails
    with pytest.raises(StorageError):
        next(chunks)
    assert asked == []
