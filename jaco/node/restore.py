"""`jaco restore`: prime an empty data dir from a backup archive.

Order matters. Everything about the archive is verified (structure, meta.json, snapshot size
and SHA-256, version) into a private temp dir before the data dir is touched. The snapshot
file itself is then read (jaco.archive.snapshot_file: no etcd started, nothing executed): its
revision must be `snapshot_index`, its state digest and counts those in meta.json, its
cluster the one named; the cluster CA comes out of it. Meanwhile etcd's own restore writes a
single-member store, and the node gets a certificate from the cluster's own CA. On the next
jacod start the node comes up as the only voter of the same cluster and records
RESTORE_COMPLETED. Any failure leaves the data dir as it was: empty.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from jaco.archive.bolt import SnapshotFileError
from jaco.archive.format import read_archive
from jaco.archive.meta import BackupMeta
from jaco.archive.snapshot_file import SnapshotState, read_snapshot_state
from jaco.errors import ArchiveError
from jaco.files import create_private, write_private
from jaco.model import pki
from jaco.model.names import check_name
from jaco.node.bootstrap import Ports, empty_data_dir, single_member_config, write_pki
from jaco.node.config import DataDir
from jaco.node.etcd_member import snapshot_restore


def restore(archive: Path, data: DataDir, name: str, ports: Ports) -> BackupMeta:
    check_name("node", name)
    ports.check()
    data.require_stopped()
    data.require_empty()
    with tempfile.TemporaryDirectory(prefix="jaco-restore-") as tmp:
        snapshot = Path(tmp) / "snapshot.bin"
        with create_private(snapshot) as sink:
            meta = read_archive(archive, sink).meta
        meta.check_version()
        created = not data.path.exists()
        data.create()
        try:
            _prime(snapshot, data, name, ports, meta)
        except BaseException:
            empty_data_dir(data, created)
            raise
    return meta


def _prime(snapshot: Path, data: DataDir, name: str, ports: Ports, meta: BackupMeta) -> None:
    config = single_member_config(name, meta.cluster_id, ports)
    # Reading the snapshot's state and etcd's restore each take a while: run them together.
    with ThreadPoolExecutor(1) as pool:
        checked = pool.submit(_check_snapshot, snapshot, meta)
        try:
            snapshot_restore(snapshot, data, config)
        finally:
            state = checked.result()  # its error, if any, wins: it says what is wrong
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


def _check_snapshot(snapshot: Path, meta: BackupMeta) -> SnapshotState:
    try:
        state = read_snapshot_state(snapshot)
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
