"""jaco.archive.format.SnapshotSha256: the SHA-256 etcd appends to a snapshot, checked in the
pass that hashes the whole file, however the bytes come in blocks.

`jaco restore` tells etcd's tool not to hash the snapshot again (`--skip-hash-check`)
because this check ran: a block split it mishandled would let a damaged snapshot through to
etcd unchecked, or refuse every good one.
"""

from __future__ import annotations

import hashlib
import random

import pytest

from jaco.archive.format import NO_TRAILER, SnapshotSha256
from tests.archives import etcd_trailed

MISMATCH = "does not match the SHA-256 etcd appended to it"


def _fed(data: bytes, sizes: list[int], declared: int | None = None) -> SnapshotSha256:
    sha = SnapshotSha256(len(data) if declared is None else declared)
    at = 0
    for n in sizes:
        sha.update(data[at : at + n])
        at += n
    if at < len(data):
        sha.update(data[at:])
    return sha


SPLITS = {
    "whole": [],
    "the trailer alone": [4096 * 3],
    "the trailer cut in two": [4096 * 3 + 5],
    "the body's end and trailer's start together": [4096 * 3 - 7],
    "one byte at a time at the end": [4096 * 3 - 2, 1, 1, *[1] * 31],
    "odd sizes": [1, 7, 33, 500, 512, 4095, 1, 32],
}


@pytest.mark.parametrize("split", SPLITS.values(), ids=SPLITS.keys())
def test_any_split_checks_the_trailer_and_hashes_the_whole(split: list[int]) -> None:
    snapshot = etcd_trailed(random.Random(7).randbytes(4096 * 3))
    sha = _fed(snapshot, split)
    assert sha.whole_blocks()
    assert sha.trailer_problem() is None
    assert sha.hexdigest() == hashlib.sha256(snapshot).hexdigest()


@pytest.mark.parametrize("at", [0, 4096, 4096 * 3 - 1, 4096 * 3, 4096 * 3 + 31])
@pytest.mark.parametrize("split", SPLITS.values(), ids=SPLITS.keys())
def test_a_flipped_byte_anywhere_is_refused(split: list[int], at: int) -> None:
    snapshot = bytearray(etcd_trailed(random.Random(7).randbytes(4096 * 3)))
    snapshot[at] ^= 0x01
    assert _fed(bytes(snapshot), split).trailer_problem() == MISMATCH


def test_a_snapshot_without_trailer_or_with_more_is_refused() -> None:
    body = random.Random(7).randbytes(4096 * 3)
    bare = SnapshotSha256(len(body))
    bare.update(body)
    assert not bare.whole_blocks() and bare.trailer_problem() == NO_TRAILER
    assert SnapshotSha256(16).trailer_problem() == NO_TRAILER  # shorter than a trailer
    snapshot = etcd_trailed(body)
    assert _fed(snapshot + b"x", [], declared=len(snapshot)).trailer_problem() == MISMATCH
    assert _fed(snapshot[:-1], [], declared=len(snapshot)).trailer_problem() == MISMATCH
