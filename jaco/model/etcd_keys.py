"""Key arithmetic of etcd ranges: where a prefix ends, and the parts a long range is read in
(jaco.model.etcd pages through ranges with them)."""

from __future__ import annotations


def _after(raw: bytes) -> bytes:
    """The least key above every key that begins with `raw`; b"\0" where there is none
    (etcd's range end for "to the end of the key space")."""
    raw = raw.rstrip(b"\xff")
    return raw[:-1] + bytes([raw[-1] + 1]) if raw else b"\0"


def prefix_end(prefix: str) -> bytes:
    return _after(prefix.encode())


def shared_prefix(a: bytes, b: bytes) -> int:
    """How many leading bytes `a` and `b` have in common."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def part_end(start: bytes, end: bytes, depth: int) -> bytes:
    """The end of the part of [start, end) whose keys begin with `start`'s first `depth` bytes
    (depth 0, or a part reaching past `end`: `end`)."""
    after = _after(start[:depth]) if depth else b"\0"
    if after == b"\0":
        return end
    return after if end == b"\0" else min(after, end)
