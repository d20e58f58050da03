"""jacod reaches its etcd member through a unix socket only jacod's user may open.

The member's client port keeps mutual TLS on 127.0.0.1 for etcd's own tools; jacod's own
traffic (every API call, and a backup's snapshot stream, where TLS cost the member and jacod
about 0.8 s of CPU per 512 MiB: docs/benchmarks.md, stop 43) goes over a socket without TLS,
in the data dir's etcd-socket directory, mode 0700.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from infra.localcluster import Cluster, Node, wait_for
from jaco.client.connection import open_client
from jaco.model.etcd import SUN_PATH, Etcd
from jaco.node.config import DataDir
from jaco.node.etcd_member import prepare_socket_dir
from jaco.v1 import jaco_pb2 as pb
from tests.conftest import fill
from tests.threads import receiving

NOBODY = ("--reuid=65534", "--regid=65534", "--clear-groups")


def _connect(path: Path, *as_user: str) -> str:
    """Connect to the socket `path` (as the user `setpriv` is told): "connected", or the
    error's class."""
    probe = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n"
        "    s.connect(sys.argv[1])\n"
        "    print('connected')\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    prefix = ["setpriv", *as_user, "--"] if as_user else []
    run = subprocess.run(
        [*prefix, sys.executable, "-c", probe, str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return run.stdout.strip()


def _address(hexed: str) -> str:
    """An address as /proc/net/tcp{,6} prints it (32-bit words in host order), as text; an
    IPv4 address mapped into IPv6 (gRPC's sockets are IPv6) as IPv4."""
    raw = b"".join(bytes.fromhex(hexed[i : i + 8])[::-1] for i in range(0, len(hexed), 8))
    address = ipaddress.ip_address(raw)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _tcp_peers(pid: int) -> set[str]:
    """The remote ends ("127.0.0.1:PORT") of the TCP connections process `pid` holds."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    peers = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                address, port = fields[2].split(":")
                peers.add(f"{_address(address)}:{int(port, 16)}")
    return peers


def _jacods_peers(node: Node) -> set[str]:
    """The remote ends of node's jacod's TCP connections, once they include one the test opens
    to its API: what shows that the check sees jacod's TCP connections at all."""
    assert node.process is not None
    pid = node.process.pid
    host, port = node.server.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as ours:
        mine = "{}:{}".format(*ours.getsockname())
        wait_for(lambda: mine in _tcp_peers(pid), 30, "jacod to accept our connection")
        return _tcp_peers(pid)


def test_jacod_reaches_its_member_over_a_socket_in_a_private_directory(single: Cluster) -> None:
    node = single.nodes["node-1"]
    data = DataDir(node.data_dir)
    assert stat.S_ISSOCK(data.etcd_socket.stat().st_mode)
    assert stat.S_IMODE(data.etcd_socket_dir.stat().st_mode) == 0o700
    # jacod works (the fixture waited for READY) and holds no connection to the TLS port
    assert f"127.0.0.1:{node.client_port}" not in _jacods_peers(node)
    assert _connect(data.etcd_socket) == "connected"  # jacod's user (root here) does


def test_a_backups_snapshot_stream_takes_the_socket_too(single: Cluster) -> None:
    """The check above, while etcd's snapshot stream is open: a stream that went over TLS would
    hold a connection to the member's port only while a backup runs."""
    node = single.nodes["node-1"]
    fill(single, 40)  # 32 MB: more than jacod queues and gRPC buffers while the client stalls
    assert node.process is not None
    jacod = node.process.pid
    with open_client(node.server, single.token) as client:
        stream = client.stream("Backup", pb.BackupRequest(), timeout=120)
        try:
            first = next(stream)
            assert first.WhichOneof("part") == "snapshot_size"
            assert first.snapshot_size > 32_000_000
            # the client reads no more: jacod's receiver stalls with etcd's stream open
            wait_for(lambda: receiving(jacod), 30, "the backup's receiving thread")
            assert f"127.0.0.1:{node.client_port}" not in _jacods_peers(node)
            assert receiving(jacod)  # still streaming when looked at
        finally:
            stream.close()  # cancels the call


def test_the_socket_directory_keeps_other_users_out() -> None:
    """The directory as jacod makes it keeps another user (nobody) from a socket anyone may
    write to, where every directory above lets them through; opened up, it lets them in. (Not
    in a test's own tmp_path: pytest's root, mode 0700, would keep them out anyway.)"""
    base = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="jaco-socket-"))
    try:
        os.chmod(base, 0o755)  # noqa: S103 - the point
        data = DataDir(base / "data")
        data.create()
        os.chmod(data.path, 0o755)  # noqa: S103 - the point: only etcd-socket/ stands in the way
        prepare_socket_dir(data)
        assert stat.S_IMODE(data.etcd_socket_dir.stat().st_mode) == 0o700
        with socket.socket(socket.AF_UNIX) as listening:
            listening.bind(str(data.etcd_socket))
            os.chmod(data.etcd_socket, 0o777)  # noqa: S103 - the socket itself open to all
            listening.listen()
            assert _connect(data.etcd_socket, *NOBODY) == "PermissionError"
            os.chmod(data.etcd_socket_dir, 0o755)  # noqa: S103 - opened up: the control
            assert _connect(data.etcd_socket, *NOBODY) == "connected"
    finally:
        shutil.rmtree(base)


def test_a_restart_makes_the_socket_directory_private_again(single: Cluster) -> None:
    node = single.nodes["node-1"]
    data = DataDir(node.data_dir)
    node.stop()
    os.chmod(data.etcd_socket_dir, 0o755)  # noqa: S103 - the point
    node.start()
    single.wait_ready([node.name])
    assert stat.S_IMODE(data.etcd_socket_dir.stat().st_mode) == 0o700


def test_a_socket_a_killed_member_left_does_not_stop_the_next_start(
    single: Cluster, tmp_path: Path
) -> None:
    """etcd 3.4 does not listen on a socket name that exists ("address already in use"), and
    an etcd killed with SIGKILL leaves its socket behind."""
    node = single.nodes["node-1"]
    data = DataDir(node.data_dir)
    assert node.process is not None
    etcd = node.etcd_pid()
    assert etcd is not None
    os.kill(node.process.pid, signal.SIGSTOP)  # jacod sees nothing of its member's end
    os.kill(etcd, signal.SIGKILL)
    node.stop(signal.SIGKILL)
    assert stat.S_ISSOCK(data.etcd_socket.stat().st_mode), "the killed member left no socket"
    node.start()
    single.wait_ready([node.name])
    archive = tmp_path / "after.tar.gz"
    single.ok("backup", "-o", str(archive))  # the snapshot stream, over the new socket
    assert archive.stat().st_size > 0


def test_a_socket_deeper_than_an_address_holds_is_reached_through_its_directory(
    single: Cluster, tmp_path: Path
) -> None:
    real = DataDir(single.nodes["node-1"].data_dir)
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / "etcd-socket").symlink_to(real.etcd_socket_dir)
    far = deep / "etcd-socket" / real.etcd_socket.name
    assert len(os.fsencode(far)) >= SUN_PATH  # too long for a socket address

    def held() -> int:  # this process's descriptors of the socket's directory
        targets = []
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # (the listing's own descriptor, closed)
                targets.append(os.readlink(f"/proc/self/fd/{fd}"))
        return targets.count(str(real.etcd_socket_dir.resolve()))

    async def status() -> tuple[int, int]:
        etcd = Etcd(far)
        try:
            return (await etcd.status(timeout=10)).revision, held()
        finally:
            await etcd.close()

    revision, during = asyncio.run(status())
    assert revision > 0
    assert during == 1
    assert held() == 0, "the directory's descriptor was left open"
