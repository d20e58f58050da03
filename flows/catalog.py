"""The backup catalog: what is known about each cluster's backups, kept with the backups.

Everything that answers "is this cluster recoverable?" reads it: `jaco backup ls/describe`,
the table artifacts, find-backup for drills, the watchdog and the metrics. Prefect's run
states are for the operator's eyes, not for decisions; the catalog lives next to the objects
(small JSON objects under `{prefix}/catalog/{cluster}/`), so it survives the loss of
Prefect's database and of the worker.

    identity.json                  the cluster id, learned on the first backup and pinned
    backups/{stem}.json            one per backup: key, index, sizes, checksums, audit head,
                                   who took it, verified (when, by which run)
    drills/{stem}/{at}-{run}.json  one per drill of that backup (passed or not, RTO, why)
    failures/{at}-{kind}-{run}.json  one per failed run (backup, drill, prune, watchdog)
    segments/{stem}/{first}.json   one per change segment extending that backup (flows.stream)
    stream.json                    the change stream's heartbeat: stored through when

Each object is written whole in one PUT (atomic in S3; rename in a directory), and each has
a single writer (a backup's record is written by the run that took it, under the cluster's
lock; drills and failures are new objects; stream.json by the cluster's one stream), so no
locking is needed to read or write it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from flows.errors import PipelineError
from flows.records import (
    BackupRecord,
    ClusterView,
    DrillRecord,
    Failure,
    Identity,
    RunRef,
    SegmentRecord,
    StreamStatus,
    Verified,
    Window,
    newest_verified_in,
    now,
    stem_of,
)
from flows.storage import BackupStore, StoredObject

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger("jaco.catalog")
FAILURES_KEPT = 5000  # about a year of hourly trouble
FAILURES_SHOWN = 50
# Records already read in this process, by store location and listed prefix: key -> (the tag
# the listing showed, the record's bytes). The metrics read every cluster's catalog each scrape, the
# change stream its backups each minute: a record whose listing shows the same tag (S3: its
# ETag, size and time; a directory store gives none) is not fetched again; one the listing no
# longer shows is dropped with it. This relies on S3's read-after-write consistency (a GET
# returns the version listed or a newer one). At most READ_PREFIXES prefixes are kept, the
# least recently read dropped first: a view reads 6, so about 10,900 clusters' catalogs fit.
_SEEN: OrderedDict[tuple[str, str], dict[str, tuple[str, bytes]]] = OrderedDict()
_SEEN_LOCK = threading.Lock()
READ_PREFIXES = 65536


def _stamp(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")


class Catalog:
    """One cluster's catalog in one store. An instance is used by one thread at a time (its
    view() reads from one listing it holds meanwhile); make one per thread."""

    def __init__(self, store: BackupStore, prefix: str, cluster: str) -> None:
        self.store = store
        self.cluster = cluster
        self.prefix = prefix
        self.root = f"{prefix.strip('/')}/catalog/{cluster}/"
        self._listing: list[StoredObject] | None = None  # while view() reads: its one LIST

    def _list(self, prefix: str) -> list[StoredObject]:
        """The objects under `prefix` (in the catalog): while view() reads, out of its one
        listing of the whole catalog, not another request."""
        if self._listing is None:
            return list(self.store.list(self.root + prefix))
        return [o for o in self._listing if o.key.startswith(self.root + prefix)]

    def _under(self, folder: str, key: str) -> str:
        """The first name under `folder` (in the catalog) in `key`: a drill's or a segment's
        backup stem."""
        return key[len(self.root + folder) :].split("/", 1)[0]

    def _read_one(self, name: str, model: type[M]) -> M | None:
        """The record `name` (in the catalog); while view() reads, fetched only if listed and
        changed since this process read it."""
        if self._listing is None:
            return self._read(self.root + name, model)
        listed = [o for o in self._list(name) if o.key == self.root + name]
        return next((record for _, record in self._read_listed(name, listed, model)), None)

    def _read(self, key: str, model: type[M]) -> M | None:
        raw = self.store.get_bytes(key)
        return None if raw is None else self._parse(key, raw, model)

    def _parse(self, key: str, raw: bytes, model: type[M]) -> M:
        try:
            return model.model_validate_json(raw)
        except ValidationError:
            raise PipelineError(
                f"the catalog record {key} in {self.store.name} is damaged"
            ) from None

    def _write(self, key: str, record: BaseModel) -> None:
        self.store.put_bytes(key, record.model_dump_json(indent=2).encode() + b"\n")

    def _read_all(self, prefix: str, model: type[M], damaged: list[str] | None = None) -> list[M]:
        """Every record under `prefix`. Given `damaged`, one that cannot be parsed is named
        there instead of stopping the read."""
        listed = [o for o in self._list(prefix) if o.key.endswith(".json")]
        return [record for _, record in self._read_listed(prefix, listed, model, damaged)]

    def _read_listed(
        self,
        prefix: str,
        listed: list[StoredObject],
        model: type[M],
        damaged: list[str] | None = None,
    ) -> list[tuple[str, M]]:
        """The records of `listed` (the objects a listing of `prefix` showed, or some of them),
        each fetched only if this process has not read it with the tag listed. Each record
        returned is the caller's own (parsed from the bytes kept: a third of the memory of
        the parsed record, and quicker than a copy of it)."""
        scope = (self.store.location, self.root + prefix)
        with _SEEN_LOCK:
            seen = _SEEN.get(scope, {})
        kept: dict[str, tuple[str, bytes]] = {}
        found = []
        for obj in listed:
            tag, raw = seen.get(obj.key, ("", None))
            if tag != obj.tag or raw is None:  # never kept untagged: below
                raw = self.store.get_bytes(obj.key)
                if raw is None:  # deleted since it was listed
                    continue
            try:
                record = self._parse(obj.key, raw, model)
            except PipelineError:
                if damaged is None:
                    raise
                damaged.append(obj.key)
                continue
            if obj.tag:  # untagged (a directory store): read every time, kept for nothing
                kept[obj.key] = (obj.tag, raw)
            found.append((obj.key, record))
        with _SEEN_LOCK:
            _SEEN[scope] = kept
            _SEEN.move_to_end(scope)
            while len(_SEEN) > READ_PREFIXES:
                _SEEN.popitem(last=False)
        return found

    # -- identity ----------------------------------------------------------------------------

    def identity(self) -> Identity | None:
        return self._read_one("identity.json", Identity)

    def check_identity(self, cluster_id: str, source: str) -> None:
        """Refuse a cluster id other than the one pinned (naming both)."""
        pinned = self.identity()
        if pinned is not None and pinned.cluster_id != cluster_id:
            raise PipelineError(
                f"{source} answered as cluster {cluster_id}, but {self.cluster} is pinned to "
                f"cluster {pinned.cluster_id} (since {pinned.pinned_at:%Y-%m-%d %H:%M} UTC): "
                "refusing to mix two clusters' backups. If the cluster was really re-created, "
                f"remove {self.root}identity.json"
            )

    def pin(self, cluster_id: str, run: RunRef | None) -> Identity:
        self.check_identity(cluster_id, "the server")
        pinned = self.identity()
        if pinned is None:
            pinned = Identity(
                cluster=self.cluster, cluster_id=cluster_id, pinned_at=now(), pinned_by=run
            )
            self._write(self.root + "identity.json", pinned)
        return pinned

    # -- backups -----------------------------------------------------------------------------

    def record_key(self, key: str) -> str:
        """Where the record of the backup `key` is."""
        return f"{self.root}backups/{stem_of(key)}.json"

    def record_backup(self, record: BackupRecord) -> None:
        self._write(self.record_key(record.key), record)

    def backup(self, key: str) -> BackupRecord | None:
        record = self._read(self.record_key(key), BackupRecord)
        if record is not None:
            record.drills = self._read_all(f"drills/{stem_of(key)}/", DrillRecord)
        return record

    def backups(self) -> list[BackupRecord]:
        """Newest first, each with its drills."""
        records = self._read_all("backups/", BackupRecord)
        drills: dict[str, list[DrillRecord]] = {}
        for key, drill in self._read_listed("drills/", self._list("drills/"), DrillRecord):
            drills.setdefault(self._under("drills/", key), []).append(drill)
        for record in records:
            record.drills = sorted(drills.get(record.stem, []), key=lambda d: d.at)
        return sorted(records, key=_age, reverse=True)

    def records(self, damaged: list[str] | None = None) -> list[BackupRecord]:
        """The backup records alone, newest first (retention and the change stream need no
        drills, and a damaged drill record must not stop them). Given `damaged`, a record that
        cannot be parsed is named there instead of stopping the read."""
        return sorted(self._read_all("backups/", BackupRecord, damaged), key=_age, reverse=True)

    def newest_verified(self, stored: Callable[[str], bool] | None = None) -> BackupRecord | None:
        """The change stream's base. A record that cannot be parsed is passed over (and
        logged), not a reason to stop streaming."""
        damaged: list[str] = []
        records = self.records(damaged)
        for key in damaged:
            log.warning("the catalog record %s in %s is damaged: passed over", key, self.store.name)
        return newest_verified_in(records, stored)[0]

    def forget(self, keys: Iterable[str]) -> None:
        """Remove the records of backups that are gone (retention)."""
        for key in keys:
            stem = stem_of(key)
            for obj in list(self.store.list(f"{self.root}drills/{stem}/")):
                self.store.delete(obj.key)
            self.store.delete(self.record_key(key))

    # -- change segments --------------------------------------------------------------------

    def record_segment(self, record: SegmentRecord) -> None:
        name = f"{record.first_revision:016d}.json"
        self._write(f"{self.root}segments/{record.base}/{name}", record)

    def segments(self, base: str) -> list[SegmentRecord]:
        """The segments extending the backup `base`, in revision order."""
        found = self._read_all(f"segments/{base}/", SegmentRecord)
        return sorted(found, key=lambda r: r.first_revision)

    def forget_chain(self, base: str) -> None:
        """Remove the segment records of a backup that is gone (retention)."""
        for obj in list(self.store.list(f"{self.root}segments/{base}/")):
            self.store.delete(obj.key)

    def last_segment(self, base: str) -> SegmentRecord | None:
        """The newest segment of a chain, read alone (the keys sort by first revision)."""
        keys = sorted(o.key for o in self.store.list(f"{self.root}segments/{base}/"))
        return self._read(keys[-1], SegmentRecord) if keys else None

    def window(self, backups: list[BackupRecord]) -> Window | None:
        """From the oldest backup whose chain reaches the newest chain's start, to the end of
        the newest chain: any point between can be restored."""
        chains: dict[str, StoredObject] = {}  # each chain's newest segment (keys sort by revision)
        for obj in self._list("segments/"):
            base = self._under("segments/", obj.key)
            if obj.key.endswith(".json") and (base not in chains or obj.key > chains[base].key):
                chains[base] = obj
        wanted = [chains[b.stem] for b in backups if b.stem in chains]
        lasts = {
            self._under("segments/", key): segment
            for key, segment in self._read_listed("segments/", wanted, SegmentRecord)
        }
        window: Window | None = None
        for backup in sorted(backups, key=lambda b: b.snapshot_index):
            last = lasts.get(backup.stem)
            until = dt.datetime.fromisoformat(last.last_at) if last else backup.taken_at
            if window is not None and backup.taken_at <= window.until:
                since = window.since
            else:
                since = backup.taken_at
            if window is None or until >= window.until:
                window = Window(
                    since=since,
                    until=until,
                    base=backup.stem,
                    last_revision=last.last_revision if last else backup.snapshot_index,
                )
        return window

    def record_stream(self, status: StreamStatus) -> None:
        self._write(f"{self.root}stream.json", status)

    def stream_status(self) -> StreamStatus | None:
        return self._read_one("stream.json", StreamStatus)

    # -- drills and failures -----------------------------------------------------------------

    def record_drill(self, key: str, drill: DrillRecord) -> None:
        run = drill.run.id if drill.run else "local"
        self._write(f"{self.root}drills/{stem_of(key)}/{_stamp(drill.at)}-{run}.json", drill)

    def record_failure(self, failure: Failure) -> None:
        run = failure.run.id if failure.run else "local"
        name = f"{_stamp(failure.at)}-{failure.kind}-{run}.json"
        self._write(f"{self.root}failures/{name}", failure)
        old = self._failure_keys()[:-FAILURES_KEPT]
        for key in old:
            self.store.delete(key)

    def _failure_keys(self) -> list[str]:
        """Oldest first (the keys start with a UTC timestamp)."""
        return [o.key for o in self._failures_listed()]

    def _failures_listed(self) -> list[StoredObject]:
        return sorted(self._list("failures/"), key=lambda o: o.key)

    def failures(self, limit: int = FAILURES_SHOWN) -> list[Failure]:
        """The newest `limit` failures, newest first."""
        newest = self._failures_listed()[-limit:][::-1]
        return [failure for _, failure in self._read_listed("failures/", newest, Failure)]

    def failure_counts(self) -> dict[str, int]:
        """Failures kept, by kind (read from the keys alone: no object is fetched)."""
        counts: dict[str, int] = {}
        for key in self._failure_keys():
            parts = key.rsplit("/", 1)[-1].split("-")
            kind = parts[1] if len(parts) > 2 else "unknown"
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    def view(self) -> ClusterView:
        """The whole catalog, read from one listing of it (the metrics read every cluster's
        view on each scrape: one LIST, and a GET only of a record new or changed since)."""
        self._listing = list(self.store.list(self.root))
        try:
            backups = self.backups()
            return ClusterView(
                cluster=self.cluster,
                identity=self.identity(),
                backups=backups,
                failures=self.failures(),
                failure_counts=self.failure_counts(),
                window=self.window([b for b in backups if b.verified]),  # proven bases only
                stream=self.stream_status(),
            )
        finally:
            self._listing = None


def _age(record: BackupRecord) -> tuple[dt.datetime, int]:
    """Orders backups oldest to newest."""
    return record.taken_at, record.snapshot_index


def clusters_in(store: BackupStore, prefix: str) -> list[str]:
    """The cluster names that have a catalog in this store."""
    root = f"{prefix.strip('/')}/catalog/"
    names = {obj.key[len(root) :].split("/", 1)[0] for obj in store.list(root)}
    return sorted(n for n in names if n)


__all__ = [
    "BackupRecord",
    "Catalog",
    "ClusterView",
    "DrillRecord",
    "Failure",
    "Identity",
    "RunRef",
    "SegmentRecord",
    "StreamStatus",
    "Verified",
    "Window",
    "clusters_in",
    "newest_verified_in",
    "now",
    "stem_of",
]
