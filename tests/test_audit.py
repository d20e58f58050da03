"""The audit log: one event per mutation, hash-chained; tampering is detected."""

from __future__ import annotations

import json
import subprocess

from infra.localcluster import Cluster


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
