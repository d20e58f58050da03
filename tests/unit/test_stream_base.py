"""The change stream chains its segments onto the newest *verified* full backup still
stored, and the restorable window `jaco backup ls` shows spans verified backups only: a newer
one that verify could not finish checking (kept, unverified) is no base for a point-in-time
restore, nor is one whose object was deleted."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyrage

from flows.catalog import BackupRecord, Catalog
from flows.params import BackupParams
from flows.storage import open_store
from flows.stream import Stream
from tests.pipeline import backup_record


def _record(index: int, verified: bool) -> BackupRecord:
    day = dt.date(2026, 12, 1) + dt.timedelta(days=index)
    key = f"jaco/c1/{day:%Y/%m/%d}/cluster-{day.isoformat()}-{index}.tar.gz.age"
    return backup_record(key, day, index, verified)


def _params(local: Path) -> BackupParams:
    """Cluster c1's, its local copy in `local`; no server or bucket is reached."""
    return BackupParams(
        cluster="c1",
        servers=["127.0.0.1:1"],
        bucket="unused",
        recipients=[str(pyrage.x25519.Identity.generate().to_public())],
        local_dir=str(local),
    )


def test_the_stream_bases_its_chain_on_the_newest_verified_backup(tmp_path: Path) -> None:
    stream = Stream(_params(tmp_path))
    catalog = Catalog(open_store(f"file://{tmp_path}"), "jaco", "c1")
    stream.catalogs = [catalog]  # the local store's catalog: the same code as S3's
    assert stream.newest_backup() is None
    for index, verified in ((1, True), (2, True), (3, False)):
        catalog.record_backup(_record(index, verified))
        (tmp_path / _record(index, verified).key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / _record(index, verified).key).write_bytes(b"x")  # the object, stored
    base = stream.newest_backup()
    assert base is not None and base.snapshot_index == 2
    # Its object deleted by hand (the record left): no base; the older verified one is.
    (tmp_path / base.key).unlink()
    base = stream.newest_backup()
    assert base is not None and base.snapshot_index == 1
    # A record that cannot be parsed (cut short) is passed over, not the end of the stream.
    (tmp_path / "jaco/catalog/c1/backups/cluster-2026-12-05-4.json").write_bytes(b'{"key": ')
    base = stream.newest_backup()
    assert base is not None and base.snapshot_index == 1


def test_the_restorable_window_ends_at_the_newest_verified_backup(tmp_path: Path) -> None:
    catalog = Catalog(open_store(f"file://{tmp_path}"), "jaco", "c1")
    for index, verified in ((1, True), (2, True), (3, False)):
        catalog.record_backup(_record(index, verified))
    window = catalog.view().window
    assert window is not None
    assert window.until == _record(2, True).taken_at and window.base == _record(2, True).stem
