"""`kill -9` of a pipeline run at its worst moments: the next run is not blocked for longer
than the lock's lease, says whom it waited for, sweeps what the dead run left and completes;
no plaintext archive, and no token, is left on disk."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.backup_flow import backup_cluster
from flows.drill_flow import drill_restore
from flows.locking import LEASE_SECONDS
from flows.params import DrillParams
from flows.sandbox import docker_available
from infra.localcluster import Cluster, cluster_of, wait_for
from infra.seaweed import running_seaweed
from jaco.client.connection import open_client
from jaco.v1 import jaco_pb2 as pb
from tests.netfaults import FaultyProxy
from tests.pipeline import BUCKET, age_keygen, params
from tests.processes import own_agents, own_drill_containers


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, prefect: str) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("crash")
    keys = {"identity": root / "ops.key", "recipient": age_keygen(root / "ops.key")}
    with (
        cluster_of(root / "cluster", 1) as cluster,
        running_seaweed(root / "s3") as s3,
        pytest.MonkeyPatch.context() as mp,
    ):
        s3.create_bucket(BUCKET)
        for name, value in s3.env().items():
            mp.setenv(name, value)
        mp.setenv("JACO_TOKEN", cluster.token)
        mp.setenv("JACO_AGE_IDENTITY_FILE", str(keys["identity"]))
        mp.setenv("JACO_S3_PART_MIB", "5")  # a multipart upload, parts S3 accepts
        with open_client(cluster.nodes["node-1"].server, cluster.token) as client:
            for i in range(6):  # ~7 MiB of incompressible state: two parts, and time to kill
                blob = base64.b64encode(os.urandom(900_000)).decode()
                client.call(
                    "Deploy", pb.DeployRequest(name=f"blob{i}", image="x:1", env={"B": blob})
                )
        yield {"root": root, "keys": keys, "cluster": cluster, "s3": s3}


def _child_env(**extra: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    return {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value()), **extra}


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _holding(needle: bytes, root: Path) -> list[Path]:
    return [p for p in _files(root) if needle in p.read_bytes()]


def test_backup_killed_mid_upload_blocks_the_next_for_one_lease_at_most(
    env: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cluster: Cluster = env["cluster"]
    s3 = env["s3"]
    local = tmp_path / "local"
    slow = FaultyProxy(s3.s3_port, delay_per_chunk=0.5)  # S3 through a slow link
    p = params(cluster, env["keys"], local)
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "tests.run_flow", "backup", p.model_dump_json()],
            env=_child_env(AWS_ENDPOINT_URL_S3=f"http://{slow.address}"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    client = s3.client()
    try:
        wait_for(
            lambda: client.list_multipart_uploads(Bucket=BUCKET).get("Uploads"),
            180,
            f"the upload to start; {log}",
        )
        run.kill()  # kill -9, mid-upload, holding the cluster's lock
        run.wait()
    finally:
        slow.close()
    killed_at = time.monotonic()
    assert client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")  # what it left
    left = [p for p in _files(local / ".work") if not p.name.startswith(".")]
    assert left, "the dead run's work files"
    assert not [p for p in left if p.name.endswith(".tar.gz")], "plaintext outlived encryption"

    state = backup_cluster(p, return_state=True)
    waited = time.monotonic() - killed_at
    assert state.is_completed(), state.message
    assert waited < LEASE_SECONDS + 15 + 60  # lease, the server's sweep, the backup itself
    assert "waiting for the backup of prod started at" in caplog.text
    swept = state.result()["swept"]
    assert any("unfinished upload" in s for s in swept), swept
    assert any("left by a dead run" in s for s in swept), swept
    assert not client.list_multipart_uploads(Bucket=BUCKET).get("Uploads")
    assert [p for p in _files(local / ".work") if not p.name.startswith(".")] == []
    assert not list(local.rglob("*.tar.gz")), "a plaintext archive is on disk"
    assert not _holding(cluster.token.encode(), tmp_path)


def test_drill_killed_mid_restore_leaves_no_secret_and_the_next_one_sweeps(
    env: dict[str, Any], tmp_path: Path
) -> None:
    cluster: Cluster = env["cluster"]
    state = backup_cluster(params(cluster, env["keys"], tmp_path / "local"), return_state=True)
    assert state.is_completed(), state.message
    work = tmp_path / "drills"
    p = DrillParams(cluster="prod", bucket=BUCKET, workdir=str(work), rejoin=False)
    log = tmp_path / "drill.log"
    with open(log, "wb") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "tests.run_flow", "drill", p.model_dump_json()],
            env=_child_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    docker = docker_available() is None
    wait_for(lambda: _sandboxes(run.pid, docker), 180, f"the drill agent to start; {log}")
    time.sleep(1.0)  # decrypting / restoring inside the sandbox
    run.kill()
    run.wait()
    wait_for(lambda: not _sandboxes(run.pid, docker), 30, "the sandbox to go with its parent")
    assert _files(work), "the dead drill's download"
    assert not _holding(cluster.token.encode(), work), "the token reached the disk"
    assert not [f for f in _files(work) if f.name == "backup.tar.gz"], "plaintext on disk"
    again = drill_restore(p, return_state=True)
    assert again.is_completed(), again.message
    assert any("left by a dead run" in s for s in again.result()["swept"])
    assert _files(work) == []


def _sandboxes(run: int, docker: bool) -> list[str]:
    """The drill's sandbox, running: an agent of this test's (bubblewrap), or a container the
    run `run` started (docker, which `auto` chooses where an engine answers). Another test's
    drills, running beside this one, are not counted."""
    agents = [str(pid) for pid in own_agents()]
    return agents + (own_drill_containers(run, running=True) if docker else [])
