"""Restore drills in real bubblewrap sandboxes against real backups stored in SeaweedFS."""

from __future__ import annotations

import contextvars
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from flows.catalog import Catalog
from flows.drill_flow import drill_restore
from flows.params import DrillParams
from flows.sandbox import BwrapSandbox
from flows.storage import open_store
from infra.localcluster import Cluster
from infra.seaweed import SeaweedS3
from tests.mounts import tmpfs
from tests.netfaults import FaultyProxy
from tests.pipeline import BUCKET, SANDBOX_FULL, latest_report, latest_table, task_runs
from tests.processes import own_agents

CHECKS = [
    "backup is the one recorded",
    "restore",
    "ready",
    "old token authenticates",
    "cluster id",
    "deployments",
    "ip uniqueness",
    "audit history",
    "audit anchors",
    "ca fingerprint",
    "state digest",
]


def sandbox_processes(name: str) -> list[int]:
    """PIDs of processes whose command line mentions the sandbox (bwrap's --hostname)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if name.encode() in (proc / "cmdline").read_bytes():
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def drill(stored: dict[str, Any], workdir: Path, **over: Any) -> Any:
    """A drill in bubblewrap (tests/test_docker.py drills in containers)."""
    values = {"cluster": "prod", "bucket": BUCKET, "workdir": str(workdir), "driver": "bwrap"}
    values.update(over)
    return drill_restore(DrillParams(**values), return_state=True)


def catalog(stored: dict[str, Any]) -> Catalog:
    return Catalog(open_store(f"s3://{BUCKET}"), "jaco", "prod")


def test_real_drill_passes_every_check_and_wipes(stored: dict[str, Any], tmp_path: Path) -> None:
    started = time.monotonic()
    state = drill(stored, tmp_path / "work", rejoin=True, key=stored["key"])
    elapsed = time.monotonic() - started
    assert state.is_completed(), state.message
    result = state.result()
    # Each check says how long it took (the report's "seconds" column): where a drill's time
    # goes at 10⁶ keys is read there. Checks that ask the restored node took some.
    took = {c["name"]: c["seconds"] for c in result["checks"]}
    assert all(took[name] > 0 for name in ("state digest", "audit history", "rejoin")), took
    assert sum(took.values()) < elapsed
    assert result["key"] == stored["key"]
    assert [c["name"] for c in result["checks"]] == [*CHECKS, "rejoin"]
    assert all(c["ok"] for c in result["checks"]), result["checks"]
    assert result["rto_seconds"] > 0
    assert sandbox_processes(result["sandbox"]) == []
    assert list((tmp_path / "work").iterdir()) == []
    recorded = catalog(stored).backup(stored["key"])
    assert recorded is not None and recorded.last_drill is not None
    assert recorded.last_drill.passed and recorded.last_drill.rto_seconds == round(
        result["rto_seconds"], 2
    )
    # The agent's own ok flags are not taken on trust: what each check says it saw is held
    # against what the pipeline recorded at backup time and what the cluster says of itself.
    seen = {c["name"]: c["detail"] for c in result["checks"]}
    cid, counts, head = recorded.cluster_id, recorded.counts, recorded.audit_head
    assert head is not None
    ca = stored["cluster"].ok("cluster", "status", "--json").json()["ca_fingerprint"]
    deps, replicas = counts["deployments"], counts["replicas"]
    assert deps >= 1 and replicas >= 3
    assert seen["cluster id"] == f"restored {cid}; backup's meta.json {cid}; drilled cluster {cid}"
    assert seen["deployments"] == (
        f"{deps} deployments / {replicas} replicas; backup had {deps} / {replicas}"
    )
    assert seen["ip uniqueness"] == f"{replicas} replica IPs, {replicas} distinct"
    assert seen["audit history"] == (
        f"{head.seq} historical events, 1 RESTORE_COMPLETED (seq {head.seq + 1}), chain intact"
    )
    anchors = re.fullmatch(r"(\d+) of (\d+) anchors checked; the chain extends every one",
                           seen["audit anchors"])  # fmt: skip
    assert anchors and anchors[1] == anchors[2] and int(anchors[1]) >= 1
    assert seen["ca fingerprint"] == f"{ca[:16]}… (backup {ca[:16]}…, token pins {ca[:16]}…)"
    digest = recorded.state_digest[:16]
    assert seen["state digest"] == (
        f"running store at index {recorded.snapshot_index}: digest {digest}… "
        f"(backup {digest}…), {sum(counts.values())} records"
    )


def test_corrupted_backup_fails_and_names_the_step(stored: dict[str, Any], tmp_path: Path) -> None:
    s3: SeaweedS3 = stored["s3"]
    client = s3.client()
    head = client.head_object(Bucket=BUCKET, Key=stored["key"])
    good = client.get_object(Bucket=BUCKET, Key=stored["key"])["Body"].read()
    body = bytearray(good)
    body[len(body) // 2] ^= 0x40
    client.put_object(Bucket=BUCKET, Key=stored["key"], Body=bytes(body), Metadata=head["Metadata"])
    try:
        state = drill(stored, tmp_path / "work", key=stored["key"])
    finally:
        client.put_object(Bucket=BUCKET, Key=stored["key"], Body=good, Metadata=head["Metadata"])
    assert state.is_failed()
    assert "drill step fetch-backup failed" in str(state.message)
    assert "is damaged" in str(state.message)
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.parametrize(
    ("label", "change", "message"),
    [
        (
            "another cluster's",
            lambda m: m.update({"cluster-id": "f" * 16}),
            "says it belongs to cluster 'ffffffffffffffff', not {cid}: refusing to drill it",
        ),
        ("no checksum", lambda m: m.pop("ciphertext-sha256"), "carries no ciphertext checksum"),
        ("cut short", None, "is {cut} bytes; the catalog recorded {size}: it is not the object"),
    ],
    ids=["another cluster's", "no checksum", "cut short"],
)
def test_an_object_that_is_not_the_records_by_its_size_or_metadata_is_refused(
    stored: dict[str, Any], tmp_path: Path, label: str, change: Any, message: str
) -> None:
    client = stored["s3"].client()
    head = client.head_object(Bucket=BUCKET, Key=stored["key"])
    good = client.get_object(Bucket=BUCKET, Key=stored["key"])["Body"].read()
    metadata = dict(head["Metadata"])
    body = good
    if change is None:
        body = good[: len(good) // 2]  # an upload that stopped, its metadata intact
    else:
        change(metadata)
    client.put_object(Bucket=BUCKET, Key=stored["key"], Body=body, Metadata=metadata)
    try:
        state = drill(stored, tmp_path / "work", key=stored["key"])
    finally:
        client.put_object(Bucket=BUCKET, Key=stored["key"], Body=good, Metadata=head["Metadata"])
    assert state.is_failed()
    cid = head["Metadata"]["cluster-id"]
    assert f"drill step fetch-backup failed: {stored['key']} " in str(state.message)
    expected = message.format(cid=cid, cut=len(body), size=len(good))
    assert expected in str(state.message), state.message
    assert own_agents() == []
    assert list((tmp_path / "work").iterdir()) == []


def test_the_backup_goes_into_the_sandbox_as_it_downloads_never_to_the_hosts_disk(
    stored: dict[str, Any], tmp_path: Path
) -> None:
    """The flow's work directory is a 4 KiB tmpfs, smaller than the backup: the drill
    passes, so the ciphertext went from S3 straight into the sandbox (stop 32; before, it was
    downloaded into the work directory first, and the sandbox fed from that file after)."""
    size = stored["s3"].client().head_object(Bucket=BUCKET, Key=stored["key"])["ContentLength"]
    assert size > 4096, size
    with tmpfs(tmp_path / "work", "size=4k") as work:
        state = drill(stored, work, key=stored["key"])
        assert state.is_completed(), state.message
        assert list(work.iterdir()) == []
    result = state.result()
    timings = result["timings"]
    # The download ran beside the decryption, which the RTO counts from its first byte.
    assert 0 < timings["download_seconds"] and timings["decrypt_seconds"] > 0
    assert timings["cpu_seconds"] > 0  # the sandbox's: the agent and all it started
    assert f"the sandbox's CPU {timings['cpu_seconds']:.2f} s" in latest_report("prod")
    assert result["rto_seconds"] == pytest.approx(
        timings["decrypt_seconds"] + timings["restore_seconds"] + timings["ready_seconds"]
    )


def test_a_download_cut_midway_resumes_where_it_stopped(
    stored: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """S3's connection drops halfway through the backup, while the sandbox is restoring it:
    the download resumes where it stopped (a Range GET), in the same sandbox, and the drill
    passes on the whole object (until stop 33, the step was tried again in a new sandbox)."""
    size = stored["s3"].client().head_object(Bucket=BUCKET, Key=stored["key"])["ContentLength"]
    proxy = FaultyProxy(
        stored["s3"].s3_port, cut_once_after=size // 2, asked_for=stored["key"].encode()
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://{proxy.address}")
    monkeypatch.setenv("JACO_RETRY_BACKOFF", "0.2")
    try:
        state = drill(stored, tmp_path / "work", key=stored["key"])
    finally:
        proxy.close()
    assert proxy.cuts == 1
    assert state.is_completed(), state.message
    # one sandbox run: the cut was resumed inside it, not retried as a failed step
    assert [r.run_count for r in task_runs(state, "sandbox-drill")] == [1]
    assert own_agents() == []
    assert list((tmp_path / "work").iterdir()) == []


def test_a_store_cutting_every_reply_fails_the_drill_as_the_stores_failure(
    stored: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every reply for the backup cut short: the resumes run out, and the drill fails naming
    the store's failure, not a damaged backup."""
    size = stored["s3"].client().head_object(Bucket=BUCKET, Key=stored["key"])["ContentLength"]
    proxy = FaultyProxy(stored["s3"].s3_port, cut_after=size // 8, asked_for=stored["key"].encode())
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://{proxy.address}")
    monkeypatch.setenv("JACO_TASK_RETRIES", "0")
    try:
        state = drill(stored, tmp_path / "work", key=stored["key"])
    finally:
        proxy.close()
    assert state.is_failed()
    failure = str(state.message)
    assert f"drill step fetch-backup failed: S3 download of {stored['key']}" in failure, failure
    assert "is damaged" not in failure
    assert own_agents() == []
    assert list((tmp_path / "work").iterdir()) == []


def test_failed_check_fails_the_run_and_still_wipes(
    stored: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster: Cluster = stored["cluster"]
    # A token created after the backup does not exist in the restored cluster.
    newer = cluster.ok("token", "create", "--role", "viewer").out.strip().splitlines()[-1]
    monkeypatch.setenv("JACO_TOKEN", newer)
    state = drill(stored, tmp_path / "work", key=stored["key"])
    assert state.is_failed()
    assert "drill check(s) failed: old token authenticates" in str(state.message)
    assert list((tmp_path / "work").iterdir()) == []
    recorded = catalog(stored).backup(stored["key"])
    assert recorded is not None and recorded.last_drill is not None
    assert not recorded.last_drill.passed
    assert recorded.last_drill.failed_checks == ["old token authenticates"]
    # The history table, rendered from the catalog by this very run, shows it with its run.
    rows = latest_table("jaco-drills-prod")
    run_id = str(state.state_details.flow_run_id)
    mine = [r for r in rows if run_id in r["run"]]
    assert mine and mine[0]["result"] == "FAILED" and "old token" in mine[0]["failed"], rows[:3]
    assert own_agents() == []


def test_two_drills_at_once_do_not_collide(
    stored: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two drills whose real sandboxes run at the same time: each sandbox-drill task waits
    for the other at a barrier before starting bubblewrap, so both tasks' runs hold that
    moment (started together without it, one drill could end before the other began: CI saw
    it twice, the last in 3 attempts running)."""
    together = threading.Barrier(2, timeout=120)
    real = BwrapSandbox.run_agent

    def run_agent(self: BwrapSandbox, *args: Any, **kwargs: Any) -> Any:
        together.wait()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(BwrapSandbox, "run_agent", run_agent)
    states: list[Any] = [None, None]

    def run(i: int) -> None:
        states[i] = drill(stored, tmp_path / f"work{i}", key=stored["key"])

    # Each thread in this context: Prefect's settings (its API) are context-local.
    threads = [
        threading.Thread(target=contextvars.copy_context().run, args=(run, i)) for i in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(s.is_completed() for s in states), [s.message for s in states]
    results = [s.result() for s in states]
    assert results[0]["sandbox"] != results[1]["sandbox"]
    assert all(c["ok"] for r in results for c in r["checks"])
    first, second = (task_runs(s, "sandbox-drill")[0] for s in states)
    assert first.start_time < second.end_time and second.start_time < first.end_time


def test_sandbox_cannot_reach_the_hosts_loopback(stored: dict[str, Any], tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    host_port = f"127.0.0.1:{listener.getsockname()[1]}"
    production = stored["cluster"].nodes["node-1"].server
    try:
        result = BwrapSandbox().run_agent(["--probe", host_port, "--probe", production], 60)
    finally:
        listener.close()
    probes = {p["address"]: p["reachable"] for p in result.report["probes"]}
    assert probes[host_port] is False
    assert probes[production] is False
    own = [a for a in probes if a not in (host_port, production)]
    assert len(own) == 1 and probes[own[0]] is True  # its own loopback works
    assert result.report["pid"] != os.getpid() and result.report["pid"] < 10  # own pid namespace
    assert result.report["hostname"].startswith("drill-")


def test_drill_past_its_timeout_is_killed_and_wiped(stored: dict[str, Any], tmp_path: Path) -> None:
    # The same path a cancelled run takes: the worker kills bwrap, and --die-with-parent
    # takes the sandbox's pid namespace (jacod, etcd, the agent) down with it.
    # A full drill (with a second node rejoining) takes several seconds: far past 2 s.
    state = drill(stored, tmp_path / "work", timeout_seconds=2, rejoin=True, key=stored["key"])
    assert state.is_failed()
    assert "drill step sandbox-drill failed" in str(state.message)
    assert "did not finish within 2s" in str(state.message)
    assert list((tmp_path / "work").iterdir()) == []
    assert own_agents() == []


def test_a_drill_bigger_than_the_sandbox_tmpfs_fails_and_leaves_nothing(
    stored: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sandbox's tmpfs is capped (JACO_DRILL_TMPFS, as the docker driver's): a drill
    too big for it fails on the restore's space check instead of filling the host's memory
    (an uncapped tmpfs may take half of it; at 10⁷ keys the kernel then killed an etcd)."""
    monkeypatch.setenv("JACO_DRILL_TMPFS", "64k")
    state = drill(stored, tmp_path / "work", key=stored["key"])
    assert state.is_failed()
    found = SANDBOX_FULL.search(str(state.message))
    assert found and int(found[2]) <= 64 * 1024 < int(found[1]), state.message
    assert list((tmp_path / "work").iterdir()) == []
    assert own_agents() == []
    recorded = catalog(stored).backup(stored["key"])
    assert recorded is not None and recorded.last_drill is not None
    assert recorded.last_drill.failed_checks == ["restore"]


def test_a_backup_is_decrypted_into_the_restore_and_to_its_end_when_the_restore_refuses(
    stored: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No decrypted archive is written to the sandbox's /tmp (one page here, smaller than
    the archive): the backup is decrypted straight into the restore. The restore refuses the
    store for its size after a few KiB; the decryption still runs to the ciphertext's end,
    so the first check is answered, and passes: only the restore failed."""
    monkeypatch.setenv("JACO_DRILL_TMPFS", "4k")
    size = stored["s3"].client().head_object(Bucket=BUCKET, Key=stored["key"])["ContentLength"]
    assert size > 4096
    state = drill(stored, tmp_path / "work", key=stored["key"])
    assert state.is_failed()
    found = SANDBOX_FULL.search(str(state.message))
    assert found and int(found[2]) <= 4096 < int(found[1]), state.message
    assert "backup is the one recorded" not in str(state.message)
    recorded = catalog(stored).backup(stored["key"])
    assert recorded is not None and recorded.last_drill is not None
    assert recorded.last_drill.failed_checks == ["restore"]
    assert list((tmp_path / "work").iterdir()) == []
    assert own_agents() == []


def test_a_tmpfs_cap_that_is_not_a_size_fails_the_drill_before_any_download(
    stored: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JACO_DRILL_TMPFS", "8 GB")
    state = drill(stored, tmp_path / "work", key=stored["key"])
    assert state.is_failed()
    assert str(state.message).endswith(
        "drill step sandbox-settings failed: JACO_DRILL_TMPFS='8 gb': not a size (bytes, or a "
        "number with k, m or g)"
    ), state.message
    assert not (tmp_path / "work").exists() or list((tmp_path / "work").iterdir()) == []
    assert own_agents() == []


def test_installation_is_mounted_over_the_sandbox_tmpfs() -> None:
    # CI clones into any folder, /tmp included: the venv must not vanish under the fresh /tmp.
    cmd = BwrapSandbox().command([])
    tmpfs_at = max(i for i, arg in enumerate(cmd) if arg == "--tmpfs")
    binds = [i for i, arg in enumerate(cmd) if arg == "--ro-bind" and cmd[i + 1] == sys.prefix]
    assert binds and all(i > tmpfs_at for i in binds)
