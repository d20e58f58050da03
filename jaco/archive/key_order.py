"""The latest version of every key, in key order, from records in revision order, in bounded
memory.

etcd's key bucket is ordered by revision; the state digest wants each live key's latest value
in key order. Holding one entry per key makes memory grow with the store (hundreds of MiB at
10⁶ keys, on the node serving a backup). Instead this is an external sort: records are
gathered in a dict (a later revision of a key replaces the earlier one) until about
RUN_BYTES are held; the run is then sorted and written to an unnamed scratch file (mode 0600,
gone when closed) in chunks, and the next run begins. At the end the runs are merged; for a
key present in several runs the newest run wins, and a deletion (None) hides the key. A store
that fits in one run is never written out.

Spilled runs are plain length-prefixed records (a key's length and bytes, then a tag: deleted,
the value's length and bytes, or where the record lies in the snapshot), as
native/src/sort.rs spills them (it also tells a whole record from a value already parsed):
nothing read back is ever decoded as anything but lengths and bytes, whatever the archive's
keys and values hold (tests/unit/test_key_order.py spills values that are marshal and pickle
data). This module is part of the Python definition of the pass the product runs compiled
(jaco.archive.snapshot_file.read_snapshot_state_reference); it spilled through marshal for
speed while it was the product's path, and no longer needs to.
"""

from __future__ import annotations

import heapq
import os
import struct
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

RUN_BYTES = 48 * 1024 * 1024  # held in memory before a run is spilled (as counted below)
CHUNK_BYTES = 256 * 1024  # a spilled run is read back this much at a time
ENTRY_OVERHEAD = 160  # a dict slot, two object headers, a tuple: per entry, roughly

# A record: its bytes, or (offset, size) where it lies in a file (jaco.archive.bolt.Record).
Value = bytes | tuple[int, int]


def latest_in_key_order(
    records: Iterable[tuple[bytes, Value | None]],
    scratch: Path | None,
    run_bytes: int | None = None,
) -> Iterator[tuple[bytes, Value]]:
    """(key, value) of every key whose latest record is not a deletion, in key order.

    `records` come oldest first; a value of None deletes the key. Values are bytes or small
    tuples (their size is counted as their length, or 16). `scratch` is the directory for
    spilled runs (None: the system's temporary directory); `run_bytes` the memory a run may
    hold (default RUN_BYTES).
    """
    run_bytes = run_bytes or RUN_BYTES
    run: dict[bytes, Value | None] = {}
    held = 0
    spill: IO[bytes] | None = None
    runs: list[tuple[int, int]] = []  # (start, end) of each spilled run in `spill`
    try:
        for key, value in records:
            run[key] = value
            held += len(key) + (len(value) if isinstance(value, bytes) else 16) + ENTRY_OVERHEAD
            if held >= run_bytes:
                if spill is None:
                    spill = tempfile.TemporaryFile(dir=scratch)
                runs.append(_write_run(spill, run))
                run, held = {}, 0
        if spill is None:
            for key, value in sorted(run.items()):
                if value is not None:
                    yield key, value
            return
        if run:
            runs.append(_write_run(spill, run))
        run = {}
        readers = [_read_run(spill, start, end, age) for age, (start, end) in enumerate(runs)]
        last_key: bytes | None = None
        last_value: Value | None = None
        # Entries sort by (key, age): of one key, the newest run's entry comes last.
        for key, _, value in heapq.merge(*readers):
            if key != last_key:
                if last_value is not None:
                    yield last_key, last_value  # type: ignore[misc]
                last_key = key
            last_value = value
        if last_value is not None:
            yield last_key, last_value  # type: ignore[misc]
    finally:
        if spill is not None:
            spill.close()


_LENGTH = struct.Struct(">I")
_AT = struct.Struct(">QI")
_DELETED, _BYTES, _WHERE = b"\x00", b"\x01", b"\x02"


def _encoded(key: bytes, value: Value | None) -> bytes:
    head = _LENGTH.pack(len(key)) + key
    if value is None:
        return head + _DELETED
    if isinstance(value, bytes):
        return head + _BYTES + _LENGTH.pack(len(value)) + value
    return head + _WHERE + _AT.pack(*value)


def _write_run(out: IO[bytes], run: dict[bytes, Value | None]) -> tuple[int, int]:
    """Append `run`, sorted, as length-prefixed records; its (start, end) in `out`."""
    out.seek(0, 2)
    start = out.tell()
    chunk: list[bytes] = []
    size = 0
    for key in sorted(run):
        record = _encoded(key, run[key])
        chunk.append(record)
        size += len(record)
        if size >= CHUNK_BYTES:
            out.write(b"".join(chunk))
            chunk, size = [], 0
    out.write(b"".join(chunk))
    out.flush()
    return start, out.tell()


class _Run:
    """Reads one spilled run at its own offset (pread), CHUNK_BYTES at a time: the runs share
    one file."""

    def __init__(self, fd: int, start: int, end: int) -> None:
        self.fd, self.at, self.end = fd, start, end
        self.buffer, self.pos = b"", 0

    def take(self, n: int) -> bytes:
        if len(self.buffer) - self.pos < n:
            rest = self.buffer[self.pos :]
            more = os.pread(self.fd, min(max(n, CHUNK_BYTES), self.end - self.at), self.at)
            self.at += len(more)
            self.buffer, self.pos = rest + more, 0
            if len(self.buffer) < n:
                raise OSError(f"the scratch file of a sorted run is truncated at {self.at}")
        taken = self.buffer[self.pos : self.pos + n]
        self.pos += n
        return taken

    def exhausted(self) -> bool:
        return self.pos == len(self.buffer) and self.at >= self.end


def _read_run(
    spill: IO[bytes], start: int, end: int, age: int
) -> Iterator[tuple[bytes, int, Value | None]]:
    """One spilled run: (key, age, value), in the order written."""
    run = _Run(spill.fileno(), start, end)
    while not run.exhausted():
        key = run.take(_LENGTH.unpack(run.take(4))[0])
        tag = run.take(1)
        value: Value | None = None
        if tag == _BYTES:
            value = run.take(_LENGTH.unpack(run.take(4))[0])
        elif tag == _WHERE:
            offset, size = _AT.unpack(run.take(_AT.size))
            value = (offset, size)
        yield key, age, value
