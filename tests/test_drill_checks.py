"""Each drill check made to fail by a real defect, through the real pipeline and sandbox.

The defects are put into a real cluster's store the way a bug would leave them (written
straight into its etcd with the node's own client certificate), a real backup of it is taken
through the pipeline, and the live store is put back as it was. The drill of that backup (in
bubblewrap, pinned by key, each test on a catalog prefix of its own) must fail, name exactly
the check that caught the defect, and record it in the catalog and the drills' history table.

"ca fingerprint", "state digest" and the restored node's side of "cluster id" cannot be reached
by a defect in a backup: `jaco restore` refuses an archive whose CA, digest, counts or cluster
differ from its meta.json before the drill can start a node (tests/test_restore_bad_input.py).
They are the drill's second line, proven here on their own against real nodes.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.backup_flow import backup_cluster
from flows.catalog import Catalog
from flows.drill_flow import drill_restore
from flows.params import DrillParams
from flows.storage import open_store
from infra.localcluster import Cluster, Node, cluster_of
from jaco.archive.meta import BackupMeta
from jaco.client import history
from jaco.client.connection import open_client
from jaco.drill import checks
from jaco.errors import InvalidArgument, JacoError
from jaco.model.audit import event_hash
from jaco.model.digest import StateDigest, StateDigestV2
from jaco.model.keys import K_HEAD, P_DEPLOYMENTS, P_REPLICAS, encode, event_key
from jaco.v1 import jaco_pb2 as pb
from tests.archives import members
from tests.pipeline import BUCKET, latest_checks, latest_table, params


class Etcd:
    """A node's etcd member, reached as a bug would: below jaco, with the node's own cert."""

    def __init__(self, node: Node) -> None:
        self.base = node.etcdctl_command()

    def _run(self, *args: str, value: bytes | None = None) -> bytes:
        done = subprocess.run(
            [*self.base, *args], input=value, capture_output=True, timeout=30, check=False
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def get(self, key: str) -> bytes:
        value = self._run("get", key, "--print-value-only").rstrip(b"\n")
        assert value, f"{key} is not in the store"
        return value

    def put(self, key: str, value: bytes) -> None:
        self._run("put", key, value=value)

    def delete(self, key: str) -> None:
        assert self._run("del", key).strip() == b"1"


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Another cluster: its own id, CA and tokens."""
    with cluster_of(tmp_path_factory.mktemp("foreign"), 1) as cluster:
        cluster.ok("deploy", "api", "--image", "api:2", "--replicas", "2")
        yield cluster


def backup(source: Cluster, keys: dict[str, Any], root: Path, prefix: str) -> str:
    """A backup of `source` through the pipeline, into the catalog at `prefix`; its key."""
    state = backup_cluster(
        params(source, keys, root / f"local-{prefix}", prefix=prefix), return_state=True
    )
    assert state.is_completed(), state.message
    return str(state.result()["key"])


def drill(prefix: str, key: str, workdir: Path) -> Any:
    values = {"cluster": "prod", "bucket": BUCKET, "prefix": prefix, "key": key}
    return drill_restore(
        DrillParams(**values, workdir=str(workdir), driver="bwrap"), return_state=True
    )


def assert_caught(state: Any, prefix: str, key: str, failed: list[str], workdir: Path) -> None:
    """The drill failed, naming exactly `failed`; the catalog and the history table say so."""
    assert state.is_failed(), state.message
    message = str(state.message)
    assert f"DrillFailed: drill check(s) failed: {failed[0]}: " in message, message
    for name in failed:
        assert f"{name}: " in message, message
    assert list(workdir.iterdir()) == []
    catalog = Catalog(open_store(f"s3://{BUCKET}"), prefix, "prod")
    recorded = catalog.backup(key)
    assert recorded is not None and recorded.last_drill is not None
    assert not recorded.last_drill.passed
    assert recorded.last_drill.failed_checks == failed
    rows = latest_table("jaco-drills-prod")
    run_id = str(state.state_details.flow_run_id)
    mine = [r for r in rows if run_id in r["run"]]
    assert mine and mine[0]["result"] == "FAILED", rows[:3]
    assert all(name in mine[0]["failed"] for name in failed), mine[0]


def test_duplicated_replica_ips_fail_ip_uniqueness(stored1: dict[str, Any], tmp_path: Path) -> None:
    cluster: Cluster = stored1["cluster"]
    cluster.ok("deploy", "dup", "--image", "x:1", "--replicas", "2")
    etcd = Etcd(cluster.nodes["node-1"])
    first, second = f"{P_REPLICAS}dup/0000", f"{P_REPLICAS}dup/0001"
    original = etcd.get(second)
    replica = json.loads(original)
    replica["ip"] = json.loads(etcd.get(first))["ip"]
    etcd.put(second, json.dumps(replica, sort_keys=True).encode())
    try:
        key = backup(cluster, stored1["keys"], tmp_path, "defect-ips")
    finally:
        etcd.put(second, original)
    state = drill("defect-ips", key, tmp_path / "work")
    assert_caught(state, "defect-ips", key, ["ip uniqueness"], tmp_path / "work")
    assert "replica IPs" in str(state.message)


def test_a_missing_deployment_fails_deployments(stored1: dict[str, Any], tmp_path: Path) -> None:
    cluster: Cluster = stored1["cluster"]
    cluster.ok("deploy", "gone", "--image", "x:1", "--replicas", "1")
    etcd = Etcd(cluster.nodes["node-1"])
    record = P_DEPLOYMENTS + "gone"
    original = etcd.get(record)
    etcd.delete(record)  # its replica stays behind, orphaned
    try:
        key = backup(cluster, stored1["keys"], tmp_path, "defect-deployments")
    finally:
        etcd.put(record, original)
    state = drill("defect-deployments", key, tmp_path / "work")
    assert_caught(state, "defect-deployments", key, ["deployments"], tmp_path / "work")


@pytest.mark.parametrize("damage", ["edited", "cut"])
def test_a_broken_or_cut_audit_chain_fails_audit_history(
    stored1: dict[str, Any], tmp_path: Path, damage: str
) -> None:
    cluster: Cluster = stored1["cluster"]
    etcd = Etcd(cluster.nodes["node-1"])
    event = event_key(2)
    original = etcd.get(event)
    if damage == "edited":  # an event changed after the fact, its hash left as it was
        edited = json.loads(original)
        edited["actor"] = "someone-else"
        etcd.put(event, json.dumps(edited, sort_keys=True).encode())
    else:  # an event dropped from the log
        etcd.delete(event)
    prefix = f"defect-audit-{damage}"
    try:
        key = backup(cluster, stored1["keys"], tmp_path, prefix)
    finally:
        etcd.put(event, original)
    state = drill(prefix, key, tmp_path / "work")
    # The chain no longer extends the backup's own head either.
    assert_caught(state, prefix, key, ["audit history", "audit anchors"], tmp_path / "work")
    assert "chain BROKEN at" in str(state.message)


def _rewrite_history(etcd: Etcd, from_seq: int) -> None:
    """History rewritten from event `from_seq` on and the chain recomputed over it: the log
    verifies on its own; only a head recorded elsewhere before can tell."""
    head = json.loads(etcd.get(K_HEAD))
    prev = json.loads(etcd.get(event_key(from_seq - 1)))["hash"]
    for seq in range(from_seq, head["seq"] + 1):
        event = json.loads(etcd.get(event_key(seq)))
        if seq == from_seq:
            event["actor"] = "someone-else"
        event["prev_hash"] = prev
        event["hash"] = prev = event_hash(event)
        etcd.put(event_key(seq), json.dumps(event, sort_keys=True).encode())
    etcd.put(K_HEAD, encode({"seq": head["seq"], "hash": prev}))


def test_history_rewritten_after_an_earlier_backup_fails_audit_anchors(
    stored1: dict[str, Any], foreign: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On the other cluster: its log stays rewritten (no test checks its chain afterwards).
    monkeypatch.setenv("JACO_TOKEN", foreign.token)
    prefix = "defect-anchors"
    backup(foreign, stored1["keys"], tmp_path, prefix)  # its audit head is recorded
    _rewrite_history(Etcd(foreign.nodes["node-1"]), 2)
    assert "Audit chain intact" in foreign.ok("audit", "verify").out
    key = backup(foreign, stored1["keys"], tmp_path, prefix)
    state = drill(prefix, key, tmp_path / "work")
    assert_caught(state, prefix, key, ["audit anchors"], tmp_path / "work")
    assert "1 of 2 anchors checked" in str(state.message)


def test_a_revoked_old_token_fails_old_token_authenticates(
    stored1: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster: Cluster = stored1["cluster"]
    old = cluster.ok("token", "create", "--role", "viewer").out.strip().splitlines()[-1]
    cluster.ok("token", "revoke", old.split(".")[3])
    key = backup(cluster, stored1["keys"], tmp_path, "defect-revoked")
    monkeypatch.setenv("JACO_TOKEN", old)
    state = drill("defect-revoked", key, tmp_path / "work")
    assert_caught(state, "defect-revoked", key, ["old token authenticates"], tmp_path / "work")
    assert "has been revoked" in str(state.message)


def test_a_backup_recorded_with_another_plaintext_fails_backup_is_the_one_recorded(
    stored1: dict[str, Any], tmp_path: Path
) -> None:
    """The stored object is the one recorded (its ciphertext SHA-256 matches), but the
    record names another plaintext (an edited catalog, an encrypt step that hashed the wrong
    file): the agent's own hash of what it decrypted refuses it. The restore it was decrypted
    into counts for nothing: it is not reported, no node is started, no other check runs."""
    key = backup(stored1["cluster"], stored1["keys"], tmp_path, "defect-plain")
    catalog = Catalog(open_store(f"s3://{BUCKET}"), "defect-plain", "prod")
    record = catalog.backup(key)
    assert record is not None
    catalog.record_backup(record.model_copy(update={"plaintext_sha256": "0" * 64}))
    state = drill("defect-plain", key, tmp_path / "work")
    assert_caught(state, "defect-plain", key, ["backup is the one recorded"], tmp_path / "work")
    assert latest_checks("prod") == ["backup is the one recorded: **FAIL**"]
    assert "it decrypts to another archive than the one recorded" in str(state.message)


def test_another_clusters_backup_fails_cluster_id(
    stored1: dict[str, Any], foreign: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another cluster's real backup, recorded in prod's catalog as prod's (object metadata
    and catalog record say so: the pipeline's own checks would refuse it earlier). Only
    meta.json inside the ciphertext tells: the drill stops before starting anything."""
    with monkeypatch.context() as env:
        env.setenv("JACO_TOKEN", foreign.token)
        theirs = backup(foreign, stored1["keys"], tmp_path, "defect-cid-source")
    source = Catalog(open_store(f"s3://{BUCKET}"), "defect-cid-source", "prod").backup(theirs)
    prod_id = stored1["cluster"].ok("cluster", "status", "--json").json()["cluster_id"]
    assert source is not None and source.cluster_id != prod_id
    key = "defect-cid/" + theirs.split("/", 1)[1]
    s3 = stored1["s3"].client()
    metadata = s3.head_object(Bucket=BUCKET, Key=theirs)["Metadata"]
    s3.copy_object(
        Bucket=BUCKET,
        Key=key,
        CopySource={"Bucket": BUCKET, "Key": theirs},
        Metadata={**metadata, "cluster-id": prod_id},
        MetadataDirective="REPLACE",
    )
    catalog = Catalog(open_store(f"s3://{BUCKET}"), "defect-cid", "prod")
    catalog.pin(prod_id, None)
    catalog.record_backup(source.model_copy(update={"key": key, "cluster_id": prod_id}))
    state = drill("defect-cid", key, tmp_path / "work")
    assert_caught(state, "defect-cid", key, ["cluster id"], tmp_path / "work")
    assert f"names cluster {source.cluster_id}" in str(state.message)


def test_checks_behind_restore_refuse_what_is_not_the_backups(
    stored1: dict[str, Any], foreign: Cluster, tmp_path: Path
) -> None:
    cluster: Cluster = stored1["cluster"]
    archive = tmp_path / "prod.tar.gz"
    cluster.ok("backup", "--output", str(archive))
    raw, _ = members(archive)
    meta = BackupMeta.model_validate(raw, strict=False)
    theirs = foreign.ok("cluster", "status", "--json").json()["ca_fingerprint"]
    with open_client(cluster.nodes["node-1"].server, cluster.token) as client:
        status = client.call("ClusterStatus", pb.ClusterStatusRequest())
        assert checks.ca_fingerprint(meta, cluster.token, status)[0]  # the real one passes
        assert checks.state_digest(meta, client)[0]
        # A restored node of another CA; a meta.json naming another CA.
        with open_client(foreign.nodes["node-1"].server, foreign.token) as other:
            assert not checks.ca_fingerprint(
                meta, cluster.token, other.call("ClusterStatus", pb.ClusterStatusRequest())
            )[0]
        lying_ca = meta.model_copy(update={"ca_fingerprint": theirs})
        assert not checks.ca_fingerprint(lying_ca, cluster.token, status)[0]
        # A restored node of another cluster; a drill of another cluster.
        mine = checks.Expect(cluster_id=meta.cluster_id)
        with open_client(foreign.nodes["node-1"].server, foreign.token) as other:
            assert not checks.cluster_id(meta, mine, other.call("Status", pb.StatusRequest()))[0]
        own = client.call("Status", pb.StatusRequest())
        assert checks.cluster_id(meta, mine, own)[0]
        assert not checks.cluster_id(meta, checks.Expect(cluster_id="f" * 16), own)[0]
        # A running store whose digest, or whose counts, are not the backup's.
        other_digest = meta.model_copy(update={"state_digest": "0" * 64})
        ok, detail = checks.state_digest(other_digest, client)
        assert not ok and f"backup {'0' * 16}" in detail
        other_counts = meta.model_copy(
            update={"counts": {**meta.counts, "deployments": meta.counts["deployments"] + 1}}
        )
        assert not checks.state_digest(other_counts, client)[0]


def test_checks_that_read_the_whole_store_set_their_own_deadline(stored1: dict[str, Any]) -> None:
    """The state digest and the audit checks read every record on the server: about 15 s at
    10⁶ keys, where a call's default deadline is 30 s (the drill of a 10⁶-key backup failed
    "state digest: the server did not answer in time"). Each names its own deadline: with a
    client whose default is a microsecond, they still run and pass."""
    cluster: Cluster = stored1["cluster"]
    archive = cluster.root / "deadline.tar.gz"
    cluster.ok("backup", "--output", str(archive))
    raw, _ = members(archive)
    archive.unlink()
    meta = BackupMeta.model_validate(raw, strict=False)
    expect = checks.Expect(cluster_id=meta.cluster_id, snapshot_index=meta.snapshot_index)
    with open_client(cluster.nodes["node-1"].server, cluster.token, timeout=1e-6) as client:
        asked: list[str] = []
        call, stream = client.call, client.stream

        def counted(method: str, *args: Any, **kw: Any) -> Any:
            asked.append(method)
            return call(method, *args, **kw)

        def counted_stream(method: str, *args: Any, **kw: Any) -> Any:
            asked.append(method)
            return stream(method, *args, **kw)

        client.call = counted  # type: ignore[method-assign]
        client.stream = counted_stream  # type: ignore[method-assign]
        assert checks.state_digest(meta, client)[0]
        chain = checks.AuditChain(meta, expect, client)
        # a live cluster, never restored: no RESTORE_COMPLETED, but the chain was read whole
        assert "chain intact" in chain.history()[1]
        assert chain.anchors_hold()[0]
        at = history.digest_at(client, meta.snapshot_index, meta.digest_version)
        assert at == meta.state_digest
    # The two audit checks share one walk of the log (12 s at 10⁶ keys): one verification,
    # which also finds the RESTORE_COMPLETED events, and no listing.
    assert asked == ["StateDigest", "VerifyAudit", "StateDigest"], asked


def _records_at(node: Node, revision: int) -> list[tuple[bytes, bytes]]:
    """Every record under /jaco/v1/ at `revision`, read by etcdctl (not by jaco), key order."""
    command = [*node.etcdctl_command(), "get", "--prefix", "/jaco/v1/", f"--rev={revision}"]
    out = subprocess.run([*command, "-w", "json"], check=True, capture_output=True).stdout
    kvs = json.loads(out).get("kvs", [])
    records = [(base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", ""))) for kv in kvs]
    return sorted(records)


def test_state_digest_versions_through_the_api(stored1: dict[str, Any]) -> None:
    """The StateDigest call computes the version asked for (jaco/model/digest.py), says which
    it computed, and refuses one it does not know; a client asking for version 2 refuses an
    answer that does not say 2 (an older jacod's: it knows only 1 and leaves the field 0).
    Each digest is held to its definition over etcd's own records, read by etcdctl."""
    cluster: Cluster = stored1["cluster"]
    node = cluster.nodes["node-1"]
    with open_client(node.server, cluster.token) as client:
        revision = int(client.call("StateDigest", pb.StateDigestRequest()).revision)
        records = _records_at(node, revision)
        one, two = StateDigest(), StateDigestV2()
        for key, value in records:
            one.add(key, value)
            two.add(key, value)
        # A request without a version (every client before versions) is version 1.
        plain = client.call("StateDigest", pb.StateDigestRequest(revision=revision))
        assert plain.digest_version == 1
        assert (dict(plain.counts), plain.state_digest) == one.result()
        v2 = history.state_at(client, revision, 2)
        assert v2.digest_version == 2 and v2.revision == revision
        assert (dict(v2.counts), v2.state_digest) == two.result()
        assert v2.state_digest != plain.state_digest and sum(v2.counts.values()) > 10
        assert history.digest_at(client, revision, 1) == plain.state_digest
        with pytest.raises(InvalidArgument) as refused:
            client.call("StateDigest", pb.StateDigestRequest(revision=revision, digest_version=3))
        assert str(refused.value) == (
            "state digest version 3 is not known to this jaco (it knows 1, 2)"
        )
        # An older jacod's answer: the field left 0, whatever was asked.
        call = client.call

        def older(method: str, request: Any, **kw: Any) -> Any:
            answer = call(method, request, **kw)
            answer.ClearField("digest_version")
            return answer

        client.call = older  # type: ignore[method-assign]
        assert history.digest_at(client, revision, 1) == plain.state_digest
        with pytest.raises(JacoError) as older_refused:
            history.state_at(client, revision, 2)
        assert str(older_refused.value) == (
            "the cluster's jacod computed state digest version 1, not 2: "
            "it is older than this jaco; upgrade it"
        )
