"""The state digest: per-table record counts and one SHA-256 over every record, in key order.

The one definition of it: the live store (`Store.state_digest`) and a snapshot file
(`jaco.archive.snapshot_file.read_snapshot_state`) both feed it, so a restore, a drill and a
backup's meta.json can be compared exactly.

Two versions. Version 1 (archive formats 1 and 2) hashes every value itself, in key order:
a pass over a snapshot file must read the values in key order, which the file does not
store them in. Version 2 hashes each value apart and the key-ordered sequence of
(key, SHA-256 of value): the values can be hashed as they go by, in any order, and only
76-odd bytes a key are left for the key-ordered hash (docs/plans/scratchless-meta-pass.md).
The two never agree, not even on an empty store: version 2 begins with its own tag.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Literal

from jaco.errors import InvalidArgument
from jaco.model.keys import B_ALIVE, B_ROOT

_ROOT_LENGTH = len(B_ROOT)

DigestVersion = Literal[1, 2]
V2_TAG = b"jaco state digest v2\n"


class StateDigest:
    """Per-table counts and a SHA-256 over records fed in key order, liveness keys left out.

    Version 1: be32(len key) ‖ key ‖ be64(len value) ‖ value, for each record."""

    version: DigestVersion = 1

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._counts: Counter[bytes] = Counter()

    def _encode(self, key: bytes, value: bytes) -> bytes:
        return b"".join((len(key).to_bytes(4, "big"), key, len(value).to_bytes(8, "big"), value))

    def add(self, key: bytes, value: bytes) -> None:
        if not key.startswith(B_ROOT) or key.startswith(B_ALIVE):
            return
        self._sha.update(self._encode(key, value))
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


class StateDigestV2(StateDigest):
    """Version 2: the tag, then be32(len key) ‖ key ‖ SHA-256(value), for each record."""

    version: DigestVersion = 2

    def __init__(self) -> None:
        super().__init__()
        self._sha.update(V2_TAG)

    def _encode(self, key: bytes, value: bytes) -> bytes:
        return b"".join((len(key).to_bytes(4, "big"), key, hashlib.sha256(value).digest()))


def digest_for(version: int) -> StateDigest:
    """A new digest of `version`; InvalidArgument for one this jaco does not compute (never a
    quiet fall back to another: two digests of different versions never match)."""
    if version == 1:
        return StateDigest()
    if version == 2:
        return StateDigestV2()
    raise InvalidArgument(
        f"state digest version {version} is not known to this jaco (it knows 1, 2)"
    )
