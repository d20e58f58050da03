"""A stored object read in order, as it arrives: what the drill feeds its sandbox while the
download goes on (flows.storage's `open`)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Generator, Iterator

from flows.errors import StorageError


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
