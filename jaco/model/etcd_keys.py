"""Key arithmetic of etcd ranges: where a prefix ends, and the parts a long range is read in
(jaco.model.etcd pages through ranges with them)."""

from __future__ import annotations

_PREFIX_END_BYTE = 0xFF


def prefix_end(prefix: str) -> bytes:
    raw = bytearray(prefix.encode())
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] < _PREFIX_END_BYTE:
            raw[i] += 1
            return bytes(raw[: i + 1])
    return b"\0"


def shared_prefix(a: bytes, b: bytes) -> int:
    """How many leading bytes `a` and `b` have in common."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def part_end(start: bytes, end: bytes, depth: int) -> bytes:
    """The end of the part of [start, end) whose keys begin with `start`'s first `depth` bytes
    (depth 0, or a part reaching past `end`: `end`)."""
    if not depth:
        return end
    part = bytearray(start[:depth])
    while part and part[-1] == _PREFIX_END_BYTE:
        part.pop()
    if not part:
        return end
    part[-1] += 1
    return min(bytes(part), end) if end != b"\0" else bytes(part)
