"""A stored object read in order, as it arrives: what the drill feeds its sandbox while the
download goes on (flows.storage's `open`)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator

from flows.errors import StorageError


class Download:
    """An object read in order as it arrives, hashed and counted on the way (`sha256`,
    `received`); a store failing midway ends the iteration and is kept in `error`."""

    def __init__(self, key: str, metadata: dict[str, str], size: int, chunks: Iterator[bytes]):
        self.key, self.metadata, self.size = key, metadata, size
        self.received = 0
        self.error: StorageError | None = None
        self.seconds = 0.0
        self._chunks = chunks
        self._sha = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        started = time.monotonic()
        try:
            for chunk in self._chunks:
                self._sha.update(chunk)
                self.received += len(chunk)
                yield chunk
        except StorageError as exc:
            self.error = exc
        finally:
            self.seconds += time.monotonic() - started

    def drain(self) -> None:
        """Read (and hash) what a consumer that stopped early left."""
        for _ in self:
            pass

    def close(self) -> None:
        """Let go of the connection (or file), read to its end or not."""
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()
