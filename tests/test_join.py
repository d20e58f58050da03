"""Join tokens are single-use and expire; a refused join leaves the data dir empty."""

from __future__ import annotations

import time

from infra.localcluster import Cluster, Node, Result


def _join(cluster: Cluster, name: str, token: str) -> tuple[Node, Result]:
    return cluster.try_join(name, token, cluster.nodes["node-1"])


def test_join_token_is_single_use(single: Cluster) -> None:
    token = single.ok("node", "issue-join-token").out.strip()
    node, first = _join(single, "node-2", token)
    assert first.code == 0, first.err
    node.start()
    single.wait_ready(["node-1", "node-2"])

    late, second = _join(single, "node-3", token)
    assert second.code != 0
    assert "the join token is unknown, already used or expired" in second.err
    assert not late.data_dir.exists()
    names = [n["name"] for n in single.ok("cluster", "status", "--json").json()["nodes"]]
    assert names == ["node-1", "node-2"]
    events = single.ok("audit", "--type", "NODE_JOINING", "--json").out.splitlines()
    assert len(events) == 1


def test_expired_join_token_is_refused(single: Cluster) -> None:
    token = single.ok("node", "issue-join-token", "--ttl", "1").out.strip()
    time.sleep(2.5)
    node, result = _join(single, "node-2", token)
    assert result.code != 0
    assert "expired" in result.err
    assert not node.data_dir.exists()


def test_operator_token_is_not_a_join_token(single: Cluster) -> None:
    node, result = _join(single, "node-2", single.token)
    assert result.code != 0 and "this is not a join token" in result.err
    assert not node.data_dir.exists()
