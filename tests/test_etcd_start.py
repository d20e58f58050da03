"""jacod's start: it sees its etcd member answer as soon as the member does.

jacod polls its starting member until a Status call answers. On the client's own channel, a
refused attempt (etcd not listening yet) put gRPC's reconnect backoff in the way: the channel
tried again only about a second later, whatever happened meanwhile, so every start of jacod
(and every restore's time to READY) waited up to a second for a member that was already up
(docs/benchmarks.md, stop 38). Each ask now has a channel of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from infra.localcluster import Cluster, Node, wait_for
from jaco.errors import Unavailable
from jaco.model.etcd import Etcd
from jaco.node.config import DataDir, NodeConfig
from jaco.node.etcd_member import EtcdMember


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def _forwarding(path: Path, target: Path, drop_first: int = 0) -> AsyncIterator[None]:
    """The unix socket `path` forwarded to the socket `target`, from now until the block ends;
    the first `drop_first` connections are closed at once instead (an ask that fails)."""
    dropped = 0

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal dropped
        if dropped < drop_first:
            dropped += 1
            writer.close()
            return
        to_reader, to_writer = await asyncio.open_unix_connection(target)
        await asyncio.gather(_pipe(reader, to_writer), _pipe(to_reader, writer))

    server = await asyncio.start_unix_server(forward, path)
    try:
        yield
    finally:
        server.close()
        path.unlink(missing_ok=True)  # noqa: ASYNC240 - one syscall


def _elsewhere(cluster: Cluster, tmp: Path) -> tuple[DataDir, NodeConfig, Path]:
    """A data dir whose member socket nothing listens on yet, node 1's config, and the
    socket node 1's jacod reaches its member through."""
    real = DataDir(cluster.nodes["node-1"].data_dir)
    data = DataDir(tmp / "elsewhere")
    data.etcd_socket_dir.mkdir(parents=True, mode=0o700)
    return data, real.load(), real.etcd_socket


def _jacod(node: Node, listen: str, *python_flags: str, data_dir: str = "") -> list[str]:
    """The command of node's jacod, listening on `listen` (stop the node's own first), its data
    dir given as `data_dir` if that is set."""
    daemon = [sys.executable, *python_flags, "-m", "jaco.server.daemon"]
    data = data_dir or str(node.data_dir)
    return daemon + ["--name", node.name, "--data-dir", data, "--listen", listen]


def test_a_member_that_comes_up_right_after_a_refused_ask_is_seen_at_the_next(
    single: Cluster, tmp_path: Path
) -> None:
    data, config, target = _elsewhere(single, tmp_path)

    async def scenario() -> tuple[bool, bool, int]:
        member = EtcdMember(data, config)
        member.client = Etcd(data.etcd_socket)  # as start() makes it, before polling
        # Another channel, still open, whose connection was refused: gRPC shares a connection
        # among channels of the same arguments, and its backoff with it, unless each channel
        # has a pool of its own (channel_options). Held open, the refused one stays shared.
        refused = Etcd(data.etcd_socket)
        try:
            with contextlib.suppress(Unavailable):
                await refused.status(timeout=2)
            before = await member.answers()  # refused: nothing listens
            async with _forwarding(data.etcd_socket, target):
                after = await member.answers()  # at once, no wait for a backoff
                # and the client jacod goes on with works through the same socket
                revision = (await member.client.status()).revision if after else 0
            return before, after, revision
        finally:
            await refused.close()
            await member.client.close()

    before, after, revision = asyncio.run(scenario())
    assert not before
    assert after, "the member answered, but the ask right after a refused one did not see it"
    assert revision > 0


def test_start_sees_the_member_at_the_ask_after_a_failed_one(
    single: Cluster, tmp_path: Path
) -> None:
    """The same, through start(): its first ask fails (the connection is closed), the next
    one, a poll later, reaches the member. On the client's channel the asks in between would
    fail without connecting, until gRPC's backoff let it try again (about a second: about
    twenty asks)."""
    data, config, target = _elsewhere(single, tmp_path)

    async def scenario() -> int:
        member = EtcdMember(data, config)
        # the member's process, as spawn() would have set it (etcd is the fixture's node's)
        member.process = await asyncio.create_subprocess_exec("sleep", "60")
        try:
            async with _forwarding(data.etcd_socket, target, drop_first=1):
                await member.start(ready_timeout=30)
            return member.asks
        finally:
            member.process.kill()
            await member.process.wait()
            if member.client is not None:
                await member.client.close()

    assert asyncio.run(scenario()) == 2


def test_etcd_is_spawned_before_the_api_modules_load(single: Cluster, tmp_path: Path) -> None:
    """jacod spawns etcd first and loads gRPC and the service while etcd starts (they took a
    quarter of a second before etcd was even started). `-X importtime` writes each import to
    stderr as it completes, in order with jacod's own log lines."""
    node = single.nodes["node-1"]
    node.stop()
    stderr = tmp_path / "jacod.stderr"
    with stderr.open("wb") as err:
        jacod = subprocess.Popen(
            _jacod(node, node.server, "-X", "importtime"),
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
        )
    try:
        wait_for(lambda: b"serving on" in stderr.read_bytes(), 60, "jacod serving")
    finally:
        jacod.terminate()
        jacod.wait(30)
    lines = stderr.read_text().splitlines()
    spawned = next(i for i, line in enumerate(lines) if "etcd started (pid" in line)
    loaded = {
        module: next(
            i
            for i, line in enumerate(lines)
            if line.startswith("import time:") and line.rsplit("|", 1)[1].strip() == module
        )
        for module in ("grpc", "jaco.server.service", "jaco.model.etcd")
    }
    early = [module for module, at in loaded.items() if at < spawned]
    assert not early, f"loaded before etcd was spawned: {early}"


def test_a_jacod_that_cannot_listen_says_so_and_stops_its_etcd(single: Cluster) -> None:
    """A failure between etcd's spawn and serving (here: the API's port taken) ends jacod
    with one line, after it has stopped its etcd: not left to die after jacod, whose data
    dir lock is then gone already (a restarted jacod could meet the old etcd still running)."""
    node = single.nodes["node-1"]
    node.stop()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        result = subprocess.run(
            _jacod(node, listen),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == Unavailable.exit_code, result.stderr
    assert lines[-1] == f"jacod: cannot listen on {listen} (in use?)"
    assert any("etcd stopped (exit code" in line for line in lines[:-1]), result.stderr


def test_a_relative_data_dir_is_found_by_etcd_in_its_own_directory(
    single: Cluster, tmp_path: Path
) -> None:
    """etcd runs in the data dir's etcd-socket/, so every path it is given must not depend on
    jacod's working directory: a jacod started with a relative --data-dir serves a backup."""
    node = single.nodes["node-1"]
    node.stop()
    with (tmp_path / "jacod.log").open("wb") as log:
        jacod = subprocess.Popen(
            _jacod(node, node.server, data_dir=node.data_dir.name),
            cwd=node.data_dir.parent,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
    try:
        single.wait_ready([node.name], via=node, timeout=60)
        archive = tmp_path / "relative.tar.gz"
        single.ok("backup", "-o", str(archive), server=node.server)
        assert archive.stat().st_size > 0
    finally:
        jacod.terminate()
        jacod.wait(30)
