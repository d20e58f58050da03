"""Continuous backup and point-in-time restore, end to end, nothing mocked.

A real 3-node cluster under a steady write load; `jaco pipeline stream` as a real process
writing age-encrypted segments to a real SeaweedFS and the local copy; the leader killed, the
stream `kill -9`ed and started again, S3 stopped and started. Then `jaco restore --segments`
to random revisions: the restored store's digest, read from its etcd database file alone, is
the one the live cluster had at that revision; and the chain has no gap and no overlap.
"""

from __future__ import annotations

import random
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.catalog import Catalog, SegmentRecord
from flows.storage import open_store
from infra.localcluster import JACO, Cluster, wait_for
from infra.ports import free_port
from jaco.archive.snapshot_file import read_snapshot_state
from jaco.client.connection import open_client
from jaco.errors import JacoError
from jaco.v1 import jaco_pb2 as pb
from tests.pipeline import BUCKET


class Load:
    """A steady stream of writes (deploy, scale, remove) through any server that answers."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.stop = threading.Event()
        self.writes = 0
        self.last_revision = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _call(self, method: str, request: Any) -> None:
        for node in list(self.cluster.nodes.values()):
            try:
                with open_client(node.server, self.cluster.token, timeout=10) as client:
                    client.call(method, request)
                    self.last_revision = client.call(
                        "StateDigest", pb.StateDigestRequest()
                    ).revision
                self.writes += 1
                return
            except JacoError:
                continue

    def _run(self) -> None:
        i = 0
        while not self.stop.is_set():
            name = f"load{i % 7}"
            self._call("Deploy", pb.DeployRequest(name=name, image=f"x:{i}", replicas=1))
            self._call("Scale", pb.ScaleRequest(name=name, replicas=1 + i % 3))
            if i % 3 == 2:
                self._call("RemoveDeployment", pb.RemoveDeploymentRequest(name=name))
            i += 1

    def wait_writes(self, more: int) -> None:
        target = self.writes + more
        wait_for(lambda: self.writes >= target, timeout=180, what=f"{more} more writes")


class StreamProcess:
    def __init__(self, root: Path, config: Path) -> None:
        self.root, self.config = root, config
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.root / "stream.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [JACO, "pipeline", "stream", "--config", str(self.config), "--cluster", "prod"]
            + ["--segment-seconds", "1"],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None:
            self.process.send_signal(sig)
            self.process.wait(60)
            self.process = None

    def log(self) -> str:
        return (self.root / "stream.log").read_text(errors="replace")


def site_config(root: Path, stored: dict[str, Any]) -> Path:
    cluster: Cluster = stored["cluster"]
    servers = ", ".join(f'"{n.server}"' for n in cluster.nodes.values())
    path = root / "clusters.toml"
    path.write_text(
        f"""[clusters.prod]
servers = [{servers}]
bucket = "{BUCKET}"
prefix = "jaco"
recipients = ["{stored["keys"]["recipient"]}"]
local_dir = "{stored["root"] / "local"}"
"""
    )
    return path


@pytest.fixture(scope="module")
def streamed(stored: dict[str, Any]) -> Iterator[dict[str, Any]]:
    root: Path = stored["root"]
    catalog = Catalog(open_store(f"s3://{BUCKET}"), "jaco", "prod")
    base = catalog.backups()[0]
    stream = StreamProcess(root, site_config(root, stored))
    yield {**stored, "catalog": catalog, "base": base, "stream": stream}
    stream.stop(signal.SIGKILL)


def segments(world: dict[str, Any]) -> list[SegmentRecord]:
    records: list[SegmentRecord] = world["catalog"].segments(world["base"].stem)
    return records


def reached(world: dict[str, Any], revision: int) -> bool:
    found = segments(world)
    return bool(found) and found[-1].last_revision >= revision


def live_digest(cluster: Cluster, revision: int) -> str:
    with open_client(cluster.ready_node().server, cluster.token) as client:
        return str(
            client.call("StateDigest", pb.StateDigestRequest(revision=revision)).state_digest
        )


def restore_to(world: dict[str, Any], where: str, revision: int, tag: str) -> tuple[Path, Any]:
    data = world["root"] / f"restored-{tag}"
    ports = [str(free_port()) for _ in range(3)]
    result = world["cluster"].jaco(
        "restore", "--input", str(world["plain"]), "--name", "node-1", "--data-dir", str(data),
        "--advertise-host", "127.0.0.1", "--api-port", ports[0], "--etcd-client-port", ports[1],
        "--etcd-peer-port", ports[2], "--segments", where, "--to-revision", str(revision),
        "--identity", str(world["keys"]["identity"]),
    )  # fmt: skip
    return data, result


def test_the_stream_survives_chaos_and_any_revision_restores_exactly(
    streamed: dict[str, Any],
) -> None:
    world, cluster, s3 = streamed, streamed["cluster"], streamed["s3"]
    base = world["base"]
    load = Load(cluster)
    world["stream"].start()
    load.thread.start()
    try:
        load.wait_writes(10)
        wait_for(lambda: reached(world, load.last_revision), 120, "the first segments")

        leader = cluster.leader()
        leader.stop(signal.SIGKILL)
        load.wait_writes(10)
        wait_for(lambda: reached(world, load.last_revision), 120, "segments after the leader died")
        leader.start()

        world["stream"].stop(signal.SIGKILL)
        load.wait_writes(10)
        world["stream"].start()
        wait_for(lambda: reached(world, load.last_revision), 120, "segments after kill -9")

        s3.stop()
        load.wait_writes(15)
        s3.start()
        load.wait_writes(5)
    finally:
        load.stop.set()
        load.thread.join(60)
    final = load.last_revision
    wait_for(lambda: reached(world, final), 180, "every write in a segment")
    cluster.wait_ready(list(cluster.nodes))
    world["stream"].stop()
    assert "queued, retrying" in world["stream"].log()  # S3 was really down meanwhile

    chain = segments(world)
    expected = base.snapshot_index + 1
    for record in chain:
        assert record.first_revision == expected, "a gap or an overlap in the chain"
        expected = record.last_revision + 1
    stored_keys = {
        o.key for o in open_store(f"s3://{BUCKET}").list(f"jaco/segments/prod/{base.stem}/")
    }
    assert stored_keys == {r.key for r in chain}

    encrypted = world["root"] / "base.tar.gz.age"
    open_store(f"s3://{BUCKET}").get(base.key, encrypted)
    world["plain"] = world["root"] / "base.tar.gz"
    subprocess.run(
        ["age", "-d", "-i", str(world["keys"]["identity"]), "-o", str(world["plain"]),
         str(encrypted)],
        check=True,
    )  # fmt: skip
    local_chain = world["root"] / "local" / "jaco" / "segments" / "prod" / base.stem
    picks = sorted(random.sample(range(base.snapshot_index, final + 1), 20))
    for i, revision in enumerate(picks):
        where = str(local_chain) if i % 2 else f"s3://{BUCKET}/jaco/segments/prod/{base.stem}"
        data, result = restore_to(world, where, revision, str(i))
        assert result.code == 0, result.err
        assert f"to revision {revision} " in result.out
        restored = read_snapshot_state(data / "etcd" / "member" / "snap" / "db")
        assert restored.state_digest == live_digest(cluster, revision), f"revision {revision}"
