"""The change stream's loop when etcd has compacted past its base and every full backup run
fails: it waits between runs (each wait twice the last), and does not take the base it just
lost for a new one. Without that guard it alternated between following the old base and a
failed run with no wait at all: a backup run and an alert each time, as fast as they fail.

`Stream.run` as it is, on a real local catalog; what etcd and the backup flow answer (compacted,
failed, a newer backup) is scripted by overriding the two methods that ask them.

And when the newer backup a stream moves to (Rebase) is gone by the time it looks, it takes a
full backup rather than end: the process used to exit 0, silently, and start over."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from flows.catalog import BackupRecord, Catalog
from flows.params import BackupParams, StreamSettings
from flows.storage import open_store
from flows.stream import Rebase, Stream
from jaco.public import Compacted, JacoError
from tests.unit.test_stream_base import _params, _record


class Compacting(Stream):
    def __init__(self, params: BackupParams, settings: StreamSettings) -> None:
        super().__init__(params, settings, threading.Event())
        self.follows: list[int] = []
        self.runs: list[float] = []
        self.whys: list[str] = []

    def _follow(self, backup: BackupRecord) -> None:
        self.follows.append(backup.snapshot_index)
        self.seen_revision = backup.snapshot_index  # as _follow does first
        raise Compacted("etcd compacted past revision 2")

    def full_backup(self, why: str) -> BackupRecord:
        self.whys.append(why)
        self.runs.append(time.monotonic())
        if len(self.runs) == 4:
            self.stop.set()
        raise JacoError("the full backup of c1 failed: refused")


def _stored(stream: Stream, root: Path, index: int) -> BackupRecord:
    """A verified backup `index` recorded in a local catalog at `root`, its object stored; the
    stream reads that catalog."""
    catalog = Catalog(open_store(f"file://{root}"), "jaco", "c1")
    stream.catalogs = [catalog]
    record = _record(index, True)
    catalog.record_backup(record)
    (root / record.key).parent.mkdir(parents=True)
    (root / record.key).write_bytes(b"x")
    return record


def test_compaction_and_failing_runs_wait_rather_than_follow_the_lost_base(tmp_path: Path) -> None:
    stream = Compacting(_params(tmp_path), StreamSettings(full_backup_retry_seconds=0.05))
    _stored(stream, tmp_path, 2)
    stream.run()
    assert stream.follows == [2]  # the lost base followed once, not after every failed run
    assert len(stream.runs) == 4
    gaps = [b - a for a, b in zip(stream.runs, stream.runs[1:], strict=False)]
    assert all(gap >= wait for gap, wait in zip(gaps, (0.05, 0.1, 0.2), strict=True)), gaps


class Rebasing(Compacting):
    def _follow(self, backup: BackupRecord) -> None:
        self.follows.append(backup.snapshot_index)
        (Path(self.params.local_dir) / backup.key).unlink()  # gone before the stream looks
        raise Rebase


def test_a_newer_base_gone_when_the_stream_looks_takes_a_full_backup(tmp_path: Path) -> None:
    stream = Rebasing(_params(tmp_path), StreamSettings(full_backup_retry_seconds=0.01))
    _stored(stream, tmp_path, 3)
    stream.run()
    assert stream.follows == [3]
    assert stream.whys[:1] == ["the newer full backup is gone"], stream.whys
