"""A stored object read in order, as it arrives: what the drill feeds its sandbox while the
download goes on (flows.storage's `open`)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

from flows.errors import StorageError

CHUNK = 1024 * 1024
RESUMES = 4  # a read cut midway is resumed where it stopped this many times, then fails


class Resuming:
    """An object's bytes in order, from a store that can be asked again from an offset (S3's
    Range GET, of the same ETag): a read that fails midway resumes where it stopped, up to
    RESUMES times (boto3's download_file, which verify used until stop 33, retried its parts
    too); after that, or once closed, the failure is `fail(error)`, the store's."""

    def __init__(
        self,
        body: Any,
        reopen: Callable[[int], Any],
        fail: Callable[[BaseException], StorageError],
    ) -> None:
        self._body, self._reopen, self._fail = body, reopen, fail
        self.resumed = 0
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        at = 0
        try:
            while True:
                try:
                    while chunk := self._body.read(CHUNK):
                        at += len(chunk)
                        yield chunk
                    return
                except Exception as exc:  # noqa: BLE001 - a dropped connection, a short body
                    if self.closed or self.resumed >= RESUMES:
                        raise self._fail(exc) from None
                self._body.close()
                self.resumed += 1
                try:
                    self._body = self._reopen(at)
                except Exception as exc:  # noqa: BLE001
                    raise self._fail(exc) from None
        finally:
            self._body.close()

    def close(self) -> None:
        """From any thread: the reading ends (a read under way fails, and is not resumed)."""
        self.closed = True
        self._body.close()


class Download:
    """An object read in order as it arrives, hashed and counted on the way (`sha256`,
    `received`, `seconds` spent waiting for the store); a store failing midway ends the
    iteration and is kept in `error`. One reader at a time (another thread's, then `drain`);
    `close` lets go of the connection (or file) whoever is reading, and what is read after
    it counts for nothing."""

    def __init__(
        self,
        key: str,
        metadata: dict[str, str],
        size: int,
        chunks: Iterator[bytes],
        closer: Callable[[], None],
    ) -> None:
        self.key, self.metadata, self.size = key, metadata, size
        self.received = 0
        self.error: StorageError | None = None
        self.seconds = 0.0
        self.closed = False
        self._chunks, self._closer = chunks, closer
        self._sha = hashlib.sha256()
        self._reading = threading.Lock()

    def __iter__(self) -> Generator[bytes, None, None]:
        if not self._reading.acquire(blocking=False):
            raise RuntimeError(f"{self.key} read by two readers at once (a bug)")
        try:
            while not self.closed:
                started = time.monotonic()
                try:
                    chunk = next(self._chunks, None)
                except StorageError as exc:
                    if not self.closed:
                        self.error = exc
                    return
                finally:
                    self.seconds += time.monotonic() - started
                if chunk is None:
                    return
                self._sha.update(chunk)
                self.received += len(chunk)
                yield chunk
        finally:
            self._reading.release()

    def finish(self, wait: float) -> bool:
        """Wait up to `wait` seconds for another thread to stop reading; if it does not (a
        store that stalled), close the download. True if the reading stopped by itself."""
        if self._reading.acquire(timeout=wait):
            self._reading.release()
            return True
        self.close()
        return False

    def drain(self) -> None:
        """Read (and hash) what a reader that stopped early left."""
        for _ in self:
            pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._closer()

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()
