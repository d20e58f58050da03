"""The walk of state digest version 2 over an etcd snapshot file (jaco.model.digest): the
page tree read from its root, each leaf whole, every element and record held to its page.

The definition the compiled pass over a snapshot's stream (native/src/stream.rs) is held to,
refusal for refusal: that pass sees every page once, in the file's order, and cannot read past
a page as jaco.archive.bolt's walk of version 1 may, so neither does this walk. Used by the
tests and by `read_snapshot_state_reference(..., version=2)`, not by the product.
"""

from __future__ import annotations

from collections.abc import Iterator

from aetcd.rpc import kv_pb2

from jaco.archive.bolt import (
    BRANCH,
    BRANCH_ELEMENT,
    BUCKET,
    BUCKET_LEAF,
    KEY_BUCKET,
    LEAF,
    LEAF_ELEMENT,
    MAX_RECORD,
    PAGE_HEADER,
    REVISION_KEY,
    BoltFile,
    SnapshotFileError,
)

# The most a page and its overflow may span in the walk of state digest version 2, which reads
# each leaf whole: a record may hold at most MAX_RECORD, and etcd's 1.5 MiB request limit
# (jaco never raises it) keeps real leaves far smaller. A stream of pages must hold one span
# at a time, so this bounds its memory on hostile input.
MAX_SPAN = 16 * 1024 * 1024


def spanned_leaves(bolt: BoltFile, root: int, seen: set[int]) -> Iterator[tuple[int, int, bytes]]:
    """Leaf pages under `root`, in key order, each read whole with its overflow: (page id,
    element count, bytes). The walk of state digest version 2, stricter than `leaves`
    where only a damaged file differs: a branch's elements must lie within its page, and
    no page may span more than MAX_SPAN. A page's faults, first found first: it loops,
    it starts past the file's end, its id is not its own, it is not a tree page, its span
    is over MAX_SPAN, its span ends past the file's end, a branch element past the page.
    (A pass over the stream, which sees every page once in file order, is held to this.)"""
    stack = [root]
    while stack:
        page_id = stack.pop()
        offset, flags, count, span, first = bolt.page(page_id, seen)  # loops, past end, its id
        damaged = f"the snapshot file's page {page_id} is damaged"
        if not flags & (LEAF | BRANCH):
            raise SnapshotFileError(f"the snapshot file's page {page_id} is not a tree page")
        if span > MAX_SPAN:
            raise SnapshotFileError(damaged)
        page = first if span == len(first) else bolt.read(offset, span)
        if flags & LEAF:
            yield page_id, count, page
            continue
        if PAGE_HEADER.size + count * BRANCH_ELEMENT.size > span:
            raise SnapshotFileError(damaged)
        children = [
            BRANCH_ELEMENT.unpack_from(page, PAGE_HEADER.size + i * BRANCH_ELEMENT.size)[2]
            for i in range(count)
        ]
        stack.extend(reversed(children))


def key_bucket_root(bolt: BoltFile) -> int:
    """The key bucket's root page, found as `bucket_root` finds it but by the walk of
    version 2 (`spanned_leaves`), each leaf's elements held to its page. In each leaf the
    elements are read in order up to the first fault or the first named `key`, whichever
    comes first: an element header past the page, a record larger than etcd allows, a key
    past the page, then (for `key`) its bucket header past the page, not a bucket, inline."""
    name = KEY_BUCKET
    for page_id, count, page in spanned_leaves(bolt, bolt.root, set()):
        for index in range(count):
            at = PAGE_HEADER.size + index * LEAF_ELEMENT.size
            if at + LEAF_ELEMENT.size > len(page):
                raise SnapshotFileError(f"the snapshot file's page {page_id} is damaged")
            flags, pos, ksize, vsize = LEAF_ELEMENT.unpack_from(page, at)
            if ksize + vsize > MAX_RECORD:
                raise SnapshotFileError("the snapshot holds a record larger than etcd allows")
            start = at + pos
            if start + ksize > len(page):
                raise SnapshotFileError(f"the snapshot file's page {page_id} is damaged")
            if page[start : start + ksize] != name:
                continue
            if start + ksize + min(vsize, BUCKET.size) > len(page):
                raise SnapshotFileError(f"the snapshot file's page {page_id} is damaged")
            if not flags & BUCKET_LEAF or vsize < BUCKET.size:
                raise SnapshotFileError(f"the snapshot's {name!r} is not a bucket")
            root = BUCKET.unpack_from(page, start + ksize)[0]
            if root == 0:
                raise SnapshotFileError(f"the snapshot's {name!r} bucket is inline")
            return int(root)
    raise SnapshotFileError(f"the snapshot has no {name!r} bucket (not an etcd store)")


def key_records(bolt: BoltFile) -> Iterator[tuple[bytes, bytes, int, int, bytes | None]]:
    """Every record of the key bucket, in the tree's order: (key, its revision as stored,
    17 bytes, page id, index in the page, value or None for a deletion). The store
    revision, over all keys, is in `bolt.revision` once the iterator is exhausted.

    State digest version 2's walk, stricter than `revisions` where only a damaged file
    differs: every element header and record must lie within its page (and overflow),
    every KeyValue must parse, as etcd's own start-up parses them all. Each page's
    first fault is raised, in this order: an element header past the page, a record
    larger than etcd allows, a record past the page, a malformed revision, a damaged
    KeyValue."""
    revision = 0
    for page_id, count, page in spanned_leaves(bolt, key_bucket_root(bolt), set()):
        damaged = f"the snapshot file's page {page_id} is damaged"
        for index in range(count):
            at = PAGE_HEADER.size + index * LEAF_ELEMENT.size
            if at + LEAF_ELEMENT.size > len(page):
                raise SnapshotFileError(damaged)
            _, pos, ksize, vsize = LEAF_ELEMENT.unpack_from(page, at)
            if ksize + vsize > MAX_RECORD:
                raise SnapshotFileError("the snapshot holds a record larger than etcd allows")
            start = at + pos
            if start + ksize + vsize > len(page):
                raise SnapshotFileError(damaged)
            stored = page[start : start + ksize]
            if ksize not in (REVISION_KEY, REVISION_KEY + 1) or stored[8:9] != b"_":
                raise SnapshotFileError("the snapshot's key bucket holds a malformed revision")
            revision = max(revision, int.from_bytes(stored[:8], "big"))
            try:
                kv = kv_pb2.KeyValue.FromString(page[start + ksize : start + ksize + vsize])
            except Exception as exc:  # protobuf's DecodeError
                raise SnapshotFileError("the snapshot holds a damaged key-value record") from exc
            value = None if ksize > REVISION_KEY else bytes(kv.value)
            yield bytes(kv.key), stored[:REVISION_KEY], page_id, index, value
    bolt.revision = revision
