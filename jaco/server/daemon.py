"""jacod: one node of the cluster.

It holds the data dir's lock, runs the node's etcd member as a child process, serves the
gRPC API over TLS (jaco.server.api), keeps the node's liveness key fresh, promotes caught-up
learners (when its member leads), and on SIGTERM stops the API, then etcd, and exits cleanly.

This module, the entry point, imports only what starting etcd needs: etcd is spawned first,
and the API's modules load while it starts (a restore's time to READY, and every restart's).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from jaco.errors import DataDirError, JacoError
from jaco.node.config import DataDir, NodeConfig, data_dir_from_env
from jaco.node.etcd_member import EtcdMember


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="jacod",
        description="Run one jaco node: its etcd member and the TLS gRPC API. The data dir "
        "must have been primed by `jaco cluster init`, `jaco node join` or `jaco restore`.",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="this node's name, checked against the data dir's (default: the node the data dir "
        "was primed for, so a unit file need not repeat the name given to init, join or restore)",
    )
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


async def _serve(data: DataDir, config: NodeConfig, listen: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    member = EtcdMember(data, config)
    await member.spawn()
    try:
        # The API's modules, while etcd starts (it takes longer than they do to load).
        from jaco.server.api import run
        from jaco.server.node import Node

        node = Node(data, config, member)
        await run(node, listen, stop)
    finally:
        await member.stop()  # stopped already unless jacod failed before serving: then here
    return node.exit_code


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    data = DataDir(args.data_dir or data_dir_from_env())
    try:
        config = data.load()
        if args.name is not None and config.name != args.name:
            raise DataDirError(f"{data.path} belongs to node {config.name}, not {args.name}")
        if args.etcd_client_port:
            config.etcd_client_port = args.etcd_client_port
        lock = data.lock()
        listen = args.listen or f"0.0.0.0:{config.api_port}"
        code = asyncio.run(_serve(data, config, listen))
        lock.close()
    except JacoError as exc:
        print(f"jacod: {exc.message}", file=sys.stderr)
        sys.exit(exc.exit_code)
    sys.exit(code)


if __name__ == "__main__":
    main()
