"""The client side of the Backup RPC: what `jaco backup` makes of the messages it receives.

Servers of this version send the snapshot's size, its bytes, then meta.json (format 2);
servers of the previous version send meta.json first (format 1, during a rolling upgrade).
Both must give a verified archive; every malformed stream must give a clear error and no
file. The messages are real protobuf messages fed to the real archive writer; the gRPC
transport around them is exercised by tests/test_backup.py against real servers.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tarfile
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import jaco.files
from jaco.archive.format import read_archive
from jaco.archive.meta import BackupMeta
from jaco.client.backup import write_backup_stream
from jaco.errors import JacoError
from jaco.v1 import jaco_pb2 as pb
from tests.archives import bolt_head, etcd_trailed
from tests.mounts import failing_disk
from tests.pages import waiting_bytes

MIB = 1024 * 1024
# Looks like etcd's to a reader: a bbolt head, whole blocks, etcd's SHA-256 at the end.
SNAPSHOT = etcd_trailed(bolt_head() + os.urandom(3 * 1024 * 1024 + 512))


def _meta(snapshot: bytes = SNAPSHOT, **over: Any) -> dict[str, Any]:
    meta = {
        "cluster_id": "c0ffee",
        "snapshot_index": 42,
        "snapshot_term": 3,
        "jaco_version": "1.0.0",
        "taken_at": "2026-11-26T00:00:00+00:00",
        "leader_at_snapshot": "node-1",
        "format": 2,
        "snapshot_sha256": hashlib.sha256(snapshot).hexdigest(),
        "snapshot_size": len(snapshot),
        "counts": {"deployments": 1},
        "state_digest": "ab" * 32,
    }
    meta.update(over)
    return meta


def _data(snapshot: bytes = SNAPSHOT) -> Iterator[pb.BackupChunk]:
    for at in range(0, len(snapshot), 1024 * 1024):
        yield pb.BackupChunk(data=snapshot[at : at + 1024 * 1024])


def _format2(
    meta: dict[str, Any], size: int = len(SNAPSHOT), snapshot: bytes = SNAPSHOT
) -> list[pb.BackupChunk]:
    return [
        pb.BackupChunk(snapshot_size=size),
        *_data(snapshot),
        pb.BackupChunk(meta_json=json.dumps(meta)),
    ]


def _sent(snapshot: bytes) -> list[pb.BackupChunk]:
    """`snapshot` streamed as it is, with a meta.json that matches it."""
    return _format2(_meta(snapshot), len(snapshot), snapshot)


def _members(archive: Path) -> list[str]:
    with tarfile.open(archive, "r:gz") as tar:
        return tar.getnames()


def test_format_2_stream_gives_a_verified_archive(tmp_path: Path) -> None:
    out = tmp_path / "b.tar.gz"
    sizes: list[int] = []
    result = write_backup_stream(iter(_format2(_meta())), out, sizes.append, lambda n: None)
    assert sizes == [len(SNAPSHOT)]
    assert result.meta.snapshot_index == 42
    assert read_archive(out).meta == result.meta
    assert _members(out) == ["snapshot.bin", "meta.json"]
    assert out.stat().st_mode & 0o777 == 0o600
    # The snapshot's random bytes are stored, not Huffman-coded: the archive is written by
    # jaco.archive.deflate (isal's own writer codes them, BTYPE 10, and they read back slowly).
    assert out.read_bytes()[10] & 0b110 == 0


def _synced_before_meta(
    monkeypatch: pytest.MonkeyPatch, error: OSError | None = None
) -> tuple[Iterator[pb.BackupChunk], list[str]]:
    """A format 2 stream whose meta.json comes only once the archive has been fsynced (as
    jacod's meta pass takes a second after the last byte); the first fsync fails with `error`
    and the next ones pass, as Linux reports a failed writeback once."""
    events: list[str] = []
    synced = threading.Event()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        events.append("fsync")
        synced.set()
        if error is not None and events.count("fsync") == 1:
            raise error
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)

    def stream() -> Iterator[pb.BackupChunk]:
        *data, meta = _format2(_meta())
        yield from data
        events.append("synced before meta.json" if synced.wait(10) else "meta.json first")
        yield meta

    return stream(), events


def test_the_archive_goes_to_disk_while_the_server_reads_the_meta(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "b.tar.gz"
    stream, events = _synced_before_meta(monkeypatch)
    result = write_backup_stream(stream, out, lambda s: None, lambda n: None)
    assert events[:2] == ["fsync", "synced before meta.json"]
    assert events.count("fsync") >= 2  # and the durable write's own, after meta.json
    assert read_archive(out).meta == result.meta


def test_a_failed_early_fsync_is_raised_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux reports a failed writeback to one fsync: the early one's error must not vanish
    behind a durable write that then passes."""
    out = tmp_path / "b.tar.gz"
    stream, events = _synced_before_meta(monkeypatch, OSError(errno.EIO, os.strerror(errno.EIO)))
    with pytest.raises(JacoError) as raised:
        write_backup_stream(stream, out, lambda s: None, lambda n: None)
    assert str(raised.value) == f"writing {out} failed: [Errno 5] Input/output error"
    assert events == ["fsync", "synced before meta.json"]
    assert list(tmp_path.iterdir()) == []


def test_format_1_server_still_works(tmp_path: Path) -> None:
    """A jacod of the previous version sends meta.json first."""
    out = tmp_path / "b.tar.gz"
    meta = _meta(format=1)
    stream = [pb.BackupChunk(meta_json=json.dumps(meta)), *_data()]
    result = write_backup_stream(iter(stream), out, lambda s: None, lambda n: None)
    assert read_archive(out).meta == result.meta == BackupMeta.parse(json.dumps(meta))


@pytest.mark.parametrize(
    ("label", "stream", "message"),
    [
        ("nothing at all", [], "did not start the backup with the snapshot's size"),
        (
            "data before the size",
            [*_data(), pb.BackupChunk(meta_json=json.dumps(_meta()))],
            "did not start the backup with the snapshot's size",
        ),
        ("no meta.json at the end", _format2(_meta())[:-1], "ended the backup without its"),
        (
            "data after meta.json",
            [*_format2(_meta()), pb.BackupChunk(data=b"more")],
            "sent data after the backup's meta.json",
        ),
        (
            "meta.json naming another SHA-256",
            _format2(_meta(snapshot_sha256="0" * 64)),
            "does not match its SHA-256",
        ),
        (
            "meta.json naming another size",
            _format2(_meta(snapshot_size=len(SNAPSHOT) - 1)),
            "its meta.json says",
        ),
        (
            "fewer bytes than announced",
            _format2(_meta(), size=len(SNAPSHOT) + 1),
            f"ended the snapshot after {len(SNAPSHOT)} of the {len(SNAPSHOT) + 1} bytes",
        ),
        ("more bytes than announced", _format2(_meta(), size=len(SNAPSHOT) - 1), "more than"),
        (
            "etcd's SHA-256 at the end not matching what etcd sent",
            _sent(SNAPSHOT[:-32] + bytes(32)),
            "the snapshot the server sent does not match the SHA-256 etcd appended to it",
        ),
        (
            "no SHA-256 of etcd's at the end",
            _sent(SNAPSHOT[:-32]),
            "the snapshot the server sent does not end with the SHA-256 etcd appends",
        ),
        (
            "meta.json not JSON",
            [*_format2(_meta())[:-1], pb.BackupChunk(meta_json="{nope")],
            "meta.json is not valid: it is not a JSON object",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_malformed_streams_leave_no_file(
    tmp_path: Path, label: str, stream: list[pb.BackupChunk], message: str
) -> None:
    out = tmp_path / "b.tar.gz"
    with pytest.raises(JacoError, match=message):
        write_backup_stream(iter(stream), out, lambda s: None, lambda n: None)
    assert list(tmp_path.iterdir()) == [], f"{label}: something was left behind"


def test_the_archive_goes_to_disk_as_it_is_written_not_all_at_its_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The archive's pages are written back a window at a time (jaco.files.WriteBehind), not
    left in memory for the kernel to write back beside etcd's log fsyncs (2 GiB: 1.8 GiB of
    them). Counted by the kernel (cachestat) while the last MiBs of the snapshot still stream."""
    monkeypatch.setattr(jaco.files, "WRITE_BEHIND", 1024 * 1024)
    snapshot = etcd_trailed(bolt_head() + os.urandom(24 * 1024 * 1024 + 512))
    waiting: list[int] = []
    written: list[int] = []
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:  # a disk's filesystem, as on CI
        out = Path(tmp) / "b.tar.gz"

        def stream() -> Iterator[pb.BackupChunk]:
            for at, chunk in enumerate(_sent(snapshot)):
                if at == 22:  # 21 MiB handed over: most of it written by the gzip thread
                    (partial,) = Path(tmp).glob(".b.tar.gz.partial-*")
                    with open(partial, "rb") as f:
                        waiting.append(waiting_bytes(f.fileno()))
                        written.append(os.fstat(f.fileno()).st_size)
                yield chunk

        result = write_backup_stream(stream(), out, lambda s: None, lambda n: None)
        assert read_archive(out).meta == result.meta
    assert written[0] >= 12 * 1024 * 1024, written  # it looks while the archive grows
    # the window being written, the one started, and what the gzip thread holds
    assert waiting[0] <= 6 * 1024 * 1024, waiting


def test_a_backup_onto_a_failing_disk_fails_in_one_line_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`jaco backup`'s writer onto a failing disk (tests.mounts.failing_disk): the
    write-behind's wait takes the error on the gzip thread, and the one line names the file and
    the error; no archive (nor its temp name) is left."""
    snapshot = etcd_trailed(bolt_head() + os.urandom(40 * MIB + 512))
    monkeypatch.setattr(jaco.files, "WRITE_BEHIND", 2 * MIB)  # waited for before the end
    with failing_disk(tmp_path) as disk:
        out = disk / "b.tar.gz"
        with pytest.raises(JacoError) as failed:
            write_backup_stream(iter(_sent(snapshot)), out, lambda s: None, lambda n: None)
        left = sorted(p.name for p in disk.iterdir() if p.name != "lost+found")
    # the loop device reports its backing store full (ENOSPC); a dying disk would say EIO
    assert str(failed.value) in (
        f"the disk holding {disk} is full; nothing was written to b.tar.gz",
        f"writing {out} failed: [Errno 5] Input/output error",
    ), failed.value
    assert failed.value.exit_code == 1
    assert left == []
