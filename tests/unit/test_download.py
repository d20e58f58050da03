"""flows.download.Download: an object read in order, hashed and counted as it passes; a store
failing midway is kept, not raised into the consumer (the drill's sandbox feeder), what a
consumer left unread is still hashed (the object's SHA-256 decides whether it is the one
recorded), and a reader stalled in another thread is cut loose without its bytes counting."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator

import pytest

from flows.download import Download
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
