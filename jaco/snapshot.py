"""Taking a snapshot on a node: etcd's snapshot stream to a private temp file, then its meta.

The snapshot is etcd's own Maintenance.Snapshot stream, byte for byte, so `etcdctl snapshot
restore` can read it. Its store revision (`snapshot_index`) is read back from the file by
etcd's own tool, and the counts and digest are computed from the store at exactly that
revision: the meta describes precisely what the bytes hold.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaco import __version__
from jaco.archive import FORMAT
from jaco.etcd_member import snapshot_status
from jaco.state import K_HEAD, Store

SNAPSHOT_TIMEOUT = 600.0


@dataclass
class Snapshot:
    path: Path
    meta: dict[str, Any]


async def take_snapshot(store: Store, directory: Path) -> Snapshot:
    """Write a consistent snapshot into `directory` and describe it. Caller deletes the file."""
    etcd = store.etcd
    # A linearizable read first: a follower catches up to the commit index before it snapshots.
    await etcd.get(K_HEAD)
    directory.mkdir(mode=0o700, exist_ok=True)  # noqa: ASYNC240 - one syscall
    path = directory / f"snapshot-{os.getpid()}-{id(store)}.bin"
    digest, size = hashlib.sha256(), 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in etcd.snapshot(SNAPSHOT_TIMEOUT):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        # No fsync: this is a scratch copy, deleted after streaming (a crash removes it anyway).
        status = await etcd.status()
        file_status = await asyncio.to_thread(snapshot_status, path)
        revision = file_status["revision"]
        counts, state_digest = await store.state_digest(revision)
        cluster = await store.cluster()
        members = {n.get("member_id"): n["name"] for n in await store.nodes()}
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    meta = {
        "cluster_id": cluster["cluster_id"],
        "snapshot_index": revision,
        "snapshot_term": status.raft_term,
        "jaco_version": __version__,
        "taken_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "leader_at_snapshot": members.get(f"{status.leader_id:x}", f"{status.leader_id:x}"),
        "format": FORMAT,
        "snapshot_sha256": digest.hexdigest(),
        "snapshot_size": size,
        "counts": counts,
        "state_digest": state_digest,
        "ca_fingerprint": await store.ca_fingerprint(),
    }
    return Snapshot(path, meta)
