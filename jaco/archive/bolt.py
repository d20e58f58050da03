"""Read an etcd snapshot file directly: a minimal, read-only bbolt reader.

An etcd snapshot is a bbolt database (plus a 32-byte SHA-256 trailer). Its `key` bucket holds
every stored revision of every key, ordered by revision, each value an mvccpb.KeyValue. From
it this module derives what a backup's meta.json needs, without starting etcd and without
asking the live cluster: the store revision the snapshot is at, and every stored revision of
the keys asked for, oldest first (jaco.archive.key_order keeps the latest of each, in key
order, in bounded memory).

Only data is read, never executed: pages are parsed with struct and bounds checks, values with
protobuf. A malformed file raises SnapshotFileError (never an IndexError or a hang: every
page is visited at most once). Reads use pread on page-sized ranges, so memory stays bounded
by the largest single value, whatever the file size.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

from aetcd.rpc import kv_pb2

from jaco.archive.key_order import Value

MAGIC = 0xED0CDAED
VERSION = 2
PAGE_HEADER = struct.Struct("<QHHI")  # id, flags, count, overflow
META = struct.Struct("<IIII QQ QQQ Q")  # magic, version, page size, flags, root, seq, ..., sum
BRANCH_ELEMENT = struct.Struct("<IIQ")  # pos, key size, page id
LEAF_ELEMENT = struct.Struct("<IIII")  # flags, pos, key size, value size
BUCKET = struct.Struct("<QQ")  # root page id, sequence
BRANCH, LEAF, META_PAGE = 0x01, 0x02, 0x04
BUCKET_LEAF = 0x01
KEY_BUCKET = b"key"
REVISION_KEY = 17  # 8-byte main revision, "_", 8-byte sub revision (+ "t" for a tombstone)
PEEK = 4096  # enough of a KeyValue to read its key (keys are short; the key comes first)
# etcd refuses requests over --max-request-bytes (1.5 MiB by default): a record claiming more
# is damage, and must not make the reader allocate it.
MAX_RECORD = 64 * 1024 * 1024


class SnapshotFileError(Exception):
    """The file is not a readable etcd snapshot (or is damaged)."""


# A stored KeyValue: its bytes when at most PEEK long, else (offset, size) in the file.
Record = Value


# etcd appends the SHA-256 of the database to every snapshot it streams, so a snapshot file
# is a whole number of 512-byte blocks and these 32 bytes (`etcdctl snapshot restore` relies
# on both).
ETCD_TRAILER = 32


def check_head(head: bytes) -> None:
    """Refuse, from its first page alone, what cannot be a bbolt file: the page must be a
    meta page with bbolt's magic, version and a page size bbolt uses."""
    if len(head) < PAGE_HEADER.size + META.size:
        raise SnapshotFileError("it is too short to be one")
    flags = PAGE_HEADER.unpack_from(head)[1]
    magic, version, page_size = META.unpack_from(head, PAGE_HEADER.size)[:3]
    if flags != META_PAGE or magic != MAGIC or version != VERSION or not _page_size_ok(page_size):
        raise SnapshotFileError("its first page is not a bbolt meta page")


def _page_size_ok(size: int) -> bool:
    return 512 <= size <= 1 << 16 and not size & (size - 1)


def fnv64a(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for byte in data:
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


class BoltFile:
    """One bbolt file opened for reading."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        try:
            self.size = os.fstat(self.fd).st_size
            self.page_size, self.root = self._meta()
            self.revision = 0
        except BaseException:
            os.close(self.fd)
            raise

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> BoltFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, offset: int, size: int) -> bytes:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise SnapshotFileError("the snapshot file is truncated (a page lies past its end)")
        data = os.pread(self.fd, size, offset)
        if len(data) != size:
            raise SnapshotFileError("the snapshot file is truncated")
        return data

    def _meta(self) -> tuple[int, int]:
        """The newest valid of the two meta pages: (page size, root bucket page)."""
        first = self.read(0, PAGE_HEADER.size + META.size) if self.size >= 80 else b""
        if len(first) < 80:
            raise SnapshotFileError("the snapshot file is too short to be an etcd snapshot")
        page_size = META.unpack_from(first, PAGE_HEADER.size)[2]
        if not _page_size_ok(page_size):
            raise SnapshotFileError("the snapshot file is not a bbolt database (bad page size)")
        best: tuple[int, int, int] | None = None
        for page in (0, 1):
            raw = self.read(page * page_size + PAGE_HEADER.size, META.size)
            magic, version, _, _, root, _, _, pages, txid, checksum = META.unpack(raw)
            if magic != MAGIC or version != VERSION or fnv64a(raw[:-8]) != checksum:
                continue
            if best is None or txid > best[0]:
                best = (txid, root, pages)
        if best is None:
            raise SnapshotFileError("the snapshot file is not a bbolt database (no valid meta)")
        if best[2] * page_size > self.size:
            raise SnapshotFileError(
                f"the snapshot file is truncated: {self.size} bytes of {best[2] * page_size}"
            )
        return page_size, best[1]

    def page(self, page_id: int, seen: set[int]) -> tuple[int, int, int, int, bytes]:
        """(offset, flags, element count, length in bytes, first page) of one page, visited
        once; one read for the header and the first page together."""
        if page_id in seen or page_id < 2:
            raise SnapshotFileError("the snapshot file's page tree is damaged (a page loops)")
        seen.add(page_id)
        offset = page_id * self.page_size
        first = self.read(offset, self.page_size)
        pid, flags, count, overflow = PAGE_HEADER.unpack_from(first)
        if pid != page_id:
            raise SnapshotFileError(f"the snapshot file's page {page_id} is damaged")
        return offset, flags, count, (overflow + 1) * self.page_size, first

    def leaves(self, root: int, seen: set[int]) -> Iterator[tuple[int, int, bytes]]:
        """Leaf pages under `root`, in key order: (page offset, element count, first page).

        Walked with an explicit stack: a hostile file cannot make it recurse without bound."""
        stack = [root]
        while stack:
            page_id = stack.pop()
            offset, flags, count, length, first = self.page(page_id, seen)
            if flags & LEAF:
                yield offset, count, first
                continue
            if not flags & BRANCH:
                raise SnapshotFileError(f"the snapshot file's page {page_id} is not a tree page")
            page = first if length == len(first) else self.read(offset, length)
            children = []
            for i in range(count):
                at = PAGE_HEADER.size + i * BRANCH_ELEMENT.size
                if at + BRANCH_ELEMENT.size > length:
                    raise SnapshotFileError(f"the snapshot file's page {page_id} is damaged")
                children.append(BRANCH_ELEMENT.unpack_from(page, at)[2])
            stack.extend(reversed(children))

    def _elements(
        self, offset: int, count: int, head: bytes, peek: int
    ) -> Iterator[tuple[int, bytes, int, int, bytes]]:
        """(flags, key, value offset, value size, the first `peek` bytes of the value)."""
        for i in range(count):
            at = PAGE_HEADER.size + i * LEAF_ELEMENT.size
            if at + LEAF_ELEMENT.size > len(head):
                head = self.read(offset, at + LEAF_ELEMENT.size)
            flags, pos, ksize, vsize = LEAF_ELEMENT.unpack_from(head, at)
            if ksize + vsize > MAX_RECORD:
                raise SnapshotFileError("the snapshot holds a record larger than etcd allows")
            start = at + pos
            want = ksize + min(vsize, peek)
            if start + want <= len(head):
                data = head[start : start + want]
            else:
                data = self.read(offset + start, want)
            yield flags, data[:ksize], offset + start + ksize, vsize, data[ksize:]

    def bucket_root(self, name: bytes) -> int:
        """The root page of a top-level bucket (etcd never stores its big buckets inline)."""
        for offset, count, head in self.leaves(self.root, set()):
            for flags, key, _, vsize, value in self._elements(offset, count, head, BUCKET.size):
                if key == name:
                    if not flags & BUCKET_LEAF or vsize < BUCKET.size:
                        raise SnapshotFileError(f"the snapshot's {name!r} is not a bucket")
                    root = BUCKET.unpack_from(value)[0]
                    if root == 0:
                        raise SnapshotFileError(f"the snapshot's {name!r} bucket is inline")
                    return int(root)
        raise SnapshotFileError(f"the snapshot has no {name!r} bucket (not an etcd store)")

    def value_at(self, bucket: bytes, key: bytes) -> tuple[int, int]:
        """Where the value of `key` in the top-level `bucket` lies in the file: (offset,
        size), inside its page. The bucket may be inline, its page inside its parent's value
        (etcd's small `meta` bucket is). Refused unless the key is there exactly once."""
        for offset, count, head in self.leaves(self.root, set()):
            for flags, name, at, vsize, value in self._elements(offset, count, head, BUCKET.size):
                if name != bucket:
                    continue
                if not flags & BUCKET_LEAF or vsize < BUCKET.size:
                    raise SnapshotFileError(f"the store's {name!r} is not a bucket")
                return self._only(key, BUCKET.unpack_from(value)[0], at, vsize, name)
        raise SnapshotFileError(f"the store has no {bucket!r} bucket (not an etcd store)")

    def _only(self, key: bytes, root: int, at: int, vsize: int, name: bytes) -> tuple[int, int]:
        pages: list[tuple[int, int, bytes, int]] = []  # offset, elements, first page, bytes
        if root:
            for offset, count, first in self.leaves(root, set()):
                overflow = PAGE_HEADER.unpack_from(first)[3]
                pages.append((offset, count, first, (overflow + 1) * self.page_size))
        else:  # inline: one leaf page, right after the bucket's header
            page = self.read(at + BUCKET.size, vsize - BUCKET.size)
            if len(page) < PAGE_HEADER.size:
                raise SnapshotFileError(f"the store's {name!r} bucket is damaged")
            pages.append((at + BUCKET.size, PAGE_HEADER.unpack_from(page)[2], page, len(page)))
        found = [
            (value_at, size)
            for offset, count, first, length in pages
            for _, element, value_at, size, _ in self._elements(offset, count, first, 0)
            if element == key and offset <= value_at and value_at + size <= offset + length
        ]
        if len(found) != 1:
            raise SnapshotFileError(f"the store's {name!r} bucket holds {len(found)} {key!r}")
        return found[0]

    def revisions(self, keep: Callable[[bytes], bool]) -> Iterator[tuple[bytes, Record | None]]:
        """Every stored revision of the keys `keep` accepts, oldest first: (key, its record, or
        None where the key was deleted). The store revision, over all keys, is in
        `self.revision` once the iterator is exhausted.

        The loop is the per-key hot path of every backup and restore: one pass over the leaf
        pages, a record taken out of the page already read when it fits (nearly all do)."""
        revision = 0
        element, header = LEAF_ELEMENT.unpack_from, PAGE_HEADER.size
        for offset, count, head in self.leaves(self.bucket_root(KEY_BUCKET), set()):
            size = len(head)
            for i in range(count):
                at = header + i * LEAF_ELEMENT.size
                if at + LEAF_ELEMENT.size > size:
                    head = self.read(offset, at + LEAF_ELEMENT.size)
                    size = len(head)
                _, pos, ksize, vsize = element(head, at)
                if ksize + vsize > MAX_RECORD:
                    raise SnapshotFileError("the snapshot holds a record larger than etcd allows")
                start = at + pos
                want = ksize + min(vsize, PEEK)
                if start + want <= size:
                    data = head[start : start + want]
                else:
                    data = self.read(offset + start, want)
                if ksize not in (REVISION_KEY, REVISION_KEY + 1) or data[8:9] != b"_":
                    raise SnapshotFileError("the snapshot's key bucket holds a malformed revision")
                main = int.from_bytes(data[:8], "big")
                if main > revision:
                    revision = main
                peek = data[ksize:]
                key = _key_of(peek, vsize, offset + start + ksize, self)
                if not keep(key):
                    continue
                if ksize > REVISION_KEY:  # a tombstone: the key was deleted
                    yield key, None
                elif vsize <= PEEK:
                    yield key, peek
                else:
                    yield key, (offset + start + ksize, vsize)
        self.revision = revision

    def value(self, record: Record) -> bytes:
        """The value of a KeyValue record (its bytes, or where it lies in the file)."""
        raw = record if isinstance(record, bytes) else self.read(*record)
        try:
            return bytes(kv_pb2.KeyValue.FromString(raw).value)
        except Exception as exc:  # protobuf's DecodeError
            raise SnapshotFileError("the snapshot holds a damaged key-value record") from exc


def _key_of(peek: bytes, vsize: int, value_at: int, bolt: BoltFile) -> bytes:
    """The key of a KeyValue record (field 1, written first by etcd); falls back to a parse."""
    if peek[:1] == b"\x0a":
        length, shift, at = 0, 0, 1
        while at < len(peek) and shift < 35:
            byte = peek[at]
            length |= (byte & 0x7F) << shift
            at += 1
            shift += 7
            if not byte & 0x80:
                if at + length <= len(peek):
                    return peek[at : at + length]
                break
    kv = kv_pb2.KeyValue()
    try:
        kv.ParseFromString(bolt.read(value_at, vsize))
    except Exception as exc:
        raise SnapshotFileError("the snapshot holds a damaged key-value record") from exc
    return bytes(kv.key)
