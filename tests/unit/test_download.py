"""flows.download.Download: an object read in order, hashed and counted as it passes; a store
failing midway is kept, not raised into the consumer (the drill's sandbox feeder), and what a
consumer left unread is still hashed (the object's SHA-256 decides whether it is the one
recorded)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from flows.download import Download
from flows.errors import StorageError

CHUNKS = [b"a" * 1000, b"b" * 1000, b"c" * 1000]


def _chunks(fail_after: int | None = None) -> Iterator[bytes]:
    for i, chunk in enumerate(CHUNKS):
        if i == fail_after:
            raise StorageError("S3 download of k: connection reset")
        yield chunk


def test_read_whole_hashed_and_counted() -> None:
    download = Download("k", {"cluster-id": "c"}, 3000, _chunks())
    assert b"".join(download) == b"".join(CHUNKS)
    assert download.received == 3000 and download.error is None
    assert download.sha256 == hashlib.sha256(b"".join(CHUNKS)).hexdigest()


def test_a_store_failing_midway_ends_the_reading_and_is_kept() -> None:
    download = Download("k", {}, 3000, _chunks(fail_after=2))
    assert list(download) == CHUNKS[:2]  # no exception into the consumer
    assert download.received == 2000
    assert isinstance(download.error, StorageError) and download.error.retryable


def test_what_a_consumer_left_is_drained_into_the_hash() -> None:
    download = Download("k", {}, 3000, _chunks())
    for _ in download:
        break  # the consumer (a sandbox's stdin) went away after one chunk
    download.drain()
    assert download.received == 3000
    assert download.sha256 == hashlib.sha256(b"".join(CHUNKS)).hexdigest()
