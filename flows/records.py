"""The catalog's records (flows.catalog reads and writes them): one cluster's identity, its
backups and their drills, change segments, the stream's heartbeat, failed runs, and the view
of all of it that `jaco backup ls`, the watchdog and the metrics report."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from jaco.public import AuditHead


class RunRef(BaseModel):
    """A Prefect flow run: its id, its name and where to see it."""

    id: str
    name: str = ""
    url: str = ""


class Identity(BaseModel):
    cluster: str
    cluster_id: str
    pinned_at: dt.datetime
    pinned_by: RunRef | None = None


class Verified(BaseModel):
    at: dt.datetime
    run: RunRef | None = None


class DrillRecord(BaseModel):
    at: dt.datetime
    passed: bool
    run: RunRef | None = None
    rto_seconds: float | None = None
    failed_checks: list[str] = Field(default_factory=list)
    reason: str = ""
    driver: str = ""
    image: str = ""
    point_revision: int | None = None  # the point in time it restored to as well, if any


class BackupRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")

    cluster: str
    cluster_id: str
    key: str
    taken_at: dt.datetime
    snapshot_index: int
    snapshot_term: int
    jaco_version: str
    archive_size: int
    size: int
    plaintext_sha256: str
    ciphertext_sha256: str
    snapshot_sha256: str
    state_digest: str
    counts: dict[str, int]
    audit_head: AuditHead | None = None
    taken_by: RunRef | None = None
    verified: Verified | None = None
    lock_until: dt.datetime | None = None
    drills: list[DrillRecord] = Field(default_factory=list, exclude=True)  # read, not stored

    @property
    def stem(self) -> str:
        return stem_of(self.key)

    @property
    def last_drill(self) -> DrillRecord | None:
        return max(self.drills, key=lambda d: d.at, default=None)


class SegmentRecord(BaseModel):
    """A change segment, recorded once its object is stored whole (flows.stream)."""

    key: str
    base: str  # the stem of the full backup it extends
    base_revision: int
    first_revision: int
    last_revision: int
    first_at: str
    last_at: str
    revisions: int
    changes: int
    size: int
    ciphertext_sha256: str
    audit_head: AuditHead | None = None
    written_at: dt.datetime


class Window(BaseModel):
    """Restorable to any point between these: a full backup and its segments after it."""

    since: dt.datetime
    until: dt.datetime
    base: str
    last_revision: int


class StreamStatus(BaseModel):
    """The change stream's heartbeat (flows.stream), rewritten every few seconds while it runs:
    every change it received before `durable_at` is stored. On an idle cluster the window's
    end stands still while `durable_at` moves on; a dead stream, or one whose stores fail,
    stops moving it."""

    at: dt.datetime  # when this was written (the stream host's clock)
    durable_at: dt.datetime
    base: str  # the full backup its chain extends
    stored_revision: int  # the end of the newest stored segment
    seen_revision: int  # the newest revision the cluster reported (changes or progress)
    open_revisions: int  # received, not sealed yet (the segment being filled)
    queued: int  # sealed segments not yet stored (a store is failing)
    host: str
    pid: int


class Failure(BaseModel):
    at: dt.datetime
    kind: Literal["backup", "drill", "prune", "watchdog"]
    reason: str
    run: RunRef | None = None
    key: str | None = None


class ClusterView(BaseModel):
    """One cluster's catalog, read whole: what the watchdog, the metrics and `ls` report."""

    cluster: str
    identity: Identity | None
    backups: list[BackupRecord]  # newest first
    failures: list[Failure]  # the newest FAILURES_SHOWN, newest first
    failure_counts: dict[str, int]  # by kind, all kept
    window: Window | None = None  # point-in-time restore, from the newest chain of segments
    stream: StreamStatus | None = None  # the change stream's last heartbeat, if one ever ran

    @property
    def newest(self) -> BackupRecord | None:
        return self.backups[0] if self.backups else None

    def last_passing_drill(self) -> tuple[BackupRecord, DrillRecord] | None:
        drills = [(b, d) for b in self.backups for d in b.drills if d.passed]
        return max(drills, key=lambda pair: pair[1].at, default=None)

    def last_drill(self) -> tuple[BackupRecord, DrillRecord] | None:
        drills = [(b, d) for b in self.backups for d in b.drills]
        return max(drills, key=lambda pair: pair[1].at, default=None)


def backups_root(prefix: str, cluster_id: str) -> str:
    """Where a cluster's backups are: `PREFIX/CLUSTER_ID/`, then `YYYY/MM/DD/` and the name."""
    return f"{prefix.strip('/')}/{cluster_id}/"


def stem_of(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    return name.removesuffix(".age").removesuffix(".tar.gz")


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def newest_verified_in(
    backups: Iterable[BackupRecord], stored: Callable[[str], bool] | None = None
) -> tuple[BackupRecord | None, list[BackupRecord]]:
    """The first verified backup of `backups` (newest first) whose key `stored` accepts (asked
    in turn: is its object still there?), and the verified ones before it that it did not."""
    gone: list[BackupRecord] = []
    for record in (b for b in backups if b.verified):
        if stored is None or stored(record.key):
            return record, gone
        gone.append(record)
    return None, gone
