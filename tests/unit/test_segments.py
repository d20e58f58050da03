"""Change segments and their chain, as pure rules: the format's checks against hostile bytes,
and what a point-in-time restore accepts as a chain."""

from __future__ import annotations

import datetime as dt
import zlib

import pyrage
import pytest

from jaco.archive.meta import BackupMeta
from jaco.archive.segment import (
    Change,
    RevisionRecord,
    SegmentBuilder,
    SegmentMeta,
    decode_segment,
    decrypt_segment,
    encode_segment,
    encrypt_segment,
)
from jaco.errors import ArchiveError, InvalidArgument
from jaco.node.pitr import Target, plan_chain
from tests.archives import a_meta

KEY = pyrage.x25519.Identity.generate()
HEAD = b'{"seq": 7, "hash": "' + b"a" * 64 + b'"}'


def _base(index: int = 10) -> BackupMeta:
    return a_meta(snapshot_index=index)


def _segment(first: int, last: int, cluster: str = "c1", base: int = 10) -> SegmentMeta:
    return SegmentMeta(
        cluster_id=cluster, base="b", base_revision=base, first_revision=first,
        last_revision=last, revisions=0, changes=0,
        last_at=f"2026-12-01T00:{last % 60:02d}:00+00:00",
    )  # fmt: skip


def test_a_segment_round_trips_and_carries_the_audit_head() -> None:
    builder = SegmentBuilder("c1", "b", 10, 10, None)
    builder.add(RevisionRecord(12, "t1", (Change(b"/jaco/v1/audit/head", HEAD, False),)))
    builder.add(RevisionRecord(12, "t1", ()))  # sent again after a reconnect: ignored
    builder.add(RevisionRecord(14, "t2", (Change(b"/jaco/v1/x", b"", True),)))
    builder.progress(16, "t3")
    meta, plaintext = builder.cut()
    assert (meta.first_revision, meta.last_revision, meta.revisions) == (11, 16, 2)
    assert meta.audit_head is not None and meta.audit_head.seq == 7
    assert builder.first == 17  # the next segment starts just after
    sealed = encrypt_segment(plaintext, [KEY.to_public()])
    segment = decode_segment(decrypt_segment(sealed, [KEY], "s"), "s")
    assert [r.revision for r in segment.records] == [12, 14]
    assert segment.records[1].changes[0].delete


def test_hostile_segments_are_refused_in_one_line() -> None:
    meta = _segment(11, 12)
    plaintext = encode_segment(meta, [])
    with pytest.raises(ArchiveError, match="header counts"):
        decode_segment(encode_segment(meta.model_copy(update={"revisions": 1}), []), "s")
    flipped = bytearray(plaintext)
    flipped[20] ^= 1
    with pytest.raises(ArchiveError, match="SHA-256 does not match"):
        decode_segment(bytes(flipped), "s")
    with pytest.raises(ArchiveError, match="not a jaco change segment"):
        decode_segment(b"x" * 100, "s")
    deflate, zeros = zlib.compressobj(), b"\0" * 1024 * 1024
    packed = b"".join(deflate.compress(zeros) for _ in range(257)) + deflate.flush()
    bomb = pyrage.encrypt(packed, [KEY.to_public()])  # 257 MiB of zeros in 256 KiB
    with pytest.raises(ArchiveError, match="inflates past"):
        decrypt_segment(bomb, [KEY], "s")
    record = RevisionRecord(13, "t", ())  # outside 11-12
    with pytest.raises(ArchiveError, match="out of order or range"):
        decode_segment(encode_segment(meta.model_copy(update={"revisions": 1}), [record]), "s")


def test_the_chain_must_extend_the_backup_without_gap_or_overlap() -> None:
    base = _base()
    chain = [("a", _segment(11, 20)), ("b", _segment(21, 30))]
    assert plan_chain(chain, base, Target(revision=25)).revision == 25
    assert [n for n, _ in plan_chain(chain, base, Target(revision=15)).segments] == ["a"]
    with pytest.raises(ArchiveError, match="revisions 11-20 are missing"):
        plan_chain(chain[1:], base, Target(revision=25))
    with pytest.raises(ArchiveError, match="overlaps"):
        plan_chain([*chain, ("c", _segment(25, 40))], base, Target(revision=25))
    with pytest.raises(ArchiveError, match="is of cluster c2"):
        plan_chain([("a", _segment(11, 20, cluster="c2"))], base, Target(revision=15))
    with pytest.raises(ArchiveError, match="extends the backup at revision 5"):
        plan_chain([("a", _segment(11, 20, base=5))], base, Target(revision=15))
    with pytest.raises(InvalidArgument, match="outside what these segments can restore"):
        plan_chain(chain, base, Target(revision=31))
    with pytest.raises(InvalidArgument, match="before the backup was taken"):
        plan_chain(chain, base, Target(time=dt.datetime(2026, 11, 1, tzinfo=dt.UTC)))
