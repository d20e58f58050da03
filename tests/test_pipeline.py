"""The backup-cluster flow against a real cluster, a real SeaweedFS and a real Prefect server.

Nothing is mocked: the flow runs on `prefect_test_harness`, takes backups over TLS gRPC,
encrypts with pyrage, uploads with boto3 to SeaweedFS, and the `age` CLI and GNU tar check
the result independently. Network faults come from a real TCP proxy.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from flows.backup_flow import backup_cluster
from flows.catalog import Catalog
from flows.params import BackupParams
from flows.secrets import S3Settings
from flows.storage import open_store
from infra.localcluster import Cluster, cluster_of
from infra.seaweed import READ_ONLY, SeaweedS3, running_seaweed
from jaco.client.connection import open_client
from jaco.errors import Unavailable
from jaco.v1 import jaco_pb2 as pb
from tests.netfaults import FaultyProxy
from tests.pipeline import BUCKET, age_keygen, flow_logs, params, task_runs
from tests.refusal import refused


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with running_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("keys")
    return {
        "identity": root / "ops.key",
        "recipient": age_keygen(root / "ops.key"),
        "other": root / "other.key",
        "other_recipient": age_keygen(root / "other.key"),
    }


@pytest.fixture
def env(
    monkeypatch: pytest.MonkeyPatch,
    s3: SeaweedS3,
    keys: dict[str, Any],
    cluster3: Cluster,
    prefect: str,
) -> dict[str, Any]:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("JACO_TOKEN", cluster3.token)
    monkeypatch.setenv("JACO_AGE_IDENTITY_FILE", str(keys["identity"]))
    return {"s3": s3, "keys": keys, "cluster": cluster3}


def run_flow(p: BackupParams) -> Any:
    return backup_cluster(p, return_state=True)


def objects(s3: SeaweedS3, prefix: str = "jaco/") -> dict[str, int]:
    """The backups in the bucket (the catalog's records left out)."""
    listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return {
        o["Key"]: o["Size"]
        for o in listing.get("Contents", [])
        if not o["Key"].startswith("jaco/catalog/")
    }


def no_pending_uploads(s3: SeaweedS3) -> bool:
    return not s3.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads")


def test_happy_path(env: dict[str, Any], tmp_path: Path) -> None:
    s3, keys, cluster = env["s3"], env["keys"], env["cluster"]
    cluster.ok("deploy", "pipeline-web", "--image", "nginx:1", "--replicas", "2")
    state = run_flow(
        params(
            cluster,
            keys,
            tmp_path / "local",
            recipients=[keys["recipient"], keys["other_recipient"]],
        )
    )
    assert state.is_completed(), state.message
    result = state.result()
    key = result["key"]
    assert key.startswith(f"jaco/{result['cluster_id']}/")
    assert key.endswith(f"-{result['snapshot_index']}.tar.gz.age")

    head = s3.client().head_object(Bucket=BUCKET, Key=key)
    assert head["Metadata"]["cluster-id"] == result["cluster_id"]
    assert head["Metadata"]["snapshot-index"] == str(result["snapshot_index"])
    assert head["Metadata"]["plaintext-sha256"] == result["plaintext_sha256"]
    assert head["Metadata"]["ciphertext-sha256"] == result["ciphertext_sha256"]
    assert head["ContentLength"] == result["size"]

    downloaded = tmp_path / "dl.tar.gz.age"
    s3.client().download_file(BUCKET, key, str(downloaded))
    local = Path(result["local_copy"])
    assert local.read_bytes() == downloaded.read_bytes()
    assert local.stat().st_mode & 0o777 == 0o600
    # Independent readers: the age CLI (either recipient's identity) and GNU tar.
    for identity in (keys["identity"], keys["other"]):
        plain = tmp_path / f"plain-{identity.name}.tar.gz"
        subprocess.run(
            ["age", "-d", "-i", str(identity), "-o", str(plain), str(downloaded)], check=True
        )
        listing = subprocess.run(
            ["tar", "tzf", str(plain)], capture_output=True, text=True, check=True
        ).stdout.split()
        assert listing == ["snapshot.bin", "meta.json"]
    # No plaintext archive is left behind in the working directory.
    assert list((tmp_path / "local" / ".work").iterdir()) == []
    assert [r["stage"] for r in result["stages"]] == [
        "take-backup",
        "encrypt",
        "upload",
        "local-copy",
        "verify",
        "prune",
    ]
    assert _artifact_texts_without(cluster.token.split(".")[4], "jaco-backup-prod", state)


def _artifact_texts_without(secret: str, key: str, state: Any) -> bool:
    """This run's artifacts under `key` (not another module's under the same key)."""
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[key]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]),
            )
        )
    assert found, f"no artifact {key} of run {run_id}"
    text = json.dumps([str(a.data) for a in found])
    assert "snapshot index" in text
    return secret not in text


def test_s3_outage_is_ridden_out_by_retries(env: dict[str, Any], tmp_path: Path) -> None:
    s3, keys, cluster = env["s3"], env["keys"], env["cluster"]
    before = objects(s3)
    s3.stop()
    restart = threading.Timer(4.0, s3.start)
    restart.start()
    try:
        state = run_flow(params(cluster, keys, tmp_path / "local"))
    finally:
        restart.join()
    assert state.is_completed(), state.message
    key = state.result()["key"]
    assert set(objects(s3)) - set(before) == {key}
    assert no_pending_uploads(s3)
    # Ridden out by retries, as the Prefect API records them (the first S3 step is prepare).
    assert [r.run_count for r in _task_runs(state, "prepare")][0] >= 2


def test_upload_refused_for_good_leaves_no_local_copy_either(
    env: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local copy is written while S3 uploads; when the upload fails for good (here: the
    cluster's own S3 credentials may read but not write), the run fails at once (no retries)
    and takes the copy back."""
    s3, keys, cluster = env["s3"], env["keys"], env["cluster"]
    monkeypatch.setenv("READER_ID", READ_ONLY[0])
    monkeypatch.setenv("READER_SECRET", READ_ONLY[1])
    reader = S3Settings(access_key_id="env:READER_ID", secret_access_key="env:READER_SECRET")
    before = objects(s3)
    state = run_flow(params(cluster, keys, tmp_path / "local", s3=reader))
    assert state.is_failed()
    assert "AccessDenied" in str(state.message) + _failure(state)
    assert objects(s3) == before
    assert [r.run_count for r in _task_runs(state, "upload") if r.state.is_failed()] == [1]
    local = tmp_path / "local"
    copies = [p for p in local.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert copies == [], "a local copy outlived the run"


def run_through(
    env: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proxy: FaultyProxy
) -> Any:
    """One backup run with S3 reached through `proxy` (for the run only), the cluster holding
    ~1.8 MB of incompressible state (three deployments of 600 kB of random bytes; base64
    gzips to 3/4), removed afterwards."""
    cluster = env["cluster"]
    with open_client(cluster.nodes["node-1"].server, cluster.token) as client:
        for i in range(3):
            blob = base64.b64encode(os.urandom(600_000)).decode()
            client.call(
                "Deploy", pb.DeployRequest(name=f"blob{i}", image="x:1", env={"BLOB": blob})
            )
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://{proxy.address}")
    try:
        return run_flow(params(cluster, env["keys"], tmp_path / "local"))
    finally:
        proxy.close()
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", env["s3"].endpoint)
        for i in range(3):
            cluster.ok("rm", f"blob{i}")


def test_connection_cut_mid_upload_leaves_no_truncated_object(
    env: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3 = env["s3"]
    proxy = FaultyProxy(s3.s3_port, cut_upstream_once_after=1_500_000)
    monkeypatch.setenv("JACO_S3_PART_MIB", "1")  # ~1.8 MB of archive: a multipart upload
    state = run_through(env, tmp_path, monkeypatch, proxy)
    assert proxy.cuts == 1
    assert state.is_completed(), state.message
    result = state.result()
    # past the cut: 1.8 MB of archive (base64 gzips to 3/4) and whatever else the store holds
    assert objects(s3)[result["key"]] == result["size"] > 1_500_000
    assert no_pending_uploads(s3)


def test_connection_cut_mid_verify_resumes_and_the_run_passes(
    env: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verify reads the object as it downloads, straight into the decrypter: S3's reply cut
    halfway resumes where it stopped (a Range GET of the same object), the task runs once,
    and the backup is verified (not called damaged and deleted)."""
    s3 = env["s3"]
    # Only replies after a request for the backup itself count (its PUT, then its GET); the
    # ~1.8 MB object is cut midway.
    proxy = FaultyProxy(s3.s3_port, cut_once_after=900_000, asked_for=b".tar.gz.age HTTP/1.1")
    monkeypatch.setenv("JACO_RETRY_BACKOFF", "0.2")
    state = run_through(env, tmp_path, monkeypatch, proxy)
    assert proxy.cuts == 1
    assert state.is_completed(), state.message
    result = state.result()
    assert objects(s3)[result["key"]] == result["size"] > 900_000
    assert [r.run_count for r in task_runs(state, "verify")] == [1]


def test_s3_cutting_every_reply_fails_verify_as_the_stores_failure_not_damage(
    env: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every reply cut after 300 kB: verify's resumes run out, and the run fails naming the
    store's failure (retryable, retried), not a damaged backup. Nothing showed the backup
    damaged, so it is not deleted: both copies stay, recorded unverified (nothing counts it
    as a good backup), and the log says so."""
    s3 = env["s3"]
    before = objects(s3)
    # ~1.8 MB of archive: six replies' worth, more than the resumes
    proxy = FaultyProxy(s3.s3_port, cut_after=300_000)
    monkeypatch.setenv("JACO_TASK_RETRIES", "1")
    monkeypatch.setenv("JACO_RETRY_BACKOFF", "0.2")
    state = run_through(env, tmp_path, monkeypatch, proxy)
    assert state.is_failed()
    failure = str(state.message)
    assert "StorageError: S3 download of " in failure, failure
    assert "is damaged" not in failure
    assert [r.run_count for r in task_runs(state, "verify")] == [2]
    _kept_unverified(state, s3, before, tmp_path)


def _kept_unverified(state: Any, s3: SeaweedS3, before: dict[str, int], tmp_path: Path) -> None:
    """The run's one new backup is in S3 and the local directory, recorded unverified in both
    catalogs, and the run's log says it was kept."""
    [key] = set(objects(s3)) - set(before)
    assert [p.relative_to(tmp_path / "local").as_posix() for p in
            (tmp_path / "local").rglob("*.age")] == [key]  # fmt: skip
    for url in (f"s3://{BUCKET}", f"file://{tmp_path / 'local'}"):
        record = Catalog(open_store(url), "jaco", "prod").backup(key)
        assert record is not None and record.verified is None, url
    assert f"{key} is kept, recorded unverified" in flow_logs(state)


def test_an_unreadable_verify_identity_still_takes_the_backup_unverified(
    env: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The verify identity cannot be read (its file is missing): the check against the
    recipients cannot decide, so the backup is still taken and stored; verify says why it
    could not check it, and it is kept, recorded unverified (a backup nothing showed damaged)."""
    s3 = env["s3"]
    before = objects(s3)
    monkeypatch.setenv("JACO_AGE_IDENTITY_FILE", str(tmp_path / "missing.key"))
    state = run_flow(params(env["cluster"], env["keys"], tmp_path / "local"))
    assert state.is_failed()
    failure = str(state.message)
    assert "the verify identity: cannot read" in failure and "missing.key" in failure, failure
    _kept_unverified(state, s3, before, tmp_path)


def test_a_cut_read_resumes_only_from_the_same_object(
    env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read cut midway resumes with a Range GET of the same object (its ETag): were the
    object rewritten meanwhile, the rest of another object is not spliced onto the first
    one's start; the download ends as the store's failure, short of the object."""
    s3 = env["s3"]
    key = "resume/rewritten"
    s3.client().put_object(Bucket=BUCKET, Key=key, Body=b"a" * 4_000_000)
    proxy = FaultyProxy(s3.s3_port, cut_once_after=2_500_000)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://{proxy.address}")
    try:
        download = open_store(f"s3://{BUCKET}").open(key)  # the first reply has begun
        # Rewritten before a byte is read, so before any resume: the cut may come while the
        # first MiB is read (an RST drops what the socket held), and the test still holds.
        s3.client().put_object(Bucket=BUCKET, Key=key, Body=b"b" * 4_000_000)
        read = b"".join(download)
    finally:
        proxy.close()
        download.close()
    assert download.error is not None
    assert f"S3 download of {key}" in str(download.error), download.error
    assert "PreconditionFailed" in str(download.error), download.error  # the ETag refused
    assert b"b" not in read
    assert download.received == len(read) < 4_000_000


def test_leader_dying_mid_backup_costs_one_server_not_the_run(
    env: dict[str, Any], tmp_path: Path
) -> None:
    keys, cluster = env["keys"], env["cluster"]
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    # The leader's connection dies after 20 kB of the stream: what a crash looks like.
    proxy = FaultyProxy(leader.api_port, cut_after=20_000)
    try:
        state = run_flow(
            params(cluster, keys, tmp_path / "local", servers=[proxy.address, follower.server])
        )
    finally:
        proxy.close()
    assert proxy.cuts >= 1
    assert state.is_completed(), state.message
    runs = _task_runs(state, "take-backup")
    assert [r.run_count for r in runs] == [1]  # the same attempt moved to the next server


def test_leader_going_silent_is_detected_by_keepalive(env: dict[str, Any], tmp_path: Path) -> None:
    keys, cluster = env["keys"], env["cluster"]
    leader = cluster.leader()
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    # After 20 kB the leader answers nothing and closes nothing: a host that lost power.
    proxy = FaultyProxy(leader.api_port)
    proxy.blackhole_after = 20_000
    servers = [proxy.address, follower.server]
    try:  # a deadline of 120 s: were pings not sent, it would end the call, and the run goes on
        state = run_flow(
            params(cluster, keys, tmp_path / "local", servers=servers, timeout_seconds=120)
        )
    finally:
        proxy.close()
    assert proxy.blackholed.is_set()
    assert state.is_completed(), state.message
    # a ping unanswered (30 s), not the call's deadline, ended the silent call; the run says so
    logs = flow_logs(state)
    assert re.search(rf"server {re.escape(proxy.address)} unavailable \(.*ping timeout", logs), logs
    assert [r.run_count for r in _task_runs(state, "take-backup")] == [1]


def test_a_server_gone_quiet_is_given_up_by_keepalive_not_by_the_backups_deadline(
    env: dict[str, Any], tmp_path: Path
) -> None:
    """A server gone quiet mid-stream (no FIN, no RST): a ping unanswered for 30 s ends the call
    about 40 s in, before the backup's deadline, here 60 s. Left to gRPC's default ping
    timeout, a minute, the deadline ends it first."""
    cluster: Cluster = env["cluster"]
    proxy = FaultyProxy(cluster.leader().api_port)
    proxy.blackhole_after = 20_000
    out = tmp_path / "quiet.tar.gz"
    try:
        result = cluster.jaco("backup", "--timeout", "60", "-o", str(out), server=proxy.address)
    finally:
        proxy.close()
    assert proxy.blackholed.is_set()
    refused(result, Unavailable.exit_code, r"^error: .*\(ping timeout\)$")
    assert list(tmp_path.iterdir()) == [], "a backup that failed left a file"


def test_leader_node_killed(
    env: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = env["keys"]
    with cluster_of(tmp_path / "c", 3) as cluster:
        monkeypatch.setenv("JACO_TOKEN", cluster.token)
        leader = cluster.leader()
        leader.stop(9)
        servers = [leader.server] + [n.server for n in cluster.nodes.values() if n is not leader]
        state = run_flow(
            params(cluster, keys, tmp_path / "local", cluster="killed", servers=servers)
        )
        assert state.is_completed(), state.message
        assert state.result()["snapshot_index"] > 0


def test_wrong_verify_identity_is_refused_before_anything_is_taken(
    env: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's verify identity is none of the cluster's recipients (a configuration
    error): verify could not open the backup, which it would delete as undecryptable, run
    after run. The run fails before a backup is taken, naming the identity's public key (not
    the secret), and nothing is stored: no object, no local copy, no catalog record."""
    s3, keys = env["s3"], env["keys"]
    monkeypatch.setenv("JACO_AGE_IDENTITY_FILE", str(keys["other"]))  # not a recipient
    before = objects(s3)
    state = run_flow(params(env["cluster"], keys, tmp_path / "local", cluster="misconfigured"))
    assert state.is_failed()
    failure = str(state.message) + _failure(state)
    assert f"the verify identity (public key {keys['other_recipient']}) is not one of " in (
        failure
    ), failure
    assert "nothing was taken" in failure and "AGE-SECRET-KEY" not in failure
    assert _task_runs(state, "take-backup") == []
    assert objects(s3) == before
    assert not list((tmp_path / "local").rglob("*.age"))
    assert Catalog(open_store(f"s3://{BUCKET}"), "jaco", "misconfigured").backups() == []
    assert "AGE-SECRET-KEY" not in flow_logs(state)


def test_bad_token_fails_fast_and_alerts(
    env: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fast: a token the cluster refuses is not retried (the take-backup task ran once)."""
    cluster = env["cluster"]
    forged = cluster.token[: cluster.token.rindex(".") + 1] + "C" * 43
    monkeypatch.setenv("JACO_TOKEN", forged)
    received: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("JACO_ALERT_WEBHOOK", f"http://127.0.0.1:{server.server_port}/hook")
    try:
        state = run_flow(params(cluster, env["keys"], tmp_path / "local"))
    finally:
        server.shutdown()
    assert state.is_failed()
    assert "not valid for this cluster" in str(state.message) + _failure(state)
    assert [r.run_count for r in _task_runs(state, "take-backup")] == [1]
    assert len(received) == 1 and received[0]["flow"] == "backup-cluster"
    assert forged.split(".")[4] not in json.dumps(received)


def _all_task_runs(state: Any) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return list(
            client.read_task_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
                )
            )
        )


def _task_runs(state: Any, name: str) -> list[Any]:
    return [r for r in _all_task_runs(state) if r.name.startswith(name)]


def _failure(state: Any) -> str:
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001
        return str(exc)
    return ""


def test_command_line_entry_prints_a_summary(env: dict[str, Any], tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL

    cluster, keys = env["cluster"], env["keys"]
    child_env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    server = cluster.nodes["node-2"].server
    args = [
        "jaco-backup",
        "--cluster",
        "cli",
        "--server",
        server,
        "--bucket",
        BUCKET,
        "--recipient",
        keys["recipient"],
        "--local-dir",
        str(tmp_path / "local"),
    ]
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(
        [str(bin_dir / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Backed up cli at index" in done.stdout and "encrypted" in done.stdout
    assert "verify" in done.stdout
    bad = subprocess.run(
        [str(bin_dir / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        env={**child_env, "JACO_TOKEN": "nope"},
        timeout=300,
    )
    assert bad.returncode == 1 and "backup failed" in bad.stderr
    assert "the token is malformed" in bad.stderr
