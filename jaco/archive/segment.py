"""A change segment: the changes of a run of revisions after a full backup, one object.

Continuous backup writes the store's changes, in revision order, as segments: each extends a
full backup (`base`, at `base_revision`) with every revision from `first_revision` to
`last_revision` (revisions that changed only liveness keys carry no record, but are covered),
and carries the audit head at its end. The plaintext is

    MAGIC | u32 header length | header (JSON, SegmentMeta) | records | SHA-256 of all before

one record per revision (u64 revision, u16 + its time, u32 changes, then per change u8
delete, u32 + key, u32 + value), and it is zlib-compressed and age-encrypted as a whole: a
segment is small (the stream cuts one every few seconds or MiB), so it is built and read in
memory, with every length (and the inflated size) bounded before it is trusted. Reading is
hostile-input code: a flipped byte fails age's authentication or the SHA-256; nothing read is
executed. This module knows nothing of gRPC,
etcd or S3.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pyrage
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jaco.archive.age import DecryptionFailed
from jaco.archive.meta import AuditHead, Name
from jaco.errors import ArchiveError

MAGIC = b"JACOSEG1\n"
MAX_SEGMENT_BYTES = 256 * 1024 * 1024  # ciphertext or plaintext; the stream cuts at a few MiB
MAX_HEADER_BYTES = 64 * 1024
MAX_KEY_BYTES = 64 * 1024
SEGMENT_SUFFIX = ".seg.age"
Stem = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


class SegmentMeta(BaseModel):
    """What a segment says about itself (also kept, in the clear, in the catalog)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    format: Literal[1] = 1
    cluster_id: Name
    base: Stem
    base_revision: int = Field(ge=0)
    first_revision: int = Field(ge=1)
    last_revision: int = Field(ge=1)
    first_at: str = Field("", max_length=40)
    last_at: str = Field("", max_length=40)
    revisions: int = Field(ge=0)
    changes: int = Field(ge=0)
    audit_head: AuditHead | None = None


@dataclass(frozen=True)
class Change:
    key: bytes
    value: bytes
    delete: bool


@dataclass(frozen=True)
class RevisionRecord:
    revision: int
    at: str
    changes: tuple[Change, ...]


@dataclass(frozen=True)
class Segment:
    meta: SegmentMeta
    records: tuple[RevisionRecord, ...]


def segment_name(first_revision: int) -> str:
    """The object's name in its chain: by first revision alone, so a segment written again
    after a crash (before it was recorded) replaces the first attempt instead of overlapping."""
    return f"{first_revision:016d}{SEGMENT_SUFFIX}"


def encode_segment(meta: SegmentMeta, records: list[RevisionRecord]) -> bytes:
    body = bytearray(MAGIC)
    header = meta.model_dump_json(exclude_none=True).encode()
    body += struct.pack(">I", len(header)) + header
    for rec in records:
        at = rec.at.encode()
        body += struct.pack(">QH", rec.revision, len(at)) + at
        body += struct.pack(">I", len(rec.changes))
        for c in rec.changes:
            body += struct.pack(">BI", int(c.delete), len(c.key)) + c.key
            body += struct.pack(">I", len(c.value)) + c.value
    body += hashlib.sha256(body).digest()
    return bytes(body)


def encrypt_segment(plaintext: bytes, recipients: list[Any]) -> bytes:
    """zlib, then age: the records are JSON, which compresses about tenfold."""
    return bytes(pyrage.encrypt(zlib.compress(plaintext, 6), recipients))


def decrypt_segment(ciphertext: bytes, identities: list[Any], name: str) -> bytes:
    if len(ciphertext) > MAX_SEGMENT_BYTES:
        raise ArchiveError(f"segment {name} is larger than any segment the stream writes")
    try:
        compressed = bytes(pyrage.decrypt(ciphertext, identities))
    except pyrage.DecryptError:
        raise DecryptionFailed(
            f"segment {name} does not decrypt with the identity given: wrong key, or its "
            "ciphertext is damaged"
        ) from None
    inflate = zlib.decompressobj()
    try:  # bounded: a small segment must not inflate into memory without limit
        plaintext = inflate.decompress(compressed, MAX_SEGMENT_BYTES)
    except zlib.error:
        raise ArchiveError(f"segment {name} is not a compressed jaco change segment") from None
    if inflate.unconsumed_tail:
        raise ArchiveError(f"segment {name} inflates past {MAX_SEGMENT_BYTES} bytes")
    if not inflate.eof:
        raise ArchiveError(f"segment {name} is truncated")
    return plaintext


class _Cursor:
    def __init__(self, data: bytes, name: str) -> None:
        self.data, self.pos, self.name = data, 0, name

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ArchiveError(f"segment {self.name} is truncated or malformed")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str) -> tuple[int, ...]:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))


def decode_segment(plaintext: bytes, name: str) -> Segment:
    """Parse and verify a decrypted segment: checksum, header, records inside its range, in
    increasing order, as many as the header says."""
    if len(plaintext) < len(MAGIC) + 36 or not plaintext.startswith(MAGIC):
        raise ArchiveError(f"{name} is not a jaco change segment")
    if hashlib.sha256(plaintext[:-32]).digest() != plaintext[-32:]:
        raise ArchiveError(f"segment {name} is damaged (its SHA-256 does not match)")
    cur = _Cursor(plaintext[:-32], name)
    cur.take(len(MAGIC))
    (size,) = cur.unpack(">I")
    if size > MAX_HEADER_BYTES:
        raise ArchiveError(f"segment {name} has an oversized header")
    try:
        meta = SegmentMeta.model_validate_json(cur.take(size))
    except ValidationError:
        raise ArchiveError(f"segment {name} has an invalid header") from None
    if meta.last_revision < meta.first_revision or meta.first_revision <= meta.base_revision:
        raise ArchiveError(f"segment {name} names an impossible revision range")
    records: list[RevisionRecord] = []
    last = meta.first_revision - 1
    while cur.pos < len(cur.data):
        revision, at_len = cur.unpack(">QH")
        at = cur.take(at_len).decode("ascii", "replace")
        (count,) = cur.unpack(">I")
        if not last < revision <= meta.last_revision:
            raise ArchiveError(f"segment {name} holds revision {revision} out of order or range")
        changes = []
        for _ in range(count):
            delete, key_len = cur.unpack(">BI")
            if key_len > MAX_KEY_BYTES or delete > 1:
                raise ArchiveError(f"segment {name} is truncated or malformed")
            key = cur.take(key_len)
            (value_len,) = cur.unpack(">I")
            changes.append(Change(key, cur.take(value_len), bool(delete)))
        records.append(RevisionRecord(revision, at, tuple(changes)))
        last = revision
    if len(records) != meta.revisions or sum(len(r.changes) for r in records) != meta.changes:
        raise ArchiveError(f"segment {name} does not hold the records its header counts")
    return Segment(meta, tuple(records))


AUDIT_HEAD_KEY = b"/jaco/v1/audit/head"


class SegmentBuilder:
    """The segment being filled: revisions as they arrive, progress, the audit head they
    carry; `cut` seals it and starts the next one just after it."""

    def __init__(
        self, cluster_id: str, base: str, base_revision: int, after: int, head: AuditHead | None
    ) -> None:
        self.cluster_id, self.base, self.base_revision = cluster_id, base, base_revision
        self.head = head
        self._start(after)

    def _start(self, after: int) -> None:
        self.first = after + 1
        self.last = after
        self.records: list[RevisionRecord] = []
        self.size = 0
        self.first_at = self.last_at = ""

    def add(self, record: RevisionRecord) -> None:
        if record.revision <= self.last:
            return  # a reconnect may send again what was already had
        self.records.append(record)
        self.size += 16 + sum(9 + len(c.key) + len(c.value) for c in record.changes)
        self.progress(record.revision, record.at)
        for change in record.changes:
            if change.key == AUDIT_HEAD_KEY and not change.delete:
                head = json.loads(change.value)
                self.head = AuditHead(seq=head["seq"], hash=head["hash"])

    def progress(self, revision: int, at: str) -> None:
        if revision > self.last:
            self.last = revision
            self.first_at = self.first_at or at
            self.last_at = at

    def cut(self) -> tuple[SegmentMeta, bytes]:
        meta = SegmentMeta(
            cluster_id=self.cluster_id,
            base=self.base,
            base_revision=self.base_revision,
            first_revision=self.first,
            last_revision=self.last,
            first_at=self.first_at,
            last_at=self.last_at,
            revisions=len(self.records),
            changes=sum(len(r.changes) for r in self.records),
            audit_head=self.head,
        )
        plaintext = encode_segment(meta, self.records)
        self._start(self.last)
        return meta, plaintext
