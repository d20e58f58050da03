"""The state digest: per-table record counts and one SHA-256 over every record, in key order.

The one definition of it: the live store (`Store.state_digest`) and a snapshot file
(`jaco.archive.snapshot_file.read_snapshot_state`) both feed it, so a restore, a drill and a
backup's meta.json can be compared exactly.
"""

from __future__ import annotations

import hashlib
from collections import Counter

from jaco.model.keys import B_ALIVE, B_ROOT, table_of


class StateDigest:
    """Per-table counts and a SHA-256 over records fed in key order, liveness keys left out."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._counts: Counter[str] = Counter()

    def add(self, key: bytes, value: bytes) -> None:
        if not key.startswith(B_ROOT) or key.startswith(B_ALIVE):
            return
        self._sha.update(len(key).to_bytes(4, "big") + key)
        self._sha.update(len(value).to_bytes(8, "big"))
        self._sha.update(value)
        self._counts[table_of(key.decode())] += 1

    def result(self) -> tuple[dict[str, int], str]:
        return dict(sorted(self._counts.items())), self._sha.hexdigest()
