"""The Changes RPC against a real jacod: every change after a revision, grouped by revision,
with progress; a compacted start refused with its own error."""

from __future__ import annotations

import itertools
import subprocess

import pytest

from infra.localcluster import Cluster
from jaco.client.connection import open_client
from jaco.errors import Compacted
from jaco.v1 import jaco_pb2 as pb


def _revision(cluster: Cluster) -> int:
    with open_client(cluster.nodes["node-1"].server, cluster.token) as client:
        return int(client.call("StateDigest", pb.StateDigestRequest()).revision)


def test_changes_come_grouped_by_revision_then_progress(single: Cluster) -> None:
    start = _revision(single) + 1
    single.ok("deploy", "web", "--image", "nginx:1", "--replicas", "2")
    single.ok("rm", "web")
    after = _revision(single)
    seen: list[pb.ChangeBatch] = []
    with open_client(single.nodes["node-1"].server, single.token) as client:
        stream = client.stream("Changes", pb.ChangesRequest(from_revision=start), timeout=60)
        first = next(stream)
        assert first.progress and first.revision == start - 1
        for batch in stream:
            seen.append(batch)
            if batch.progress and batch.revision >= after:
                break
        stream.close()
    changed = [b for b in seen if not b.progress]
    revisions = [b.revision for b in changed]
    assert revisions == sorted(set(revisions)) and revisions[0] >= start
    assert all(c.mod_revision == b.revision for b in changed for c in b.changes)
    assert not any(c.key.startswith("/jaco/v1/alive/") for b in changed for c in b.changes)
    assert len(changed) == 2, "a deploy and a removal: two transactions, two revisions"
    deploy, remove = changed
    assert any(c.key == "/jaco/v1/deployments/web" and not c.delete for c in deploy.changes)
    assert any(c.key == "/jaco/v1/deployments/web" and c.delete for c in remove.changes)
    assert any(c.key == "/jaco/v1/audit/head" for c in deploy.changes)


def test_a_compacted_start_is_refused_with_its_own_error(single: Cluster) -> None:
    start = _revision(single)
    single.ok("deploy", "web", "--image", "nginx:1")
    now = _revision(single)
    node = single.nodes["node-1"]
    compact = [*node.etcdctl_command(), "compact", str(now)]
    subprocess.run(compact, check=True, capture_output=True)
    with open_client(node.server, single.token) as client:
        stream = client.stream("Changes", pb.ChangesRequest(from_revision=start), timeout=30)
        with pytest.raises(Compacted, match=f"revision {start} is compacted"):
            list(itertools.islice(stream, 10))
    single.ok("audit")  # the server is still serving
