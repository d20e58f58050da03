"""Continuous backup and point-in-time restore, end to end, nothing mocked.

A real 3-node cluster under a steady write load; `jaco pipeline stream` as a real process
writing age-encrypted segments to a real SeaweedFS and the local copy; the leader killed, the
stream `kill -9`ed and started again, S3 stopped and started. Then `jaco restore --segments`
to random revisions: the restored store's digest, read from its etcd database file alone, is
the one the live cluster had at that revision; and the chain has no gap and no overlap.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.settings import PREFECT_API_URL

from flows.catalog import Catalog, SegmentRecord, StreamStatus
from flows.drill_flow import drill_restore
from flows.metrics import CatalogCollector
from flows.params import DrillParams
from flows.storage import open_store
from flows.watchdog_flow import Objective, WatchdogParams, watchdog
from infra.localcluster import JACO, Cluster, Node, wait_for
from infra.ports import free_port
from jaco.archive.age import load_identities, parse_recipient
from jaco.archive.segment import (
    Change,
    RevisionRecord,
    decode_segment,
    decrypt_segment,
    encode_segment,
    encrypt_segment,
)
from jaco.archive.snapshot_file import read_snapshot_state
from jaco.client.changes import follow_changes
from jaco.client.connection import open_client
from jaco.client.history import random_point
from jaco.errors import JacoError
from jaco.model.keys import P_DEPLOYMENTS
from jaco.v1 import jaco_pb2 as pb
from tests.pipeline import BUCKET, Webhook


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
            + ["--segment-seconds", "1", "--heartbeat-seconds", "1", "--max-queued-mib", "0.001"],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())},
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
    # the leader first: the stream is connected to the node the chaos test kills
    leader = cluster.leader()
    nodes = [leader, *(n for n in cluster.nodes.values() if n is not leader)]
    servers = ", ".join(f'"{n.server}"' for n in nodes)
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
        assert f"server {leader.server}: " in world["stream"].log()  # it was connected there
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
    # ... long enough to fill the queue (1 KiB here): reading paused, then went on from there
    assert "wait for a store: reading paused at revision" in world["stream"].log()
    assert "reading again from revision" in world["stream"].log()

    chain = segments(world)
    expected = base.snapshot_index + 1
    for record in chain:
        assert record.first_revision == expected, "a gap or an overlap in the chain"
        expected = record.last_revision + 1
    stored_keys = {
        o.key for o in open_store(f"s3://{BUCKET}").list(f"jaco/segments/prod/{base.stem}/")
    }
    assert stored_keys == {r.key for r in chain}
    # Every change of the cluster's history is in the chain, once: what the Changes RPC
    # replays from the base now is what the segments hold, revision for revision (a change
    # lost on a reconnect or a paused read may leave no trace in the digests: later writes
    # to the same deployment cover it).
    identities = load_identities(world["keys"]["identity"])
    held = []
    for record in chain:
        raw = open_store(f"s3://{BUCKET}").get_bytes(record.key)
        assert raw is not None
        segment = decode_segment(decrypt_segment(raw, identities, record.key), record.key)
        held += [(r.revision, r.changes) for r in segment.records]
    replayed = []
    with open_client(cluster.ready_node().server, cluster.token) as client:
        for item in follow_changes(client, base.snapshot_index + 1):
            if item.revision > chain[-1].last_revision:
                break
            if isinstance(item, RevisionRecord):
                replayed.append((item.revision, item.changes))
            if item.revision == chain[-1].last_revision:
                break
    assert [r for r, _ in held] == [r for r, _ in replayed]
    assert held == replayed

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


@pytest.fixture(scope="module")
def undone(streamed: dict[str, Any]) -> dict[str, Any]:
    """A deployment made, then removed by mistake, with the stream running; the removal's
    audit event; the base backup as the bucket holds it, and decrypted with `age -d`."""
    world, cluster = streamed, streamed["cluster"]
    world["stream"].start()
    # one segment each (the stream cuts every second while it holds a change): a chain of
    # three at least, so that the bad-input tests can take one out of the middle
    for command in (["deploy", "shop", "--image", "shop:1"], ["scale", "shop", "--replicas", "2"]):
        count = len(segments(world))
        cluster.ok(*command)
        wait_for(lambda n=count: len(segments(world)) > n, 120, "a segment")
    cluster.ok("rm", "shop")
    removed = cluster.ok("audit", "--type", "DEPLOYMENT_REMOVED", "--json").out.splitlines()
    event = [e for e in map(json.loads, removed) if e["detail"].get("name") == "shop"][-1]

    def carried() -> bool:  # a segment carries the removal's audit event
        head = segments(world)[-1].audit_head
        return head is not None and head.seq >= int(event["seq"])

    wait_for(carried, 120, "the removal in a segment")
    world["stream"].stop()
    if "plain" not in world:
        base = world["base"]
        encrypted = world["root"] / "base.tar.gz.age"
        open_store(f"s3://{BUCKET}").get(base.key, encrypted)
        world["plain"] = world["root"] / "base.tar.gz"
        identity = str(world["keys"]["identity"])
        subprocess.run(
            ["age", "-d", "-i", identity, "-o", str(world["plain"]), str(encrypted)], check=True
        )
    chain = world["root"] / "local" / "jaco" / "segments" / "prod" / world["base"].stem
    return {**world, "event": event, "chain": chain}


def test_a_mistaken_rm_is_undone_by_restoring_to_just_before_it(undone: dict[str, Any]) -> None:
    """docs/backups.md, "Undo a mistake": the audit log names the removal; the restore, of the
    backup as the bucket holds it (encrypted: decrypted as it is read), stops just before it;
    the restored node serves the deployment again and says where it stopped."""
    world, cluster = undone, undone["cluster"]
    seq = int(undone["event"]["seq"])
    node = Node("node-1", world["root"] / "undo" / "data")
    node.data_dir.parent.mkdir()
    encrypted = world["root"] / "base.tar.gz.age"  # as fetched from the bucket
    result = cluster.jaco(
        "restore", "--input", str(encrypted), "--name", "node-1", *node.port_flags(),
        "--segments", str(undone["chain"]), "--before-event", str(seq),
        "--identity", str(world["keys"]["identity"]),
    )  # fmt: skip
    assert result.code == 0, result.err
    revision = int(result.out.split("to revision ")[1].split()[0])
    restored = read_snapshot_state(node.data_dir / "etcd" / "member" / "snap" / "db")
    assert restored.state_digest == live_digest(cluster, revision)
    assert restored.audit_head is not None and restored.audit_head["seq"] == seq - 1
    node.start()
    try:
        wait_for(lambda: cluster.jaco("status", server=node.server).code == 0, 60, "restored")
        status = cluster.ok("status", "--json", server=node.server).json()
        shop = [d for d in status["deployments"] if d["name"] == "shop"]
        assert shop and shop[0]["replicas"] == 2
        done = cluster.ok("audit", "--type", "RESTORE_COMPLETED", "--json", server=node.server)
        detail = json.loads(done.out.splitlines()[-1])["detail"]
        assert detail["target_revision"] == revision and detail["target_at"]
        cluster.ok("audit", "verify", server=node.server)
    finally:
        node.stop()


def _refused(world: dict[str, Any], chain: Path, code: int, message: str) -> None:
    parent = world["root"] / f"refused-{code}-{len(message)}"
    parent.mkdir()
    data = parent / "data"
    ports = [str(free_port()) for _ in range(3)]
    result = world["cluster"].jaco(
        "restore", "--input", str(world["plain"]), "--name", "node-1", "--data-dir", str(data),
        "--advertise-host", "127.0.0.1", "--api-port", ports[0], "--etcd-client-port", ports[1],
        "--etcd-peer-port", ports[2], "--segments", str(chain), "--to-revision",
        str(world["last"]), "--identity", str(world["keys"]["identity"]),
    )  # fmt: skip
    assert result.code == code, result.err
    assert message in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert "Traceback" not in result.err and result.out == ""
    assert list(parent.iterdir()) == [], "a refused restore left something behind"


@pytest.fixture
def bad(undone: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    copy = tmp_path / "chain"
    shutil.copytree(undone["chain"], copy)
    names = sorted(p.name for p in copy.iterdir() if p.name.endswith(".seg.age"))
    assert len(names) >= 2
    last = segments(undone)[-1].last_revision
    return {**undone, "copy": copy, "names": names, "last": last}


def test_a_flipped_byte_in_a_segment_is_refused(bad: dict[str, Any]) -> None:
    victim = bad["copy"] / bad["names"][len(bad["names"]) // 2]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    victim.write_bytes(bytes(raw))
    _refused(bad, bad["copy"], 14, f"segment {victim.name} does not decrypt")


def test_a_missing_segment_is_refused_as_a_gap(bad: dict[str, Any]) -> None:
    (bad["copy"] / bad["names"][len(bad["names"]) // 2]).unlink()
    _refused(bad, bad["copy"], 12, "are missing: no segment covers them")


def test_a_segment_of_another_cluster_is_refused(bad: dict[str, Any]) -> None:
    first = decode_segment(
        decrypt_segment(
            (bad["copy"] / bad["names"][0]).read_bytes(),
            load_identities(bad["keys"]["identity"]),
            "x",
        ),
        "x",
    )
    forged = first.meta.model_copy(update={"cluster_id": "another-cluster"})
    plaintext = encode_segment(forged, list(first.records))
    recipient = [parse_recipient(bad["keys"]["recipient"])]
    (bad["copy"] / bad["names"][0]).write_bytes(encrypt_segment(plaintext, recipient))
    _refused(bad, bad["copy"], 12, "is of cluster another-cluster")


def test_a_revision_outside_the_window_is_refused(bad: dict[str, Any]) -> None:
    _refused({**bad, "last": bad["last"] + 1000}, bad["copy"], 2, "is outside what these")


def test_backup_ls_shows_the_restorable_window(undone: dict[str, Any]) -> None:
    shown = undone["cluster"].ok("backup", "ls", "--store", f"s3://{BUCKET}").out
    last = segments(undone)[-1]
    assert "point-in-time restore: any point from" in shown
    assert f"(revision {last.last_revision}, segments of {undone['base'].stem})" in shown


def pitr_drill(world: dict[str, Any], workdir: Path) -> Any:
    """A drill of the base backup, in bubblewrap, given the live cluster's servers."""
    servers = [n.server for n in world["cluster"].nodes.values()]
    params = DrillParams(
        cluster="prod", bucket=BUCKET, workdir=str(workdir), driver="bwrap",
        key=world["base"].key, servers=servers,
    )  # fmt: skip
    return drill_restore(params, return_state=True)


def test_a_drill_proves_a_random_point_of_the_window(
    undone: dict[str, Any], tmp_path: Path
) -> None:
    """The drill restores the backup plus its segments to a random revision after it, in the
    sandbox, and the digest there is the one the live cluster had at that revision."""
    chain = segments(undone)
    state = pitr_drill(undone, tmp_path / "work")
    assert state.is_completed(), state.message
    result = state.result()
    point = result["point_revision"]
    assert undone["base"].snapshot_index < point <= chain[-1].last_revision
    seen = {c["name"]: c for c in result["checks"]}
    assert seen["point in time"]["ok"], seen["point in time"]
    live = live_digest(undone["cluster"], point)
    needed = len([r for r in chain if r.first_revision <= point])
    assert seen["point in time"]["detail"].startswith(f"revision {point} (")
    assert (
        f"{needed} segments replayed: digest {live[:16]}… equal to"
        in seen["point in time"]["detail"]
    )
    assert seen["segments received"]["ok"] and all(c["ok"] for c in result["checks"])
    assert list((tmp_path / "work").iterdir()) == []
    recorded = undone["catalog"].backup(undone["base"].key)
    assert recorded is not None and recorded.last_drill is not None
    assert recorded.last_drill.passed and recorded.last_drill.point_revision == point
    described = (
        undone["cluster"]
        .ok("backup", "describe", undone["base"].key, "--store", f"s3://{BUCKET}")
        .out
    )
    assert (
        f"passed, RTO {recorded.last_drill.rto_seconds:.1f}s, point in time: revision {point}"
        in described
    )


def test_a_point_in_time_drill_needs_room_in_tmp_for_the_archive_it_restores_again(
    undone: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a point-in-time drill writes the decrypted archive (to the sandbox's /tmp: the
    point restores it a second time); one that does not fit is refused before a byte is."""
    monkeypatch.setenv("JACO_DRILL_TMPFS", "4k")
    state = pitr_drill(undone, tmp_path / "work")
    assert state.is_failed()
    found = re.search(
        r"drill check\(s\) failed: backup is the one recorded: decrypting this backup needs "
        r"(\d+) bytes but the filesystem holding /tmp has only 4096 free; nothing was written$",
        str(state.message),
    )
    assert found and int(found[1]) > 4096, state.message
    assert list((tmp_path / "work").iterdir()) == []


def test_a_drill_fails_on_a_segment_rewritten_in_the_bucket(
    undone: dict[str, Any], tmp_path: Path
) -> None:
    """Someone with write access to the bucket (and the public recipient) rewrites the first
    segment with one more deployment in it: the download is refused (not the object the
    catalog recorded). With its catalog record rewritten to match (size, SHA-256), every check
    of the segment's own holds, the restore goes through, and the drill fails on the digest."""
    store, catalog = open_store(f"s3://{BUCKET}"), undone["catalog"]
    first = segments(undone)[0]
    original = tmp_path / "original.seg.age"
    metadata = store.get(first.key, original)
    seg = decode_segment(
        decrypt_segment(original.read_bytes(), load_identities(undone["keys"]["identity"]), "x"),
        "x",
    )
    planted = Change(f"{P_DEPLOYMENTS}planted".encode(), b'{"name": "planted"}', False)
    head = seg.records[0]
    records = [RevisionRecord(head.revision, head.at, (*head.changes, planted)),
               *seg.records[1:]]  # fmt: skip
    meta = seg.meta.model_copy(update={"changes": seg.meta.changes + 1})
    forged = encrypt_segment(
        encode_segment(meta, records), [parse_recipient(undone["keys"]["recipient"])]
    )
    forged_file = tmp_path / "forged.seg.age"
    forged_file.write_bytes(forged)
    store.put(first.key, forged_file, metadata)
    try:
        refused = pitr_drill(undone, tmp_path / "refused")
    finally:
        store.put(first.key, original, metadata)
    assert refused.is_failed()
    assert (
        f"drill step fetch-segments failed: segment {first.key} is not the object the catalog "
        "recorded"
    ) in str(refused.message), refused.message
    assert list((tmp_path / "refused").iterdir()) == []
    store.put(first.key, forged_file, metadata)
    forged_sha = hashlib.sha256(forged).hexdigest()
    catalog.record_segment(
        first.model_copy(update={"size": len(forged), "ciphertext_sha256": forged_sha})
    )
    try:
        state = pitr_drill(undone, tmp_path / "work")
    finally:
        store.put(first.key, original, metadata)
        catalog.record_segment(first)
    assert state.is_failed()
    message = str(state.message)
    assert "drill check(s) failed: point in time: revision " in message, message
    assert "differs from the live cluster's at that revision" in message, message
    assert list((tmp_path / "work").iterdir()) == []


def test_the_stream_beats_while_idle_and_the_watchdog_hears_it_stop(
    streamed: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle cluster: no segment is written, yet the heartbeat says every change is stored
    as of now. Killed with -9, the heartbeat stops: the watchdog's max_stream_lag alerts,
    naming the dead process; the metrics and `jaco backup ls` show the same figure."""
    world, catalog = streamed, streamed["catalog"]
    hook = Webhook()
    monkeypatch.setenv("JACO_ALERT_WEBHOOK", hook.url)
    open_store(f"s3://{BUCKET}").delete("jaco/catalog/prod/watchdog.json")
    with open_client(world["cluster"].ready_node().server, world["cluster"].token) as client:
        now = client.call("StateDigest", pb.StateDigestRequest()).revision
    stream = world["stream"]
    stream.start()
    assert stream.process is not None
    pid = stream.process.pid

    def mine() -> StreamStatus | None:
        status = catalog.stream_status()
        return status if status is not None and status.pid == pid else None

    try:
        first = wait_for(
            lambda: (
                (s := mine()) and s.seen_revision >= now and s.open_revisions == s.queued == 0 and s
            ),
            120,
            "a heartbeat once caught up",
        )
        count = len(segments(world))
        later = wait_for(
            lambda: (
                (s := mine()) and s.durable_at > first.durable_at + dt.timedelta(seconds=2) and s
            ),
            60,
            "a later heartbeat",
        )
        assert len(segments(world)) == count, "the cluster was not idle"
        assert later.stored_revision == segments(world)[-1].last_revision
        assert later.open_revisions == later.queued == 0
        target = Objective(
            cluster="prod",
            bucket=BUCKET,
            local_dir=str(world["root"] / "local"),
            max_backup_age=86400,
            max_drill_age=86400,
            max_stream_lag=60,
        )
        state = watchdog(WatchdogParams(clusters=[target]), return_state=True)
        assert state.is_completed(), state.message
        assert "jaco.stream.stale" not in hook.events("prod")
        listed = world["cluster"].jaco("backup", "ls", "--store", f"s3://{BUCKET}")
        assert "change stream: every change received before" in listed.out, listed.out

        # S3 down, then a change: its segment cannot be stored. The local catalog's heartbeat
        # goes on and says so (queued, stored through the moment it arrived, no later).
        local = Catalog(open_store(str(world["root"] / "local")), "jaco", "prod")
        world["s3"].stop()
        try:
            changed = dt.datetime.now(dt.UTC)
            world["cluster"].ok("deploy", "beat", "--image", "x:1")
            held = wait_for(
                lambda: (
                    (s := local.stream_status())
                    and s.queued >= 1
                    and s.at > s.durable_at + dt.timedelta(seconds=2)
                    and s
                ),
                120,
                "a heartbeat with the change queued",
            )
            assert changed <= held.durable_at and held.stored_revision == later.stored_revision
        finally:
            world["s3"].start()
        wait_for(
            lambda: (s := mine()) and s.queued == 0 and s.stored_revision > later.stored_revision,
            120,
            "the queued segment stored once S3 is back",
        )
    finally:
        stream.stop(signal.SIGKILL)
    last = catalog.stream_status()
    assert last is not None and last.pid == pid
    wait_for(lambda: (dt.datetime.now(dt.UTC) - last.durable_at).total_seconds() > 3, 10, "3 s")
    target = target.model_copy(update={"max_stream_lag": 3})
    state = watchdog(WatchdogParams(clusters=[target]), return_state=True)
    assert state.is_completed(), state.message
    stale = [p for p in hook.posts if p["event"] == "jaco.stream.stale"]
    assert len(stale) == 1, hook.posts
    assert "has stored nothing it received since" in stale[0]["reason"]
    assert f"pid {pid} " in stale[0]["reason"]
    metrics = {
        sample.name: sample.value
        for family in CatalogCollector([target]).collect()
        for sample in family.samples
        if sample.labels.get("cluster") == "prod"
    }
    assert metrics["jaco_stream_durable_timestamp_seconds"] == last.durable_at.timestamp()
    assert metrics["jaco_stream_objective_seconds"] == 3
    assert metrics["jaco_stream_queued_segments"] == 0
    hook.close()


@pytest.mark.last_in_module
def test_compaction_past_the_stream_takes_a_new_full_backup(undone: dict[str, Any]) -> None:
    """Last in this module (whatever the order of the others): it compacts the history the
    other tests compare with, and moves the chain to a new full backup."""
    world, cluster = undone, undone["cluster"]
    cluster.ok("deploy", "gone", "--image", "x:1")  # changes the stopped stream never saw
    with open_client(cluster.ready_node().server, cluster.token) as client:
        now = client.call("StateDigest", pb.StateDigestRequest()).revision
    compact = [*cluster.ready_node().etcdctl_command(), "compact", str(now)]
    subprocess.run(compact, check=True, capture_output=True)
    # What the live cluster still holds is what a drill can compare a point in time with:
    with open_client(cluster.ready_node().server, cluster.token) as client:
        assert random_point(client, 1, now - 1, random.Random(1)) is None
        assert random_point(client, 1, now, random.Random(1)) == (now, live_digest(cluster, now))
    # the base's whole window is compacted now: its drill fails, and says why
    drilled = pitr_drill(world, world["root"] / "drill-compacted")
    assert drilled.is_failed()
    assert "drill step pick-point failed: the live cluster no longer holds any revision" in str(
        drilled.message
    ), drilled.message
    before = world["catalog"].backups()[0]
    world["stream"].start()
    try:
        wait_for(lambda: world["catalog"].backups()[0].key != before.key, 180, "a new backup")
        newest = world["catalog"].backups()[0]
        assert newest.snapshot_index >= now
        cluster.ok("deploy", "after", "--image", "x:1")
        wait_for(lambda: world["catalog"].segments(newest.stem), 120, "a segment of the new chain")
        assert world["catalog"].segments(newest.stem)[0].first_revision == newest.snapshot_index + 1
    finally:
        world["stream"].stop()
    assert "etcd compacted past the stream's position" in world["stream"].log()
