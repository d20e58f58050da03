"""Continuous backup: the cluster's change stream written to the stores as encrypted segments.

`jaco pipeline stream --cluster NAME` runs this as a long-lived process (systemd restarts it;
docs/pipeline.md says why it is not a Prefect flow run). It follows the Changes RPC from the
revision of the newest full backup in the catalog (or from the end of that backup's last
recorded segment) and cuts a segment every `segment_seconds` or `segment_bytes`, whichever
comes first, as long as it holds a change. Each segment is age-encrypted in memory, stored
whole in S3 and in the local copy (one PUT; a rename), and only then recorded in both
catalogs: a process killed at any moment resumes just after the last recorded segment, and a
segment it had stored but not recorded is written again under the same name (segments are
named by their first revision), so the chain has no gap and no overlap.

A server that goes away (a killed leader) is left for the next one of `servers`, from the
revision after the last one received. A store that fails keeps the sealed segments queued,
in order, in memory, retried with backoff while the stream goes on: nothing is dropped; past
`max_queued_bytes` it stops reading and reads again, from where it stopped, once they are
stored (etcd holds the history meanwhile). Every few seconds it records how far it has stored
(stream.json, the watchdog's max_stream_lag). If etcd has compacted past the stream's
position, the changes in between are gone: the stream takes a new full backup (the
backup-cluster flow), says so, and starts a chain from it. A newer full backup (the hourly
ones) starts a new chain as well, so a restore never replays more than a backup period.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flows.catalog import BackupRecord, Catalog, SegmentRecord, StreamStatus, stem_of
from flows.params import BackupParams, StreamSettings
from flows.storage import BackupStore, open_store
from flows.stream_reader import Reading
from jaco.public import (
    Compacted,
    JacoError,
    Progress,
    RevisionRecord,
    SegmentBuilder,
    SegmentMeta,
    encrypt_segment,
    parse_recipient,
    segment_name,
    write_private,
)

log = logging.getLogger("jaco.stream")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def segments_root(prefix: str, cluster: str) -> str:
    """Where every chain of segments of a cluster is, one folder per full backup."""
    return f"{prefix.strip('/')}/segments/{cluster}/"


def segments_prefix(prefix: str, cluster: str, base: str) -> str:
    return f"{segments_root(prefix, cluster)}{base}/"


@dataclass
class Sealed:
    meta: SegmentMeta
    ciphertext: bytes
    sealed_at: float  # time.monotonic(), for the RPO figure
    opened_at: dt.datetime  # when its first change arrived: stored through just before it


class Rebase(Exception):
    """A newer full backup is in the catalog: start a chain from it."""


class Stream:
    """One cluster's change stream; `run` returns only when `stop` is set."""

    def __init__(
        self,
        params: BackupParams,
        settings: StreamSettings | None = None,
        stop: threading.Event | None = None,
        on_stored: Callable[[Sealed], None] | None = None,
    ) -> None:
        self.params = params
        self.settings = settings or StreamSettings()
        self.stop = stop or threading.Event()
        self.on_stored = on_stored
        self.stores: list[BackupStore] = [
            open_store(params.s3_url, params.s3),
            open_store(params.local_url),
        ]
        self.catalogs = [Catalog(s, params.prefix, params.cluster) for s in self.stores]
        self.recipients = [parse_recipient(r) for r in params.recipients]
        self.pending: deque[Sealed] = deque()
        self.retry_at = 0.0
        self.failures = 0
        self.opened_at = _now()  # when the open segment's first change arrived
        self.stored_revision = 0
        self.seen_revision = 0
        self.next_heartbeat = 0.0

    # -- the chain -----------------------------------------------------------------------

    def newest_backup(self) -> BackupRecord | None:
        """The chain's base: the newest backup verify proved whose object is still stored (one
        verify could not finish checking is kept, unverified, and is no base for a
        point-in-time restore; nor is a record whose object was deleted)."""
        return self.catalogs[0].newest_verified(self.catalogs[0].store.exists)

    def full_backup(self, why: str) -> BackupRecord:
        from flows.backup_flow import backup_cluster

        log.warning("%s: taking a new full backup of %s", why, self.params.cluster)
        state = backup_cluster(self.params, return_state=True)
        if not state.is_completed():
            raise JacoError(f"the full backup of {self.params.cluster} failed: {state.message}")
        backup = self.newest_backup()
        if backup is None:  # deleted between the run and now
            raise JacoError(f"the full backup of {self.params.cluster} is not in the catalog")
        log.warning("new full backup %s at revision %s", backup.key, backup.snapshot_index)
        return backup

    def _full_backup_until_stopped(self, why: str, newer_than: int = -1) -> BackupRecord | None:
        """`full_backup`, tried again after a failure, each wait twice the last (up to
        `full_backup_retry_max_seconds`): a cause that lasts (a refused token, a wrong verify
        identity, Prefect's API out of reach) costs one failed run and one alert per wait, not
        one per systemd restart. A run that failed after storing a verified backup (its prune
        or its drill failed) is a base all the same: the newest one still stored, if its
        revision is past `newer_than`. None once stopped."""
        wait = self.settings.full_backup_retry_seconds
        while not self.stop.is_set():
            try:
                return self.full_backup(why)
            except Exception as exc:  # noqa: BLE001 - any cause: logged, retried
                ours = isinstance(exc, JacoError)
                text = str(exc) if ours else f"{type(exc).__name__}: {exc}"
                first = (text.splitlines() or [type(exc).__name__])[0]
                newest = self._newest_quietly()
                if newest is not None and newest.snapshot_index > newer_than:
                    log.warning("%s; a verified backup %s is stored: streaming from it", first,
                                newest.key)  # fmt: skip
                    return newest
                # not ours (Prefect's client, a bug): its traceback too
                log.error("%s; the next attempt in %.0fs", first, wait, exc_info=not ours)
                self.stop.wait(wait)
                wait = min(wait * 2, self.settings.full_backup_retry_max_seconds)
        return None

    def run(self) -> None:
        backup = self._retry_until_stopped(self.newest_backup)
        if backup is None and not self.stop.is_set():
            backup = self._full_backup_until_stopped("no full backup in the catalog yet")
        while backup is not None and not self.stop.is_set():
            try:
                self._follow(backup)
                return
            except Rebase:
                newer = self._retry_until_stopped(self.newest_backup)
                if newer is None and not self.stop.is_set():  # the newer one is gone again
                    newer = self._full_backup_until_stopped("the newer full backup is gone")
                backup = newer
            except Compacted as exc:
                self._drain()
                why = f"etcd compacted past the stream's position ({exc})"
                backup = self._full_backup_until_stopped(why, self.seen_revision)

    def _retry_until_stopped(self, fn: Callable[[], BackupRecord | None]) -> BackupRecord | None:
        while not self.stop.is_set():
            try:
                return fn()
            except JacoError as exc:
                log.warning("the catalog cannot be read (%s); retrying", exc.message)
                self.stop.wait(self._backoff())
        return None

    def _follow(self, backup: BackupRecord) -> None:
        base = backup.stem
        last = self.catalogs[0].last_segment(base)
        after = last.last_revision if last else backup.snapshot_index
        head = last.audit_head if last else backup.audit_head
        builder = SegmentBuilder(backup.cluster_id, base, backup.snapshot_index, after, head)
        self.stored_revision = self.seen_revision = after
        self.next_heartbeat = 0.0
        log.info("streaming %s from revision %d (extends %s)", self.params.cluster, after + 1, base)
        token = self.params.secrets.read_token()
        reading: Reading | None = Reading(self.params.servers, token, after + 1)
        opened = time.monotonic()
        next_rebase = opened + self.settings.rebase_seconds
        try:
            while not self.stop.is_set():
                item: RevisionRecord | Progress | BaseException | None = None
                if self._queued_bytes() >= self.settings.max_queued_bytes:
                    if reading is not None:  # etcd keeps the history: read it once stored
                        reading.close()
                        reading = None
                        log.warning(
                            "%d segments (%.1f MiB) wait for a store: reading paused at "
                            "revision %d until they are stored",
                            len(self.pending),
                            self._queued_bytes() / 2**20,
                            self.seen_revision,
                        )
                    self.stop.wait(0.2)
                else:
                    if reading is None:
                        log.info("reading again from revision %d", self.seen_revision + 1)
                        reading = Reading(self.params.servers, token, self.seen_revision + 1)
                    item = reading.get(0.2)
                if isinstance(item, BaseException):
                    if builder.records:  # what was received before the stream broke is good
                        self._seal(builder)
                    raise item
                if isinstance(item, RevisionRecord):
                    if not builder.records:
                        opened, self.opened_at = time.monotonic(), _now()
                    builder.add(item)
                    self.seen_revision = item.revision
                elif isinstance(item, Progress):
                    builder.progress(item.revision, item.at)
                    self.seen_revision = max(self.seen_revision, item.revision)
                age = time.monotonic() - opened
                full = builder.size >= self.settings.segment_bytes
                if builder.records and (full or age >= self.settings.segment_seconds):
                    self._seal(builder)
                self._upload()
                self._heartbeat(base, len(builder.records))
                if time.monotonic() >= next_rebase and not builder.records and not self.pending:
                    next_rebase = time.monotonic() + self.settings.rebase_seconds
                    newest = self._newest_quietly()
                    if newest is not None and newest.snapshot_index > backup.snapshot_index:
                        log.info("a newer full backup %s: a new chain from it", newest.key)
                        raise Rebase
            if builder.records:
                self._seal(builder)
            self.retry_at = 0.0
            self._upload()  # one last attempt: what is not stored now is sent again next run
            self.next_heartbeat = 0.0
            self._heartbeat(base, 0)
        finally:
            if reading is not None:
                reading.close()

    def _queued_bytes(self) -> int:
        return sum(len(s.ciphertext) for s in self.pending)

    def _heartbeat(self, base: str, open_revisions: int) -> None:
        """stream.json in each catalog, every `heartbeat_seconds`: every change received
        before `durable_at` is stored. What the watchdog's max_stream_lag and the metrics read;
        a store that fails cannot take it either, so its age grows as the real lag does."""
        if time.monotonic() < self.next_heartbeat:
            return
        self.next_heartbeat = time.monotonic() + self.settings.heartbeat_seconds
        if self.pending:
            durable = self.pending[0].opened_at
        elif open_revisions:
            durable = self.opened_at
        else:
            durable = _now()
        status = StreamStatus(
            at=_now(),
            durable_at=durable,
            base=base,
            stored_revision=self.stored_revision,
            seen_revision=self.seen_revision,
            open_revisions=open_revisions,
            queued=len(self.pending),
            host=socket.gethostname(),
            pid=os.getpid(),
        )
        for catalog in self.catalogs:
            try:
                catalog.record_stream(status)
            except JacoError as exc:
                log.warning("heartbeat not written to %s (%s)", catalog.store.name, exc.message)

    def _newest_quietly(self) -> BackupRecord | None:
        try:
            return self.newest_backup()
        except JacoError:
            return None

    # -- storing ---------------------------------------------------------------------------

    def _seal(self, builder: SegmentBuilder) -> None:
        meta, plaintext = builder.cut()
        self.pending.append(
            Sealed(
                meta, encrypt_segment(plaintext, self.recipients), time.monotonic(), self.opened_at
            )
        )

    def _backoff(self) -> float:
        self.failures += 1
        return min(0.5 * 2 ** min(self.failures, 10), self.settings.retry_max_seconds)

    def _upload(self) -> None:
        """Store and record the sealed segments, oldest first; stop at the first failure and
        try again after a backoff (the segments stay queued, in order)."""
        while self.pending and time.monotonic() >= self.retry_at:
            sealed = self.pending[0]
            try:
                self._store(sealed)
            except JacoError as exc:
                wait = self._backoff()
                self.retry_at = time.monotonic() + wait
                log.warning(
                    "segment %d-%d not stored (%s); %d queued, retrying in %.0fs",
                    sealed.meta.first_revision,
                    sealed.meta.last_revision,
                    exc.message,
                    len(self.pending),
                    wait,
                )
                return
            self.failures = 0
            self.pending.popleft()
            self.stored_revision = sealed.meta.last_revision
            if self.on_stored is not None:
                self.on_stored(sealed)

    def _drain(self) -> None:
        while self.pending and not self.stop.is_set():
            self._upload()
            if self.pending:
                self.stop.wait(max(self.retry_at - time.monotonic(), 0.1))

    def _store(self, sealed: Sealed) -> None:
        meta = sealed.meta
        key = segments_prefix(self.params.prefix, self.params.cluster, meta.base)
        key += segment_name(meta.first_revision)
        sha = hashlib.sha256(sealed.ciphertext).hexdigest()
        metadata = {
            "cluster": self.params.cluster,
            "cluster-id": meta.cluster_id,
            "base": meta.base,
            "first-revision": str(meta.first_revision),
            "last-revision": str(meta.last_revision),
            "ciphertext-sha256": sha,
        }
        if meta.audit_head is not None:
            metadata["audit-head-seq"] = str(meta.audit_head.seq)
            metadata["audit-head-hash"] = meta.audit_head.hash
        work = Path(self.params.local_dir) / ".stream"
        work.mkdir(parents=True, exist_ok=True)
        path = work / f"{meta.first_revision}.seg.age"
        write_private(path, sealed.ciphertext)  # ciphertext: plaintext never touches the disk
        try:  # the local copy first: while S3 is down, the newest segments are on disk too
            for store in reversed(self.stores):
                store.put(key, path, metadata)
        finally:
            path.unlink(missing_ok=True)
        record = SegmentRecord(
            key=key,
            base=meta.base,
            base_revision=meta.base_revision,
            first_revision=meta.first_revision,
            last_revision=meta.last_revision,
            first_at=meta.first_at,
            last_at=meta.last_at,
            revisions=meta.revisions,
            changes=meta.changes,
            size=len(sealed.ciphertext),
            ciphertext_sha256=sha,
            audit_head=meta.audit_head,
            written_at=dt.datetime.now(dt.UTC),
        )
        for catalog in self.catalogs:
            catalog.record_segment(record)
        log.info(
            "segment %d-%d stored (%d revisions, %d bytes)",
            meta.first_revision,
            meta.last_revision,
            meta.revisions,
            len(sealed.ciphertext),
        )


__all__ = ["Sealed", "Stream", "StreamSettings", "segments_prefix", "stem_of"]
