"""`jaco restore`: prime an empty data dir from a backup archive, all at once or not at all.

The new data dir is built beside the old one (`.NAME.restore-PID`, same filesystem, mode 0700,
under flock: jaco.files.staged_dir) and renamed over it only when complete, so a crash at any
moment leaves the data dir as it was; the next attempt removes what a dead one left, and
says so. The snapshot is extracted into a file with no name on that filesystem
(jaco.files.anonymous_file): no plaintext copy of the store survives a crash outside the data
dir, and nothing is written to $TMPDIR. Before a byte of it is written, the filesystem must
have room for its declared size and etcd's 64 MB log (twice its size where etcd's tool copies
it: any tool but etcdctl 3.4.23, jaco.node.seeded_restore). An
age-encrypted backup (the pipeline's `.tar.gz.age`) is decrypted as it is read, on a thread
of its own: no decrypted archive is ever written.

Everything about the archive is verified as it is extracted (structure, meta.json, snapshot
size and SHA-256, version). The snapshot file itself is then read (jaco.archive.snapshot_file:
no etcd started, nothing executed): its revision must be `snapshot_index`, its state digest
and counts those in meta.json, its cluster the one named; the cluster CA comes out of it.
Then that file becomes the store of a single-member etcd made by etcd's own restore tool
(without the tool's copy of it, jaco.node.seeded_restore), and the node gets a certificate
from the cluster's own CA. On the next jacod start the node comes up as the only voter of
the same cluster and records RESTORE_COMPLETED.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

from jaco.archive.bolt import SnapshotFileError
from jaco.archive.encrypted import read_backup
from jaco.archive.format import read_archive_stream
from jaco.archive.meta import BackupMeta
from jaco.archive.snapshot_file import SnapshotState, read_snapshot_state
from jaco.errors import ArchiveError, DataDirError
from jaco.files import (
    STAGING,
    anonymous_file,
    require_space,
    staged_dir,
    sweep_partials,
    write_private,
)
from jaco.model import pki
from jaco.model.names import check_name
from jaco.node.bootstrap import Ports, single_member_config, write_pki
from jaco.node.config import DataDir
from jaco.node.etcd_member import WAL_BYTES
from jaco.node.seeded_restore import adopt, copy_restore, restore_seed, seeded


def restore(
    archive: Path | IO[bytes],
    data: DataDir,
    name: str,
    ports: Ports,
    notify: Callable[[str], None] = lambda message: None,
    after: Callable[[DataDir], None] | None = None,
    identities: list[Any] | None = None,
) -> BackupMeta:
    """Restore `archive` into the (absent or empty) data dir; `notify` hears what was cleaned
    up of earlier attempts that died; `after` (point-in-time restore's replay) works on the
    staged data dir before it is renamed into place. The archive is a file, plain or
    age-encrypted (decrypted as it is read with `identities`), or a stream of a plain one
    (the drill's, from its own decrypter)."""
    check_name("node", name)
    ports.check()
    data.require_stopped()
    data.require_empty()
    target = data.path.absolute()
    parent = target.parent
    if not parent.is_dir():
        raise DataDirError(f"{parent}, which is to hold the data dir, does not exist")
    if target.is_symlink() or os.path.ismount(target):
        raise DataDirError(
            f"the data dir {target} is a symbolic link or a mount point: restore builds the "
            "new data dir beside it and renames it into place; use a directory inside it"
        )
    for left in sweep_partials(parent, STAGING, target.name):
        notify(f"removed {left}, left by an interrupted restore")

    in_place = seeded()

    def reserve(size: int) -> None:
        # the snapshot, and etcd's log; or, where etcd's tool copies it, the snapshot twice
        need = size + WAL_BYTES if in_place else 2 * size
        require_space(parent, need, "restoring this backup")

    with staged_dir(target) as staging, anonymous_file(staging) as snapshot:
        if isinstance(archive, Path):
            meta = read_backup(archive, identities, snapshot, reserve).meta
        else:
            meta = read_archive_stream(archive, snapshot, "the backup", reserve)
        snapshot.flush()
        meta.check_version()
        staged = DataDir(staging)
        staged.create()
        _prime(snapshot.fileno(), staged, name, ports, meta, in_place)
        if after is not None:
            after(staged)
    return meta


def _prime(
    snapshot: int, data: DataDir, name: str, ports: Ports, meta: BackupMeta, in_place: bool
) -> None:
    """Fill the staged data dir from the snapshot (an open descriptor, reached by path through
    /proc/self/fd, in this process and in etcd's restore tool). It is checked while etcd's
    tool restores an empty store, then made that store's db in place (etcdctl 3.4.23,
    jaco.node.seeded_restore); any other tool copies it while it is checked."""
    config = single_member_config(name, meta.cluster_id, ports)
    path = Path(f"/proc/self/fd/{snapshot}")
    # Reading the snapshot's state and etcd's restore each take a while: run them together.
    with ThreadPoolExecutor(1) as pool:
        checked = pool.submit(_check_snapshot, path, meta, data.path)
        try:
            if in_place:
                restore_seed(data, config)
            else:
                copy_restore(snapshot, data, config)
        finally:
            state = checked.result()  # its error, if any, wins: it says what is wrong
    if in_place:
        adopt(snapshot, data, config)
    ca = state.ca
    node = pki.issue(ca, name, pki.node_hosts(name, ports.advertise_host), pki.NODE_VALID_DAYS)
    write_pki(data, ca.cert_pem, node.cert_pem, node.key_pem)
    marker = {
        "restore_id": uuid.uuid4().hex,
        "snapshot_index": meta.snapshot_index,
        "taken_at": meta.taken_at.isoformat(),
        "cluster_id": meta.cluster_id,
    }
    write_private(data.restore_marker, json.dumps(marker).encode())
    data.save(config)


def _check_snapshot(snapshot: Path, meta: BackupMeta, scratch: Path) -> SnapshotState:
    try:
        state = read_snapshot_state(snapshot, scratch, version=meta.digest_version)
    except SnapshotFileError as exc:
        raise ArchiveError(f"snapshot.bin is not a readable jaco store: {exc}") from None
    if state.revision != meta.snapshot_index:
        raise ArchiveError(
            f"snapshot.bin is at index {state.revision}; meta.json says {meta.snapshot_index}"
        )
    if state.cluster.get("cluster_id") != meta.cluster_id:
        raise ArchiveError("the snapshot holds another cluster than meta.json names")
    if state.state_digest != meta.state_digest:
        raise ArchiveError(
            "the snapshot does not hold exactly what was backed up (state digest differs "
            "from meta.json)"
        )
    if state.counts != meta.counts:
        raise ArchiveError(
            "the snapshot does not hold the record counts meta.json names (counts differ)"
        )
    if meta.ca_fingerprint is not None and meta.ca_fingerprint != pki.fingerprint(
        state.ca.cert_pem
    ):
        raise ArchiveError("the snapshot's cluster CA is not the one meta.json names")
    return state
