"""IPAM and scheduling under concurrent deploys from several clients on several nodes."""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from infra.localcluster import Cluster
from jaco.client.connection import full_status, open_client
from jaco.errors import InvalidArgument, NotFound
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


def test_status_pages_are_one_moment_and_hold_only_their_own_replicas(cluster3: Cluster) -> None:
    """A listing asked a page at a time: every page at the first one's revision (a deploy or
    removal between pages is not in it), each page within its limit, each deployment with its
    own replicas only, although replica keys sort NAME/INDEX (the page [web, web-1] has
    `web-1/…` before `web/…`), and the pages joined equal to the listing in one answer."""
    replicas = {"a": 1, "b": 1, "web": 3, "web-1": 1, "web-10": 3, "web-2": 1, "webx": 2, "z": 0}
    with open_client(cluster3.nodes["node-2"].server, cluster3.token) as client:
        for name, count in replicas.items():
            client.call("Deploy", pb.DeployRequest(name=name, image="img:1", replicas=count))
        try:
            whole = client.call("Status", pb.StatusRequest())
            pages = [client.call("Status", pb.StatusRequest(limit=2))]
            client.call("Deploy", pb.DeployRequest(name="web-0", image="img:1", replicas=1))
            client.call("RemoveDeployment", pb.RemoveDeploymentRequest(name="webx"))
            while pages[-1].next_after:
                request = pb.StatusRequest(
                    after=pages[-1].next_after, limit=2, revision=pages[0].revision
                )
                pages.append(client.call("Status", request))
            now = full_status(client)
        finally:
            for name in [*replicas, "web-0"]:
                with contextlib.suppress(NotFound):
                    client.call("RemoveDeployment", pb.RemoveDeploymentRequest(name=name))
    listed = [d for page in pages for d in page.deployments]
    assert [len(page.deployments) for page in pages] == [2, 2, 2, 2]
    assert {page.revision for page in pages} == {pages[0].revision}
    assert [d.name for d in listed] == sorted(replicas)
    assert listed == list(whole.deployments)
    for d in listed:
        assert len(d.placed) == replicas[d.name]
        assert all(r.id == f"{d.name}-{r.index}" and r.node for r in d.placed)
    assert [d.name for d in now.deployments] == sorted({*replicas, "web-0"} - {"webx"})


def test_a_bad_page_request_is_refused_in_one_line(cluster3: Cluster) -> None:
    with open_client(cluster3.nodes["node-1"].server, cluster3.token) as client:
        ahead = client.call("Status", pb.StatusRequest(limit=1)).revision + 10**6
        for request, said in [
            (pb.StatusRequest(limit=1, after="../x"), "invalid deployment name '../x'"),
            (pb.StatusRequest(limit=1, revision=ahead), f"revision {ahead} is not one of"),
            (pb.StatusRequest(limit=1, revision=-1), "revision -1 is not one of"),
        ]:
            with pytest.raises(InvalidArgument) as refused:
                client.call("Status", request)
            assert said in refused.value.message and "\n" not in refused.value.message


def test_names_extending_a_name_on_the_page_are_not_read_through(cluster3: Cluster) -> None:
    """`app-2/…` and `app-3/…` sort between `app-1/…` and `app/…`, so the page [app, app-1]
    has their 200 replicas (and placements) inside its range; past twice what the page
    expects, each name's own keys are read instead, with the same answer."""
    counts = {"app": 2, "app-1": 0, "app-2": 100, "app-3": 100}
    with open_client(cluster3.nodes["node-3"].server, cluster3.token) as client:
        for name, count in counts.items():
            client.call("Deploy", pb.DeployRequest(name=name, image="img:1", replicas=count))
        try:
            page = client.call("Status", pb.StatusRequest(limit=2))
            scaled = client.call("Scale", pb.ScaleRequest(name="app", replicas=3))
        finally:
            for name in counts:
                client.call("RemoveDeployment", pb.RemoveDeploymentRequest(name=name))
    assert [d.name for d in page.deployments] == ["app", "app-1"] and page.next_after == "app-1"
    app, app1 = page.deployments
    assert [r.id for r in app.placed] == ["app-0", "app-1"] and not app1.placed
    assert [r.id for r in scaled.placed] == ["app-0", "app-1", "app-2"]
    assert all(r.node in cluster3.nodes for r in [*app.placed, *scaled.placed])
