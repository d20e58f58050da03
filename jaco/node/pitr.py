"""Point-in-time restore: a full backup, then its change segments replayed up to a target.

The segments are checked before anything is written: each decrypts and passes its SHA-256,
each is of the backup's cluster and extends that very backup (its revision), and together
they cover every revision from just after the backup to the target with no gap and no
overlap. Then the backup is restored as `jaco restore` does (jaco.node.restore: a staged
data dir renamed into place only when complete), and inside that staged dir the node's own
etcd is started on its own ports and every revision up to the target is applied as one
transaction, as the cluster applied it. etcd numbers the replayed revisions anew; what is
equal to the cluster's at the target is the content (the state digest) and the audit chain,
which is verified to extend the backup's audit head. The data dir's restore marker names the
target revision and its time, so jacod's RESTORE_COMPLETED records them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from jaco.archive.meta import BackupMeta
from jaco.archive.segment import (
    MAX_SEGMENT_BYTES,
    SEGMENT_SUFFIX,
    RevisionRecord,
    Segment,
    SegmentMeta,
    decode_segment,
    decrypt_segment,
)
from jaco.errors import ArchiveError, InvalidArgument
from jaco.files import write_private
from jaco.model import audit
from jaco.model.digest import StateDigest
from jaco.model.etcd import op_delete, op_put
from jaco.model.keys import B_ROOT, K_HEAD, P_EVENTS, ROOT, event_key
from jaco.node.bootstrap import Ports
from jaco.node.config import DataDir
from jaco.node.etcd_member import EtcdMember
from jaco.node.restore import restore


class SegmentSource(Protocol):
    """Where a chain of segments is read from: a directory, an S3 prefix."""

    def names(self) -> list[str]: ...
    def read(self, name: str) -> bytes: ...


class DirSource:
    def __init__(self, path: Path) -> None:
        if not path.is_dir():
            raise InvalidArgument(f"--segments {path} is not a directory")
        self.path = path

    def names(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir() if p.name.endswith(SEGMENT_SUFFIX))

    def read(self, name: str) -> bytes:
        path = self.path / name
        if not path.is_file() or path.stat().st_size > MAX_SEGMENT_BYTES:
            raise ArchiveError(f"segment {name} is not a regular file of a segment's size")
        return path.read_bytes()


@dataclass(frozen=True)
class Target:
    """Where to stop: a revision of the cluster, a time (the last revision at or before it),
    or just before an audit event (the revision before the one that wrote it: the state just
    before a mistake the audit log names)."""

    revision: int | None = None
    time: dt.datetime | None = None
    before_event: int | None = None


@dataclass(frozen=True)
class Plan:
    base: BackupMeta
    segments: list[tuple[str, SegmentMeta]]  # the ones needed, in order
    revision: int  # the target revision, in the cluster's numbering
    at: str  # when the cluster reached it (as the serving node relayed it)


def _segments(source: SegmentSource, identities: list[Any]) -> Iterator[tuple[str, Segment]]:
    for name in source.names():
        yield name, decode_segment(decrypt_segment(source.read(name), identities, name), name)


def plan_chain(metas: list[tuple[str, SegmentMeta]], base: BackupMeta, target: Target) -> Plan:
    """Check that the segments extend `base` without gap or overlap up to the target, and
    name the target revision. Pure: the rules, on the segments' headers."""
    metas = sorted(metas, key=lambda item: item[1].first_revision)
    expected = base.snapshot_index + 1
    for name, meta in metas:
        if meta.cluster_id != base.cluster_id:
            raise ArchiveError(
                f"segment {name} is of cluster {meta.cluster_id}, the backup of cluster "
                f"{base.cluster_id}: refusing to mix two clusters"
            )
        if meta.base_revision != base.snapshot_index:
            raise ArchiveError(
                f"segment {name} extends the backup at revision {meta.base_revision}, not this "
                f"one (revision {base.snapshot_index})"
            )
        if meta.first_revision > expected:
            raise ArchiveError(
                f"revisions {expected}-{meta.first_revision - 1} are missing: no segment "
                f"covers them (the next is {name})"
            )
        if meta.first_revision < expected:
            raise ArchiveError(f"segment {name} overlaps the one before it")
        expected = meta.last_revision + 1
    end = expected - 1
    window = f"revisions {base.snapshot_index}-{end}"
    if target.revision is not None:
        if not base.snapshot_index <= target.revision <= end:
            raise InvalidArgument(
                f"--to-revision {target.revision} is outside what these segments can restore "
                f"({window})"
            )
        revision, at = target.revision, base.taken_at.isoformat()
    elif target.before_event is not None:
        if base.audit_head is not None and target.before_event <= base.audit_head.seq:
            raise InvalidArgument(
                f"--before-event {target.before_event} is older than the backup (its audit "
                f"head is event {base.audit_head.seq}): restore from an older backup"
            )
        revision, at = end, ""  # found in the segments' records
    else:
        assert target.time is not None
        if target.time < base.taken_at:
            raise InvalidArgument(
                f"--to-time {target.time.isoformat()} is before the backup was taken "
                f"({base.taken_at.isoformat()})"
            )
        revision, at = base.snapshot_index, base.taken_at.isoformat()
        last_at = metas[-1][1].last_at if metas else base.taken_at.isoformat()
        if target.time > dt.datetime.fromisoformat(last_at):
            raise InvalidArgument(
                f"--to-time {target.time.isoformat()} is after the last segment ({last_at})"
            )
    needed = [(n, m) for n, m in metas if m.first_revision <= revision]
    return Plan(base, needed, revision, at)


def _locate(plan: Plan, records: Iterator[RevisionRecord], target: Target) -> tuple[int, str]:
    """The target revision, and its time, for a target given by time or by audit event."""
    revision, at = plan.base.snapshot_index, plan.base.taken_at.isoformat()
    wanted = event_key(target.before_event or 0).encode()
    for rec in records:
        if target.time is not None and rec.at and dt.datetime.fromisoformat(rec.at) > target.time:
            return revision, at
        if any(c.key == wanted and not c.delete for c in rec.changes):
            return rec.revision - 1, at
        revision, at = rec.revision, rec.at
    if target.before_event is not None:
        raise InvalidArgument(
            f"audit event {target.before_event} is not in these segments (they reach revision "
            f"{plan.revision}): is it newer than the last segment?"
        )
    return revision, at


def point_in_time_restore(
    archive: Path,
    source: SegmentSource,
    identities: list[Any],
    target: Target,
    data: DataDir,
    name: str,
    ports: Ports,
    notify: Callable[[str], None] = lambda message: None,
) -> tuple[BackupMeta, int, str]:
    """Restore `archive` (plain or age-encrypted) plus its segments up to `target`; returns
    the backup's meta, the target revision and its time."""
    from jaco.archive.encrypted import read_backup

    base = read_backup(archive, identities).meta  # verified once before the segments are read
    metas = [(n, s.meta) for n, s in _segments(source, identities)]
    plan = plan_chain(metas, base, target)
    if target.revision is None:
        records = (r for _, s in _segments(source, identities) for r in s.records)
        revision, at = _locate(plan, records, target)
        needed = [(n, m) for n, m in plan.segments if m.first_revision <= revision]
        plan = Plan(plan.base, needed, revision, at)
    result: dict[str, Any] = {}

    def replay(staged: DataDir) -> None:
        result.update(asyncio.run(_replay(staged, source, identities, plan)))

    restore(archive, data, name, ports, notify, after=replay, identities=identities)
    return base, plan.revision, str(result.get("at", plan.at))


async def _replay(
    staged: DataDir, source: SegmentSource, identities: list[Any], plan: Plan
) -> dict[str, Any]:
    config = staged.load()
    member = EtcdMember(staged, config)
    etcd = await member.start()
    at = plan.at
    try:
        for name, _ in plan.segments:
            segment = decode_segment(decrypt_segment(source.read(name), identities, name), name)
            for rec in segment.records:
                if rec.revision > plan.revision:
                    break
                for change in rec.changes:
                    if not change.key.startswith(B_ROOT):
                        raise ArchiveError(f"segment {name} holds a key outside jaco's store")
                ops = [
                    op_delete(c.key.decode()) if c.delete else op_put(c.key.decode(), c.value)
                    for c in rec.changes
                ]
                await etcd.txn([], ops)
                at = rec.at or at
        head_kv, revision = await etcd.get(K_HEAD)
        head = json.loads(head_kv.value) if head_kv else None
        anchors = []
        if plan.base.audit_head is not None:
            anchors = [audit.Anchor(plan.base.audit_head.seq, plan.base.audit_head.hash, "backup")]
        stored = etcd.iter_prefix(P_EVENTS, revision, page=audit.READ_PAGE)
        check = await audit.verify_stored((kv.value async for kv in stored), head, anchors)
        if not check.ok:
            raise ArchiveError(f"the replayed audit log does not verify: {check.reason}")
        digest = StateDigest()
        async for page in etcd.record_pages(ROOT, 0):
            digest.add_page(page)
    finally:
        await member.stop()
    marker = json.loads(staged.restore_marker.read_text())
    marker.update(target_revision=plan.revision, target_at=at, state_digest=digest.result()[1])
    write_private(staged.restore_marker, json.dumps(marker).encode())
    return {"at": at}
