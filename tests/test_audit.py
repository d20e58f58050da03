"""The audit log: one event per mutation, hash-chained; tampering is detected."""

from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from infra.localcluster import Cluster
from jaco.model import audit
from tests.pipeline import age_keygen


def _etcdctl(cluster: Cluster, *args: str, input_: str | None = None) -> str:
    command = [*cluster.nodes["node-1"].etcdctl_command(), *args]
    proc = subprocess.run(
        command,
        capture_output=True,
        text=True,
        input=input_,
        check=True,
        env={"ETCDCTL_API": "3"},
        timeout=30,
    )
    return proc.stdout


def test_every_mutation_is_audited_and_the_chain_verifies(single: Cluster) -> None:
    single.ok("deploy", "a", "--image", "x:1", "--replicas", "2")
    single.ok("scale", "a", "--replicas", "3")
    single.ok("route", "add", "r", "--host", "a.example", "--deployment", "a")
    single.ok("route", "rm", "r")
    single.ok("rm", "a")
    lines = single.ok("audit", "--json").out.splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["type"] for e in events] == [
        "CLUSTER_INITIALIZED",
        "TOKEN_CREATED",
        "DEPLOYMENT_CREATED",
        "DEPLOYMENT_SCALED",
        "ROUTE_ADDED",
        "ROUTE_REMOVED",
        "DEPLOYMENT_REMOVED",
    ]
    assert [int(e["seq"]) for e in events] == list(range(1, 8))
    assert all(e["prev_hash"] == p["hash"] for p, e in zip(events, events[1:], strict=False))
    assert events[2]["actor"].startswith("token:")
    filtered = single.ok("audit", "--type", "deployment_scaled", "--json").out.splitlines()
    assert [json.loads(x)["detail"] for x in filtered] == [
        {"name": "a", "replicas_from": 2, "replicas_to": 3}
    ]
    assert "Audit chain intact: 7 events" in single.ok("audit", "verify").out


def test_altering_one_stored_event_is_detected(single: Cluster) -> None:
    single.ok("deploy", "victim", "--image", "x:1", "--replicas", "1")
    key = "/jaco/v1/audit/events/000000000003"
    event = json.loads(_etcdctl(single, "get", key, "--print-value-only"))
    event["detail"]["image"] = "evil:1"
    _etcdctl(single, "put", key, input_=json.dumps(event, sort_keys=True))
    result = single.jaco("audit", "verify")
    assert result.code == 1
    assert "Audit chain broken at event 3" in result.err
    assert "does not match its hash" in result.err


def _events(cluster: Cluster) -> list[dict[str, Any]]:
    out = _etcdctl(cluster, "get", "/jaco/v1/audit/events/", "--prefix", "--print-value-only")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _write_chain(cluster: Cluster, events: list[dict[str, Any]]) -> None:
    """Store `events` with every hash and the head recomputed: the chain is intact again,
    as someone holding the node's etcd credentials can make it."""
    prev = audit.GENESIS_HASH
    for event in events:
        fixed = audit.make_event(
            event["seq"], prev, event["type"], event["actor"], event["at"], event["detail"]
        )
        prev = fixed["hash"]
        key = f"/jaco/v1/audit/events/{event['seq']:012d}"
        _etcdctl(cluster, "put", key, input_=json.dumps(fixed, sort_keys=True))
    head = {"schema": 1, "seq": events[-1]["seq"], "hash": prev}
    _etcdctl(cluster, "put", "/jaco/v1/audit/head", input_=json.dumps(head, sort_keys=True))


def test_history_rewritten_or_cut_after_a_backup_is_caught_by_its_anchor(
    single: Cluster, tmp_path: Path
) -> None:
    single.ok("deploy", "web", "--image", "nginx:1", "--replicas", "2")
    archive = tmp_path / "anchor.tar.gz"
    single.ok("backup", "--output", str(archive))
    single.ok("scale", "web", "--replicas", "3")
    clean = single.ok("audit", "verify", "--anchor", str(archive))
    assert "Audit chain intact" in clean.out and "extends all 1 anchors" in clean.out
    original = _events(single)

    rewritten = [dict(e) for e in original]
    rewritten[2]["detail"] = {**rewritten[2]["detail"], "image": "evil:1"}  # DEPLOYMENT_CREATED
    _write_chain(single, rewritten)
    assert "Audit chain intact" in single.ok("audit", "verify").out  # invisible without it
    caught = single.jaco("audit", "verify", "--anchor", str(archive))
    assert caught.code == 1 and len(caught.err.strip().splitlines()) == 1, caught.err
    assert "history was rewritten" in caught.err and "anchor.tar.gz" in caught.err

    anchored = json.loads(_meta_json(archive))["audit_head"]["seq"]
    _write_chain(single, original[: anchored - 1])  # the anchored event and later ones cut
    # Delete the anchored event and every later one (a range: "events0" sorts right after them).
    _etcdctl(single, "del", f"/jaco/v1/audit/events/{anchored:012d}", "/jaco/v1/audit/events0")
    assert "Audit chain intact" in single.ok("audit", "verify").out
    cut = single.jaco("audit", "verify", "--anchor", str(archive))
    assert cut.code == 1 and "history was removed" in cut.err, cut.err


def _meta_json(archive: Path) -> bytes:
    with tarfile.open(archive, "r:gz") as tar:
        member = tar.extractfile("meta.json")
        assert member is not None
        return member.read()


def test_an_encrypted_backup_is_inspected_and_anchors_with_its_identity(
    single: Cluster, tmp_path: Path
) -> None:
    archive = tmp_path / "b.tar.gz"
    single.ok("backup", "--output", str(archive))
    recipient = age_keygen(tmp_path / "ops.key")
    encrypted = tmp_path / "b.tar.gz.age"
    subprocess.run(["age", "-r", recipient, "-o", str(encrypted), str(archive)], check=True)
    refused = single.jaco("backup", "inspect", str(encrypted))
    assert refused.code == 2 and len(refused.err.strip().splitlines()) == 1
    assert "is an age-encrypted backup: give --identity FILE" in refused.err
    shown = single.ok("backup", "inspect", str(encrypted), "--identity", str(tmp_path / "ops.key"))
    assert "b.tar.gz.age: verified" in shown.out
    env = {"JACO_AGE_IDENTITY_FILE": str(tmp_path / "ops.key")}
    anchored = single.ok("audit", "verify", "--anchor", str(encrypted), env=env)
    assert "extends all 1 anchors" in anchored.out
    wrong = tmp_path / "other.key"
    age_keygen(wrong)
    bad = single.jaco("backup", "inspect", str(encrypted), "--identity", str(wrong))
    assert bad.code == 14 and "does not decrypt" in bad.err
