"""jacod: one node of the cluster.

It holds the data dir's lock, runs the node's etcd member as a child process, serves the
gRPC API over TLS, keeps the node's liveness key fresh, promotes caught-up learners (when its
member leads), and on SIGTERM stops the API, then etcd, and exits cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import signal
import sys
from pathlib import Path

import grpc

from jaco import __version__
from jaco.config import DataDir, NodeConfig, data_dir_from_env
from jaco.errors import DataDirError, JacoError, Unavailable
from jaco.etcd import Etcd, EtcdError, op_put
from jaco.etcd_member import EtcdMember
from jaco.service import JacoService
from jaco.state import P_ALIVE, Store, encode, now
from jaco.v1 import jaco_pb2_grpc as pb_grpc

log = logging.getLogger("jacod")
ALIVE_TTL = 5
TICK = 1.0


class Node:
    """The running state of one jacod."""

    def __init__(self, data: DataDir, config: NodeConfig, listen: str) -> None:
        self.data = data
        self.config = config
        self.listen = listen
        self.member = EtcdMember(data, config)
        self.is_learner = True
        self._etcd: Etcd | None = None
        self._store: Store | None = None
        self._lease: int | None = None
        self.backup_lock = asyncio.Lock()

    @property
    def etcd(self) -> Etcd:
        assert self._etcd is not None
        return self._etcd

    @property
    def store(self) -> Store:
        assert self._store is not None
        return self._store

    async def run(self, stop: asyncio.Event) -> None:
        # A jacod killed mid-backup leaves its snapshot temp file: it holds the CA key.
        shutil.rmtree(self.data.path / "backup-tmp", ignore_errors=True)
        self._etcd = await self.member.start()
        self._store = Store(self._etcd)
        await self._complete_restore()
        server = grpc.aio.server(
            options=[
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                # accept the clients' keepalive pings (every 10 s, also mid-stream)
                ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
                ("grpc.keepalive_permit_without_calls", 1),
            ]
        )
        pb_grpc.add_JacoServicer_to_server(JacoService(self), server)
        chain = self.data.node_cert.read_bytes() + self.data.ca_cert.read_bytes()
        credentials = grpc.ssl_server_credentials([(self.data.node_key.read_bytes(), chain)])
        try:
            server.add_secure_port(self.listen, credentials)
        except RuntimeError:
            await self.member.stop()
            raise Unavailable(f"cannot listen on {self.listen} (in use?)") from None
        await server.start()
        log.info("jacod %s (%s) serving on %s", self.config.name, __version__, self.listen)
        tasks = [
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
            asyncio.create_task(self._promote_learners(), name="promoter"),
            asyncio.create_task(self._watch_etcd(stop), name="etcd-watchdog"),
        ]
        try:
            await stop.wait()
        finally:
            log.info("stopping")
            await server.stop(grace=3)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._lease is not None:
                # Tell the others at once that this node is going (bounded: quorum may be gone).
                with contextlib.suppress(JacoError, TimeoutError):
                    await asyncio.wait_for(self.etcd.lease_revoke(self._lease), 2)
            await self.member.stop()

    async def _complete_restore(self) -> None:
        """After `jaco restore`: become the only member and record RESTORE_COMPLETED, once."""
        if not self.data.restore_marker.exists():
            return
        marker = json.loads(self.data.restore_marker.read_text())
        status = await self.etcd.status()
        node = {
            "name": self.config.name,
            "api_address": self.config.api_address,
            "peer_url": self.config.peer_url,
            "member_id": f"{status.member_id:x}",
            "voter": True,
            "joined_at": now(),
        }
        if await self.store.complete_restore(node, marker):
            log.info("restore from index %s completed", marker["snapshot_index"])
        self.data.restore_marker.unlink()

    async def _watch_etcd(self, stop: asyncio.Event) -> None:
        """A jacod without its etcd is useless: exit (and let systemd restart us)."""
        process = self.member.process
        assert process is not None
        code = await process.wait()
        if not stop.is_set():
            log.error("etcd exited unexpectedly with code %s; see %s", code, self.data.etcd_log)
            self.exit_code = 1
            stop.set()

    exit_code = 0

    async def _heartbeat(self) -> None:
        """Publish this node's liveness and raft position under a short lease."""
        key = P_ALIVE + self.config.name
        while True:
            try:
                status = await self.etcd.status()
                self.is_learner = status.is_learner
                if not status.is_learner:
                    if self._lease is None or not await self.etcd.lease_keepalive(self._lease):
                        self._lease = await self.etcd.lease_grant(ALIVE_TTL)
                    beat = {
                        "name": self.config.name,
                        "address": self.config.api_address,
                        "raft_index": status.raft_index,
                        "raft_term": status.raft_term,
                        "member_id": f"{status.member_id:x}",
                        "leader_id": f"{status.leader_id:x}",
                        "at": now(),
                    }
                    await self.etcd.txn([], [op_put(key, encode(beat), self._lease)])
            except JacoError as exc:
                log.warning("heartbeat: %s", exc.message)
            await asyncio.sleep(TICK)

    async def _promote_learners(self) -> None:
        """On the leader: promote learners that caught up, and mark promoted nodes as voters."""
        actor = f"node:{self.config.name}"
        while True:
            await asyncio.sleep(TICK)
            try:
                status = await self.etcd.status()
                if status.leader_id != status.member_id:
                    continue
                voters = set()
                for member in await self.etcd.members():
                    if member.is_learner:
                        with contextlib.suppress(EtcdError):  # not caught up yet
                            await self.etcd.promote(member.id)
                            log.info("promoted etcd learner %x to voter", member.id)
                            voters.add(member.id)
                    else:
                        voters.add(member.id)
                for node in await self.store.nodes():
                    mid = int(node["member_id"], 16) if node.get("member_id") else 0
                    if not node.get("voter") and mid in voters:
                        await self.store.update_node(
                            actor, node["name"], "NODE_PROMOTED", voter=True
                        )
            except JacoError as exc:
                log.warning("promoter: %s", exc.message)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="jacod",
        description="Run one jaco node: its etcd member and the TLS gRPC API. The data dir "
        "must have been primed by `jaco cluster init`, `jaco node join` or `jaco restore`.",
    )
    parser.add_argument("--name", required=True, help="this node's name (as primed)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the node's data dir (default $JACO_DATA_DIR or /var/lib/jaco)",
    )
    parser.add_argument(
        "--listen",
        default=None,
        help="API address to listen on (default 0.0.0.0:<api port from init>)",
    )
    parser.add_argument(
        "--etcd-client-port",
        type=int,
        default=None,
        help="loopback port of the etcd client API (default: as primed)",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def _serve(node: Node) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.run(stop)
    return node.exit_code


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    data = DataDir(args.data_dir or data_dir_from_env())
    try:
        config = data.load()
        if config.name != args.name:
            raise DataDirError(f"{data.path} belongs to node {config.name}, not {args.name}")
        if args.etcd_client_port:
            config.etcd_client_port = args.etcd_client_port
        lock = data.lock()
        listen = args.listen or f"0.0.0.0:{config.api_port}"
        code = asyncio.run(_serve(Node(data, config, listen)))
        lock.close()
    except JacoError as exc:
        print(f"jacod: {exc.message}", file=sys.stderr)
        sys.exit(exc.exit_code)
    sys.exit(code)


if __name__ == "__main__":
    main()
