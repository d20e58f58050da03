"""IPAM and scheduling under concurrent deploys from several clients on several nodes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from infra.localcluster import Cluster
from jaco.client.connection import open_client
from jaco.v1 import jaco_pb2 as pb


def test_concurrent_deploys_never_share_an_ip_and_deletes_release_all(cluster3: Cluster) -> None:
    servers = [n.server for n in cluster3.nodes.values()]

    def deploy(i: int) -> list[str]:
        with open_client(servers[i % 3], cluster3.token) as client:
            reply = client.call("Deploy", pb.DeployRequest(name=f"c{i}", image="img:1", replicas=3))
            return [r.ip for r in reply.placed]

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(deploy, range(16)))

    status = cluster3.ok("status", "--json").json()["deployments"]
    ips = [r["ip"] for d in status for r in d["placed"]]
    assert len(ips) == 48
    assert len(set(ips)) == 48, "an IP was allocated twice"
    assert sorted(ip for res in results for ip in res) == sorted(ips)

    # Scale down releases IPs; the freed addresses are reused, still without duplicates.
    cluster3.ok("scale", "c0", "--replicas", "1")
    cluster3.ok("deploy", "after", "--image", "img:1", "--replicas", "2")
    status = cluster3.ok("status", "--json").json()["deployments"]
    ips = [r["ip"] for d in status for r in d["placed"]]
    assert len(ips) == len(set(ips)) == 48

    def remove(name: str) -> None:
        with open_client(servers[hash(name) % 3], cluster3.token) as client:
            client.call("RemoveDeployment", pb.RemoveDeploymentRequest(name=name))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(remove, [d["name"] for d in status]))
    assert cluster3.ok("status", "--json").json()["deployments"] == []

    # Every address is free again: a new deployment starts from the lowest one.
    reply = cluster3.ok("deploy", "fresh", "--image", "img:1", "--replicas", "1", "--json")
    assert [r["ip"] for r in reply.json()["placed"]] == ["10.42.0.2"]
    cluster3.ok("rm", "fresh")


def test_a_deploy_or_scale_answers_with_its_deployment_as_status_lists_it(
    cluster3: Cluster,
) -> None:
    """Deploy and Scale answer with the one deployment, read from its own keys (they read
    the whole table before: seconds per write at 10⁵ deployments). The answer is what Status
    lists for it, placements included; a name that is a prefix of another's gets only its
    own replicas."""
    with open_client(cluster3.nodes["node-1"].server, cluster3.token) as client:
        client.call("Deploy", pb.DeployRequest(name="api2", image="img:2", replicas=2))
        answers = {
            "api": client.call("Deploy", pb.DeployRequest(name="api", image="i:1", replicas=3)),
            "api2": client.call("Scale", pb.ScaleRequest(name="api2", replicas=4)),
        }
        status = client.call("Status", pb.StatusRequest())
    listed = {d.name: d for d in status.deployments}
    try:
        for name, answer in answers.items():
            assert answer == listed[name]
        assert [r.index for r in listed["api"].placed] == [0, 1, 2]
        assert [r.index for r in listed["api2"].placed] == [0, 1, 2, 3]
        assert all(r.node in cluster3.nodes for d in listed.values() for r in d.placed)
    finally:
        cluster3.ok("rm", "api")
        cluster3.ok("rm", "api2")
