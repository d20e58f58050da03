"""Clusters of separate hosts: each node a container of the jaco image with its own address.

A restore onto a new host with another address, done as docs/backups.md says, and nodes cut
off from their network (`docker network disconnect`) while they serve a backup or a join.
Every `jaco` command runs inside a node's container (infra/containers.py), as an operator's
would over ssh; archives and tokens move between hosts through stdin, never the host's disk.

Skipped only when no Docker engine answers (and then for that reason alone, which the last
test checks); where an engine answers, a missing image is a failure, not a skip.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.containers import (
    DATA_DIR,
    LABEL,
    ContainerCluster,
    NodeContainer,
    container_cluster,
    finish,
    start,
    sweep,
)
from infra.localcluster import Result, wait_for
from tests.docker_engine import skipped_without_an_engine

BACKUP_DIR = "/tmp/backup"  # noqa: S108 - in the container's own tmpfs
VIEWER_TOKEN = "/tmp/jaco/viewer.token"  # noqa: S105, S108


@pytest.fixture
def hosts(image: str) -> Iterator[ContainerCluster]:
    """A private network of this test's own; its containers and the network go at the end,
    and no volume is left (the image's VOLUME is covered by a tmpfs)."""
    volumes = _listed(["volume", "ls", "-q"])
    with container_cluster(image) as cluster:
        yield cluster
    assert _listed(["ps", "-aq"], f"{LABEL}={cluster.run}") == []
    assert _listed(["network", "ls", "-q"], f"{LABEL}={cluster.run}") == []
    assert set(_listed(["volume", "ls", "-q"])) - set(volumes) == set()  # others come and go


def _listed(listing: list[str], label: str | None = None) -> list[str]:
    """IDs docker lists, only those labelled `label` if given."""
    filters = ["--filter", f"label={label}"] if label else []
    done = subprocess.run(["docker", *listing, *filters], capture_output=True, text=True)
    return done.stdout.split()


def _with_state(hosts: ContainerCluster) -> NodeContainer:
    """A 3-node cluster holding a deployment, a route and a viewer token; returns node-1."""
    hosts.grow(3)
    first = hosts.nodes["node-1"]
    first.ok("deploy", "web", "--image", "nginx:1.27", "--replicas", "3")
    first.ok("route", "add", "www", "--host", "www.example.com", "--deployment", "web",
             "--port", "80")  # fmt: skip
    first.ok("token", "create", "--role", "viewer", "--description", "grafana",
             "--file", VIEWER_TOKEN)  # fmt: skip
    return first


def _listings(node: NodeContainer) -> dict[str, Any]:
    """What the cluster holds, as the CLI lists it (replica placements aside: those follow
    the nodes, which a restore changes)."""
    deployments = node.ok("status", "--json").json()["deployments"]
    return {
        "deployments": [
            {k: d.get(k) for k in ("name", "image", "replicas", "env")} for d in deployments
        ],
        "routes": node.ok("route", "ls", "--json").json(),
        "tokens": node.ok("token", "ls", "--json").json(),
    }


def _events(node: NodeContainer, kind: str) -> list[dict[str, Any]]:
    out = node.ok("audit", "--type", kind, "--json").out
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def _etcd_logs(*nodes: NodeContainer) -> str:
    """The end of each node's etcd log: why a request timed out, when one does."""
    return "\n".join(
        f"== {n.name}\n" + n.exec("tail", "-c", "6000", f"{DATA_DIR}/etcd.log").out for n in nodes
    )


def _backup_files(node: NodeContainer) -> list[str]:
    """Every file in the node's backup directory, hidden partial files included."""
    return node.exec("ls", "-A", BACKUP_DIR).out.split()


def test_a_backup_from_a_follower_restores_onto_a_new_host_and_the_others_rejoin(
    hosts: ContainerCluster,
) -> None:
    first = _with_state(hosts)
    before = _listings(first)
    assert [d["name"] for d in before["deployments"]] == ["web"]
    assert [(r["name"], r["host"]) for r in before["routes"]["routes"]] == [
        ("www", "www.example.com")
    ]
    assert sorted(t["role"] for t in before["tokens"]["tokens"]) == ["admin", "viewer"]
    leader = hosts.leader(first)
    follower = next(n for name, n in hosts.nodes.items() if name != leader)

    # The backup, served by a follower (its own jacod, over its loopback).
    follower.exec("mkdir", "-p", BACKUP_DIR)
    taken = follower.ok("backup", "--output", f"{BACKUP_DIR}/cluster.tar.gz")
    assert f"leader {leader}," in taken.err, taken.err
    served = _events(first, "BACKUP_TAKEN")
    assert [e["detail"]["served_by"] for e in served] == [follower.name]
    archive = follower.read(f"{BACKUP_DIR}/cluster.tar.gz")  # held in memory only
    viewer = first.read(VIEWER_TOKEN)  # where `token create --file` wrote it

    # The leader's host is lost.
    old_address = hosts.nodes[leader].ip
    hosts.remove(leader)

    # A brand-new host with another address: restore, start, as docs/backups.md says.
    fresh = hosts.add("node-4")
    assert fresh.ip != old_address and fresh.ip not in {n.ip for n in hosts.nodes.values()
                                                        if n is not fresh}  # fmt: skip
    fresh.put_secret(f"{BACKUP_DIR}/cluster.tar.gz", archive)
    meta = fresh.ok("backup", "inspect", "--json", f"{BACKUP_DIR}/cluster.tar.gz").json()
    assert meta["leader_at_snapshot"] == leader and meta["verified"] is True
    restored = fresh.ok("restore", "--input", f"{BACKUP_DIR}/cluster.tar.gz",
                        "--name", "node-4", "--advertise-host", fresh.ip)  # fmt: skip
    assert f"at index {meta['snapshot_index']}" in restored.out, restored.out
    fresh.start_jacod()
    hosts.wait_ready(["node-4"], fresh)

    # The other two rejoin: daemon stopped, data dir emptied, a join token piped in.
    for name in sorted(set(hosts.nodes) - {"node-4"}):
        node = hosts.nodes[name]
        node.stop_jacod()
        node.wipe()
        joined = hosts.join(node, fresh)
        assert joined.code == 0, joined.err
        node.start_jacod()
        hosts.wait_ready([name], fresh)

    status = hosts.status(fresh)
    assert {n["name"]: n["address"] for n in status} == {
        name: f"{node.ip}:7000" for name, node in hosts.nodes.items()
    }
    assert all(n["state"] == "READY" and n["voter"] for n in status), status
    assert sum(bool(n["leader"]) for n in status) == 1
    assert f"{old_address}:7000" not in {n["address"] for n in status}
    for node in hosts.nodes.values():  # every host sees the same state
        assert _listings(node) == before
    # The viewer token of the old cluster still authenticates (same CA, same hashes).
    fresh.put_secret(VIEWER_TOKEN, viewer)
    seen = fresh.ok("status", "--json", token_file=VIEWER_TOKEN).json()["deployments"]
    assert [d["name"] for d in seen] == ["web"]
    # The audit chain verifies, and extends the head the archive recorded.
    verified = fresh.ok("audit", "verify", "--anchor", f"{BACKUP_DIR}/cluster.tar.gz")
    assert "Audit chain intact" in verified.out and "extends all 1 anchors" in verified.out
    completed = _events(fresh, "RESTORE_COMPLETED")
    assert [e["detail"].get("restored_as") for e in completed] == ["node-4"], completed
    assert [e["detail"]["name"] for e in _events(fresh, "DEPLOYMENT_CREATED")] == ["web"]


def _one_line(result: Result) -> str:
    assert result.out == "", result.out
    lines = result.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.err
    return lines[0]


def test_a_node_cut_off_refuses_backups_and_joins_in_one_line_and_the_cluster_recovers(
    hosts: ContainerCluster,
) -> None:
    first = _with_state(hosts)
    leader = hosts.nodes[hosts.leader(first)]
    cut = next(n for n in hosts.nodes.values() if n is not leader)
    for node in hosts.nodes.values():
        node.exec("mkdir", "-p", BACKUP_DIR)
    members = hosts.status(leader)
    newcomer = hosts.add("node-4")
    cut.disconnect()

    # Asked at once while the node is cut off (each waits out a deadline of the product's
    # own: etcd's request timeout, the client's connect timeout, a join's settle wait):
    # - a backup served by the cut-off node, asked on its own host: its store has no quorum;
    # - the same node asked from another host: it cannot be reached at all;
    # - a join through the cut-off node: it cannot be reached;
    # - a join through a connected node: refused while a member is down (etcd's strict
    #   reconfiguration), and the join says so.
    alone = start(cut.jaco_command("backup", "--output", f"{BACKUP_DIR}/cluster.tar.gz"))
    remote = start(
        leader.jaco_command("backup", "--server", cut.server, "--output", f"{BACKUP_DIR}/c.tar.gz")
    )
    through_cut = hosts.start_join(newcomer, cut, issuer=leader)
    # The join through a connected node once the cluster shows the node DOWN (its liveness
    # lease expired) and the cut node's own backup has given up (etcd's request timeout):
    # etcd's leader takes 5 s of silence on its peer stream to see it gone, and a join sent
    # before that is admitted (CI saw it once).
    wait_for(lambda: hosts.states(leader)[cut.name] == "DOWN", 60, f"{cut.name} DOWN")
    first_result = finish(alone)
    while_down = hosts.start_join(newcomer, leader)
    results = [first_result, *(finish(p) for p in (remote, through_cut, while_down))]
    assert [r.code for r in results] == [7, 7, 7, 7], results
    lines = [_one_line(r) for r in results]
    assert "reaches no quorum" in lines[0] and "use another node" in lines[0], lines[0]
    assert f"cannot reach {cut.server}" in lines[1], lines[1]
    assert f"cannot reach {cut.server}" in lines[2], lines[2]
    assert "a member is down" in lines[3], lines[3]
    assert _backup_files(cut) == [] and _backup_files(leader) == []  # no archive, no partial
    assert newcomer.exec("ls", "-A", "/var/lib/jaco").out.split() == []  # nothing primed
    assert {n["name"] for n in hosts.status(leader)} == {n["name"] for n in members}
    assert [e["detail"]["served_by"] for e in _events(leader, "BACKUP_TAKEN")] == []

    # The network comes back: the node is READY again, answers itself (reads through its
    # own member, as a backup does first), and serves the next backup; the join goes through.
    # Its etcd member rejoins without forcing an election (pre-vote): the backup is taken in
    # the term the cluster had before the cut. Without pre-vote the cut member, campaigning
    # alone, raised its term (3 -> 32 in one run) and on its return deposed the leader.
    term = max(int(str(n["raft_term"])) for n in members)
    cut.connect()
    names = [str(n["name"]) for n in members]
    hosts.wait_ready(names, leader)
    hosts.wait_ready(names, cut)
    taken = cut.jaco("backup", "--output", f"{BACKUP_DIR}/cluster.tar.gz")
    assert taken.code == 0, (taken.err, _etcd_logs(cut, leader))
    assert _backup_files(cut) == ["cluster.tar.gz"]
    meta = cut.ok("backup", "inspect", "--json", f"{BACKUP_DIR}/cluster.tar.gz").json()
    assert meta["snapshot_term"] == term, (meta["snapshot_term"], term)
    assert [e["detail"]["served_by"] for e in _events(leader, "BACKUP_TAKEN")] == [cut.name]
    joined = hosts.join(newcomer, cut, issuer=leader)
    assert joined.code == 0, joined.err

    # The newcomer is cut off as soon as it is admitted: its learner cannot catch up, so the
    # next join is refused naming it (exit 7, nothing primed); reconnected, it is promoted.
    # (A disconnected container has no interface left: etcd cannot bind its peer address and
    # jacod exits saying so; systemd's Restart=on-failure would start it again, as done here.)
    newcomer.disconnect()
    newcomer.start_jacod()
    wait_for(lambda: not newcomer.jacod_running(), 60, "jacod without its address to exit")
    assert "cannot assign requested address" in newcomer.log()
    late = hosts.add("node-5")
    waiting = hosts.join(late, leader, "--wait", "1")
    assert waiting.code == 7, waiting
    line = _one_line(waiting)
    assert "node node-4 is still catching up as a learner" in line, line
    assert "run this join again" in line, line
    assert late.exec("ls", "-A", "/var/lib/jaco").out.split() == []
    newcomer.connect()
    newcomer.start_jacod()
    hosts.wait_ready(["node-1", "node-2", "node-3", "node-4"], cut)
    assert "node-5" not in hosts.states(cut)
    assert cut.ok("audit", "verify").out.startswith("Audit chain intact")


def test_what_a_killed_run_left_is_swept_by_the_next(image: str) -> None:
    started = subprocess.Popen(
        [sys.executable, "-c", LEFT_BEHIND], stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert started.stdout is not None
    run = started.stdout.readline().strip()  # once its network and container exist
    started.kill()  # kill -9: nothing of its own cleans up
    started.wait()
    assert run, "the run did not start"
    label = f"{LABEL}={run}"
    left = _listed(["ps", "-aq"], label) + _listed(["network", "ls", "-q"], label)
    assert len(left) == 2, left
    swept = sweep()
    assert sum(f"of dead run {run}" in line for line in swept) == 2, swept
    assert _listed(["ps", "-aq"], label) == [] and _listed(["network", "ls", "-q"], label) == []


# A run that dies holding a network and a container: it prints its run id, then waits.
LEFT_BEHIND = """
import time
from infra.containers import ContainerCluster
cluster = ContainerCluster()
cluster.create_network()
cluster.add("node-1")
print(cluster.run, flush=True)
time.sleep(600)
"""


def test_without_an_engine_these_tests_are_skipped_for_that_reason_alone(
    image: str, tmp_path: Path
) -> None:
    skipped = skipped_without_an_engine("tests/test_multihost.py", tmp_path / "bt")
    assert len(skipped) == 3 and all("no Docker engine answers" in s for s in skipped), skipped
