"""Taking a snapshot on a node: etcd's snapshot stream, passed on as it arrives, then its meta.

The snapshot is etcd's own Maintenance.Snapshot stream, byte for byte, so `etcdctl snapshot
restore` can read it. The bytes go to the caller as etcd sends them (and to a private scratch
file); once the stream is complete, the meta is read out of that file itself (jaco.bolt):
its store revision (`snapshot_index`), the per-table counts and the state digest are those
of exactly the bytes sent, with no second read of the live store and no extra load on it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import os
from collections.abc import AsyncGenerator, AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaco import __version__, pki
from jaco.archive import FORMAT
from jaco.bolt import BoltFile, SnapshotFileError
from jaco.errors import Unavailable
from jaco.etcd import Etcd
from jaco.state import B_ALIVE, B_ROOT, K_CA, K_CLUSTER, K_HEAD, StateDigest, Store

SNAPSHOT_TIMEOUT = 600.0
ETCD_TRAILER = 32  # etcd appends the SHA-256 of the database to its snapshot stream
MESSAGE_BYTES = 1024 * 1024  # etcd sends 32 KiB pieces; pass them on in 1 MiB messages


@dataclass(frozen=True)
class SnapshotState:
    """What a snapshot file holds, read from the file alone."""

    revision: int
    counts: dict[str, int]
    state_digest: str
    cluster: dict[str, Any]
    ca: pki.KeyPair


def read_snapshot_state(path: Path) -> SnapshotState:
    """Revision, counts, digest, cluster identity and CA of an etcd snapshot file.

    Raises SnapshotFileError if the file is not a readable etcd snapshot of a jaco store.
    """
    with BoltFile(path) as bolt:
        revision, latest = bolt.latest()
        digest = StateDigest()
        records: dict[bytes, bytes] = {}
        wanted = {K_CLUSTER.encode(), K_CA.encode()}
        for key in sorted(k for k in latest if k.startswith(B_ROOT) and not k.startswith(B_ALIVE)):
            value = bolt.value(latest[key])
            digest.add(key, value)
            if key in wanted:
                records[key] = value
    if len(records) != len(wanted):
        raise SnapshotFileError("the snapshot holds no jaco cluster (no identity or CA)")
    try:
        cluster = json.loads(records[K_CLUSTER.encode()])
        ca = json.loads(records[K_CA.encode()])
        keypair = pki.KeyPair(ca["cert_pem"].encode(), ca["key_pem"].encode())
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SnapshotFileError("the snapshot's cluster identity or CA record is damaged") from None
    counts, state_digest = digest.result()
    return SnapshotState(revision, counts, state_digest, cluster, keypair)


async def _pieces(etcd: Etcd) -> AsyncIterator[int | bytes]:
    """etcd's 32 KiB snapshot pieces in 1 MiB chunks, preceded by the total size (an int)."""
    pending: list[bytes] = []
    pending_bytes = 0
    announced = False
    async for blob, remaining in etcd.snapshot(SNAPSHOT_TIMEOUT):
        if not announced:
            announced = True
            yield len(blob) + remaining + ETCD_TRAILER
        pending.append(blob)
        pending_bytes += len(blob)
        if pending_bytes >= MESSAGE_BYTES:
            yield b"".join(pending)
            pending.clear()
            pending_bytes = 0
    if pending:
        yield b"".join(pending)


@dataclass(frozen=True)
class Announce:
    """The first part of a snapshot stream: how many bytes snapshot.bin will have."""

    size: int


async def stream_snapshot(
    store: Store, directory: Path
) -> AsyncGenerator[Announce | bytes | dict[str, Any], None]:
    """Announce the size, pass on the snapshot's bytes, then yield its meta (a dict).

    A scratch copy in `directory` (mode 0600) lets the meta be read from the very bytes sent;
    it is deleted when the generator ends, however it ends.
    """
    etcd = store.etcd
    # A linearizable read first: a follower catches up to the commit index before it snapshots.
    await etcd.get(K_HEAD)
    directory.mkdir(mode=0o700, exist_ok=True)  # noqa: ASYNC240 - one syscall
    path = directory / f"snapshot-{os.getpid()}-{id(store)}.bin"
    digest, size, expected = hashlib.sha256(), 0, -1
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        # No fsync: this is a scratch copy, deleted after streaming (a crash removes it anyway).
        # Writing and hashing it happen on a thread (both release the GIL), one 1 MiB piece
        # at a time and in order, while the event loop passes the same piece on.
        with os.fdopen(fd, "wb") as out, ThreadPoolExecutor(1) as scratch:
            loop = asyncio.get_running_loop()
            writing: asyncio.Future[None] | None = None

            def persist(chunk: bytes) -> None:
                out.write(chunk)
                digest.update(chunk)

            async for piece in _pieces(etcd):
                if isinstance(piece, int):
                    expected = piece
                    yield Announce(piece)
                    continue
                if writing is not None:
                    await writing
                writing = loop.run_in_executor(scratch, persist, piece)
                size += len(piece)
                yield piece
            if writing is not None:
                await writing
        if size != expected:
            raise Unavailable(f"etcd's snapshot stream ended after {size} of {expected} bytes")
        status = await etcd.status()
        try:
            state = await asyncio.to_thread(read_snapshot_state, path)
        except SnapshotFileError as exc:
            raise Unavailable(f"etcd sent an unreadable snapshot: {exc}") from None
        members = {n.get("member_id"): n["name"] for n in await store.nodes()}
    finally:
        path.unlink(missing_ok=True)
    yield {
        "cluster_id": state.cluster["cluster_id"],
        "snapshot_index": state.revision,
        "snapshot_term": status.raft_term,
        "jaco_version": __version__,
        "taken_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "leader_at_snapshot": members.get(f"{status.leader_id:x}", f"{status.leader_id:x}"),
        "format": FORMAT,
        "snapshot_sha256": digest.hexdigest(),
        "snapshot_size": size,
        "counts": state.counts,
        "state_digest": state.state_digest,
        "ca_fingerprint": pki.fingerprint(state.ca.cert_pem),
    }
