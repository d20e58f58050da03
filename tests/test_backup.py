"""`jaco backup` failure modes: nothing ever lands under the final name, and the CLI says why.

The network faults come from a real TCP proxy that cuts or stalls the connection; the full
and read-only disks are real tmpfs mounts (the suite runs as root, as CI does).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from infra.localcluster import JACO, Cluster, cluster_of, wait_for
from jaco.client.connection import open_client
from jaco.node.config import DataDir
from jaco.v1 import jaco_pb2 as pb
from tests.mounts import tmpfs
from tests.netfaults import FaultyProxy
from tests.threads import nice_of_threads, receiving


def _no_archive_left(directory: Path) -> None:
    assert [p.name for p in directory.iterdir() if p.name != "lost+found"] == []


def _events(cluster: Cluster) -> int:
    return len(cluster.ok("audit", "--type", "BACKUP_TAKEN", "--json").out.splitlines())


def test_backup_writes_private_archive_and_records_event(big: Cluster, tmp_path: Path) -> None:
    before = _events(big)
    out = tmp_path / "ok.tar.gz"
    result = big.ok("backup", "--output", str(out))
    assert result.out.strip() == f"Wrote {out.stat().st_size} bytes to {out}"
    assert "snapshot index" in result.err
    assert out.stat().st_mode & 0o777 == 0o600
    assert out.stat().st_size > 1_500_000
    assert _events(big) == before + 1
    assert [p.name for p in tmp_path.iterdir()] == ["ok.tar.gz"]


def test_server_dying_mid_stream_leaves_no_file(big: Cluster, tmp_path: Path) -> None:
    proxy = FaultyProxy(big.nodes["node-1"].api_port, cut_after=300_000)
    try:
        result = big.jaco("backup", "--output", str(tmp_path / "cut.tar.gz"), server=proxy.address)
    finally:
        proxy.close()
    assert proxy.cuts >= 1
    assert result.code != 0 and "Traceback" not in result.err
    assert "unavailable" in result.err.lower() or "connection" in result.err.lower()
    _no_archive_left(tmp_path)


def test_deadline_leaves_no_file(big: Cluster, tmp_path: Path) -> None:
    proxy = FaultyProxy(big.nodes["node-1"].api_port, delay_per_chunk=0.05)
    try:
        result = big.jaco(
            "backup",
            "--output",
            str(tmp_path / "slow.tar.gz"),
            "--timeout",
            "1.5",
            server=proxy.address,
        )
    finally:
        proxy.close()
    assert result.code != 0
    assert "did not answer in time" in result.err or "Deadline" in result.err
    _no_archive_left(tmp_path)


def test_ctrl_c_leaves_no_file(big: Cluster, tmp_path: Path) -> None:
    proxy = FaultyProxy(big.nodes["node-1"].api_port, delay_per_chunk=0.05)
    env = {**os.environ, "JACO_TOKEN": big.token, "JACO_SERVER": proxy.address}
    try:
        proc = _backup_process(tmp_path / "int.tar.gz", env)
        wait_for(
            lambda: any(p.name.startswith(".int.tar.gz.partial") for p in tmp_path.iterdir()),
            30,
            "the backup to start writing",
        )
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proxy.close()
    assert proc.returncode == 130
    assert "interrupted" in err and "Traceback" not in err
    _no_archive_left(tmp_path)


def test_full_disk_leaves_no_file(big: Cluster, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=256k") as small:
        result = big.jaco("backup", "--output", str(small / "full.tar.gz"))
        assert result.code != 0 and "Traceback" not in result.err
        assert "is full; nothing was written" in result.err
        _no_archive_left(small)


def test_unwritable_or_missing_output_dir(big: Cluster, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        result = big.jaco("backup", "--output", str(ro / "x.tar.gz"))
        assert result.code != 0
        assert "cannot write to" in result.err and "Traceback" not in result.err
    result = big.jaco("backup", "--output", str(tmp_path / "nope" / "x.tar.gz"))
    assert result.code != 0 and "does not exist" in result.err
    result = big.jaco("backup", "--output", str(tmp_path))
    assert result.code != 0 and "is a directory" in result.err


def test_bad_tokens_get_no_backup(big: Cluster, tmp_path: Path) -> None:
    before = _events(big)
    viewer = big.ok("token", "create", "--role", "viewer").out.strip().splitlines()[-1]
    result = big.jaco("backup", "--output", str(tmp_path / "v.tar.gz"), token=viewer)
    assert result.code != 0 and "is read-only" in result.err
    doomed = big.ok("token", "create").out.strip().splitlines()[-1]
    big.ok("token", "revoke", doomed.split(".")[3])
    result = big.jaco("backup", "--output", str(tmp_path / "r.tar.gz"), token=doomed)
    assert result.code != 0 and "has been revoked" in result.err
    forged = doomed[: doomed.rindex(".") + 1] + "B" * 43
    result = big.jaco("backup", "--output", str(tmp_path / "f.tar.gz"), token=forged)
    assert result.code != 0 and "not valid for this cluster" in result.err
    _no_archive_left(tmp_path)
    assert _events(big) == before


def test_stale_server_snapshot_is_removed_on_restart(tmp_path: Path) -> None:
    with cluster_of(tmp_path / "c", 1) as cluster:
        node = cluster.nodes["node-1"]
        stale = DataDir(node.data_dir).backup_dir / "snapshot-1-2.bin"
        stale.parent.mkdir(mode=0o700, exist_ok=True)
        stale.write_bytes(b"CA key inside")  # what a jacod before 1.0 killed mid-backup left
        node.stop()
        node.start()
        cluster.wait_ready(["node-1"])
        assert not stale.exists()


def test_a_client_gone_while_etcd_stalls_frees_the_node_at_once(tmp_path: Path) -> None:
    """jacod's receiving thread waits on etcd's stream when the client walks away: ending the
    call must wake it (not wait for etcd), end its meta's pass and let the next backup in.
    Nothing is written under the backup directory meanwhile (no copy of the snapshot)."""
    from tests.conftest import fill

    with cluster_of(tmp_path / "c", 1) as cluster:
        fill(cluster, 60)  # about 48 MiB: more than the buffers between etcd and the client
        node = cluster.nodes["node-1"]
        scratch = DataDir(node.data_dir).backup_dir
        assert node.process is not None
        jacod = node.process.pid
        # Backups abandoned after their first messages leave no connection to etcd behind
        # (one was left per backup when the receiving thread stopped without draining its call)
        with open_client(node.server, cluster.token) as client:

            def abandon(times: int) -> int:
                for _ in range(times):
                    call = client.stub.Backup(
                        pb.BackupRequest(), metadata=client.metadata, timeout=60
                    )
                    next(call), next(call)
                    call.cancel()
                wait_for(lambda: not receiving(jacod), 30, "the abandoned backups to end")
                return _open_files(jacod)

            before = abandon(1)  # what a first backup opens for good (its channel to jacod)
            assert abandon(20) <= before + 1, (before, _open_files(jacod))  # leaking: +6 or more
        env = {**os.environ, "JACO_TOKEN": cluster.token, "JACO_SERVER": node.server}
        out = tmp_path / "out"
        out.mkdir()
        proc = _backup_process(out / "a.tar.gz", env)
        etcd = node.etcd_pid()
        assert etcd is not None
        deadline = time.monotonic() + 30  # etcd stopped as soon as it starts sending
        while not receiving(jacod) and time.monotonic() < deadline:
            time.sleep(0.001)
        assert receiving(jacod), "the backup never started"
        os.kill(etcd, signal.SIGSTOP)
        try:
            time.sleep(1)  # the receiving thread now waits for etcd's next piece
            # ... at a lower priority than the rest of jacod: a backup yields the CPU
            niced = nice_of_threads(jacod)
            assert sorted(niced) == [0, 10] and len(niced[10]) == 1, niced
            assert niced[10] != [jacod]  # not the main thread: the event loop serves the API
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
            assert proc.returncode == 130, err
            # etcd is still stopped: only the call's end can have woken the receiving thread
            wait_for(lambda: not receiving(jacod), 15, "the receiving thread to end")
            assert not scratch.exists() or list(scratch.iterdir()) == []
        finally:
            os.kill(etcd, signal.SIGCONT)
        _no_archive_left(out)
        done = cluster.ok("backup", "--output", str(out / "b.tar.gz"))
        assert "snapshot index" in done.err and (out / "b.tar.gz").stat().st_size > 30_000_000


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _backup_process(output: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """`jaco backup` to `output`, started and left running."""
    return subprocess.Popen(
        [JACO, "backup", "--output", str(output)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
