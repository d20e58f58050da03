"""The seed page's "Drill it" section, end to end, plus consistency and follower backups."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

from infra.localcluster import JACO, Cluster, Node, cluster_of, run
from tests.archives import members
from tests.refusal import refused


def restore_into(cluster: Cluster, archive: Path, name: str) -> tuple[Node, str]:
    node = cluster.new_node(name)
    result = run(
        [JACO, "restore", "--input", str(archive), "--name", name, *node.port_flags()], timeout=180
    )
    assert result.code == 0, result.err
    return node, result.out


def test_seed_drill_backup_restore_rejoin(tmp_path: Path) -> None:
    with cluster_of(tmp_path / "prod", 3) as prod:
        prod.ok("deploy", "web", "--image", "nginx:1.27", "--replicas", "3")
        prod.ok("deploy", "api", "--image", "api:2", "--replicas", "2", "--env", "MODE=prod")
        prod.ok("route", "add", "www", "--host", "www.example.com", "--deployment", "web")
        prod.ok("cert", "issue", "svc", "--dns", "svc.example.com", "--out-dir", str(tmp_path))
        old_token = prod.ok("token", "create", "--role", "viewer").out.strip().splitlines()[-1]
        follower = next(n for n in prod.nodes.values() if n is not prod.leader())
        before = prod.ok("status", "--json").json()
        routes_before = prod.ok("route", "ls", "--json").json()
        certs_before = prod.ok("cert", "ls", "--json").json()
        ca_before = prod.ok("cluster", "status", "--json").json()["ca_fingerprint"]
        audit_before = [json.loads(x) for x in prod.ok("audit", "--json").out.splitlines()]

        archive = tmp_path / "cluster-2026-05-25.tar.gz"
        out = prod.ok("backup", "--output", str(archive), server=follower.server).out
        assert out.strip() == f"Wrote {archive.stat().st_size} bytes to {archive}"
        assert archive.stat().st_mode & 0o777 == 0o600
        meta, _ = members(archive)
        assert meta["leader_at_snapshot"] == prod.leader().name
        taken = [
            json.loads(x)
            for x in prod.ok("audit", "--type", "BACKUP_TAKEN", "--json").out.splitlines()
        ]
        assert [e["detail"]["snapshot_index"] for e in taken] == [meta["snapshot_index"]]
        # GNU tar is an independent reader of the archive.
        listing = subprocess.run(
            ["tar", "tzf", str(archive)], capture_output=True, text=True, check=True
        ).stdout.split()
        assert listing == ["snapshot.bin", "meta.json"]

    # A separate "host": nothing of prod is running any more.
    drill = Cluster(tmp_path / "drill")
    drill.root.mkdir()
    drill.token = prod.token
    try:
        node, out = restore_into(drill, archive, "drill-1")
        assert f"state digest {meta['state_digest'][:16]}" in out
        node.start()
        drill.wait_ready(["drill-1"])

        after = drill.ok("status", "--json").json()
        assert after == before
        assert drill.ok("route", "ls", "--json").json() == routes_before
        assert drill.ok("cert", "ls", "--json").json() == certs_before
        status = drill.ok("cluster", "status", "--json").json()
        assert status["ca_fingerprint"] == ca_before
        assert status["cluster_id"] == meta["cluster_id"]
        assert [n["name"] for n in status["nodes"]] == ["drill-1"]
        # A token created before the backup still authenticates (it hashes the same).
        assert drill.ok("status", token=old_token)

        audit_after = [json.loads(x) for x in drill.ok("audit", "--json").out.splitlines()]
        assert audit_after[: len(audit_before)] == audit_before
        restored = [e for e in audit_after if e["type"] == "RESTORE_COMPLETED"]
        assert len(restored) == 1
        assert restored[0]["detail"]["snapshot_index"] == meta["snapshot_index"]
        assert "Audit chain intact" in drill.ok("audit", "verify").out

        # Restarting does not record a second RESTORE_COMPLETED.
        node.stop()
        node.start()
        drill.wait_ready(["drill-1"])
        again = drill.ok("audit", "--type", "RESTORE_COMPLETED", "--json").out.splitlines()
        assert len(again) == 1

        # The rest of the cluster rejoins with single-use tokens.
        for name in ("drill-2", "drill-3"):
            drill.join(name, via=node)
            drill.wait_ready([name])
        assert drill.states() == {"drill-1": "READY", "drill-2": "READY", "drill-3": "READY"}
        assert drill.ok("status", "--json", server=drill.nodes["drill-3"].server).json() == before

        # The old names did not come back, so their replicas stay where the backup placed
        # them, on no node: `node remove` of an old name (no record, no etcd member) places
        # them on the nodes there are; the other replicas stay as they were.
        placed = {r["id"]: r["node"] for d in before["deployments"] for r in d["placed"]}
        on_old = sorted(i for i, n in placed.items() if n == "node-1")
        assert on_old, placed
        removed = drill.ok("node", "remove", "node-1").out.strip()
        moved = len(on_old)
        assert removed == f"Removed node node-1 (etcd had no member left; {moved} replicas moved)"
        now = drill.ok("status", "--json").json()
        placed_now = {r["id"]: r["node"] for d in now["deployments"] for r in d["placed"]}
        assert {placed_now[i] for i in on_old} <= {"drill-1", "drill-2", "drill-3"}
        assert {i: n for i, n in placed_now.items() if i not in on_old} == {
            i: n for i, n in placed.items() if i not in on_old
        }
        event = json.loads(drill.ok("audit", "--type", "NODE_REMOVED", "--json").out)
        assert event["detail"]["name"] == "node-1" and event["detail"]["replicas_moved"] == moved
        refused(drill.jaco("node", "remove", "node-1"), 3, "^error: no node named node-1$")
    finally:
        drill.stop_all()


def test_backup_is_consistent_under_continuous_writes(tmp_path: Path) -> None:
    with cluster_of(tmp_path / "busy", 1) as busy:
        acked: list[tuple[float, str]] = []
        stop = threading.Event()

        def writer() -> None:
            i = 0
            while not stop.is_set():
                name = f"w{i}"
                if busy.jaco("deploy", name, "--image", "x:1", "--replicas", "1").code == 0:
                    acked.append((time.monotonic(), name))
                i += 1

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            time.sleep(3)
            started = time.monotonic()
            archive = tmp_path / "busy.tar.gz"
            busy.ok("backup", "--output", str(archive))
            finished = time.monotonic()
            time.sleep(2)
        finally:
            stop.set()
            thread.join()

        before_backup = {name for at, name in acked if at < started}
        after_backup = {name for at, name in acked if at > finished + 0.5}
        assert before_backup and after_backup

        drill = Cluster(tmp_path / "drill")
        drill.root.mkdir()
        drill.token = busy.token
        try:
            node, _ = restore_into(drill, archive, "r1")
            node.start()
            drill.wait_ready(["r1"])
            deps = {d["name"] for d in drill.ok("status", "--json").json()["deployments"]}
            events = [json.loads(x) for x in drill.ok("audit", "--json").out.splitlines()]
            created = {e["detail"]["name"] for e in events if e["type"] == "DEPLOYMENT_CREATED"}
            assert before_backup <= deps, "a write acknowledged before the backup is missing"
            assert not deps & after_backup, "a write made after the backup is in it"
            assert created == deps  # state and audit log agree at the snapshot index
            assert "Audit chain intact" in drill.ok("audit", "verify").out
        finally:
            drill.stop_all()
