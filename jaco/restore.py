"""`jaco restore`: prime an empty data dir from a backup archive.

Order matters. Everything about the archive is verified (structure, meta.json, snapshot size
and SHA-256, version) into a private temp dir before the data dir is touched. Then etcd's own
restore writes a single-member store; a throwaway PKI lets the member start once so that the
cluster CA can be read back out and the state digest at `snapshot_index` compared with the one
in meta.json; then the node gets a certificate from the cluster's own CA. On the next jacod
start the node comes up as the only voter of the same cluster and records RESTORE_COMPLETED.
Any failure leaves the data dir as it was: empty.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from jaco import pki
from jaco.archive import ArchiveError, check_version, read_archive
from jaco.bootstrap import Ports, empty_data_dir, single_member_config, write_pki
from jaco.config import DataDir, NodeConfig, check_name, write_private
from jaco.etcd_member import EtcdMember, snapshot_restore, snapshot_status
from jaco.state import Store


def restore(archive: Path, data: DataDir, name: str, ports: Ports) -> dict[str, Any]:
    check_name("node", name)
    ports.check()
    data.require_stopped()
    data.require_empty()
    with tempfile.TemporaryDirectory(prefix="jaco-restore-") as tmp:
        snapshot = Path(tmp) / "snapshot.bin"
        fd = os.open(snapshot, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as sink:
            meta = read_archive(archive, sink).meta
        check_version(meta)
        if snapshot_status(snapshot)["revision"] != meta["snapshot_index"]:
            raise ArchiveError("snapshot.bin is not at the index meta.json names")
        created = not data.path.exists()
        data.create()
        try:
            _prime(snapshot, data, name, ports, meta)
        except BaseException:
            empty_data_dir(data, created)
            raise
    return meta


def _prime(snapshot: Path, data: DataDir, name: str, ports: Ports, meta: dict[str, Any]) -> None:
    config = single_member_config(name, meta["cluster_id"], ports)
    snapshot_restore(snapshot, data, config)
    hosts = pki.node_hosts(name, ports.advertise_host)
    throwaway = pki.create_ca("restore")
    temp = pki.issue(throwaway, name, hosts, 1)
    write_pki(data, throwaway.cert_pem, temp.cert_pem, temp.key_pem)
    ca = asyncio.run(_check_restored_store(data, config, meta))
    node = pki.issue(ca, name, hosts, pki.NODE_VALID_DAYS)
    write_pki(data, ca.cert_pem, node.cert_pem, node.key_pem)
    marker = {
        "restore_id": uuid.uuid4().hex,
        "snapshot_index": meta["snapshot_index"],
        "taken_at": meta["taken_at"],
        "cluster_id": meta["cluster_id"],
    }
    write_private(data.restore_marker, json.dumps(marker).encode())
    data.save(config)


async def _check_restored_store(
    data: DataDir, config: NodeConfig, meta: dict[str, Any]
) -> pki.KeyPair:
    member = EtcdMember(data, config)
    etcd = await member.start()
    try:
        store = Store(etcd)
        cluster = await store.cluster()
        if cluster["cluster_id"] != meta["cluster_id"]:
            raise ArchiveError("the snapshot holds another cluster than meta.json names")
        counts, digest = await store.state_digest(meta["snapshot_index"])
        if digest != meta["state_digest"] or counts != meta["counts"]:
            raise ArchiveError(
                "the restored store does not hold exactly what was backed up (state digest "
                "differs from meta.json)"
            )
        return await store.ca()
    finally:
        await member.stop()
