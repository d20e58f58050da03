"""The state digest: per-table record counts and one SHA-256 over every record, in key order.

The one definition of it: the live store (`Store.state_digest`) and a snapshot file
(`jaco.archive.snapshot_file.read_snapshot_state`) both feed it, so a restore, a drill and a
backup's meta.json can be compared exactly.
"""

from __future__ import annotations

import hashlib
from collections import Counter

from jaco.model.keys import B_ALIVE, B_ROOT

_ROOT_LENGTH = len(B_ROOT)


class StateDigest:
    """Per-table counts and a SHA-256 over records fed in key order, liveness keys left out."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._counts: Counter[bytes] = Counter()

    def add(self, key: bytes, value: bytes) -> None:
        if not key.startswith(B_ROOT) or key.startswith(B_ALIVE):
            return
        self._sha.update(
            b"".join((len(key).to_bytes(4, "big"), key, len(value).to_bytes(8, "big"), value))
        )
        # The table is the first path element under the root; split as bytes, named as text.
        self._counts[key[_ROOT_LENGTH:].split(b"/", 1)[0]] += 1

    def add_page(self, records: list[tuple[bytes, bytes]]) -> None:
        """A page of (key, value) records, as `Etcd.record_pages` reads them."""
        for key, value in records:
            self.add(key, value)

    def result(self) -> tuple[dict[str, int], str]:
        counts = Counter[str]()
        for table, n in self._counts.items():
            counts[table.decode()] += n
        return dict(sorted(counts.items())), self._sha.hexdigest()
