"""jacod: one node of the cluster.

It holds the data dir's lock, runs the node's etcd member as a child process, serves the
gRPC API over TLS, keeps the node's liveness key fresh, promotes caught-up learners (when its
member leads), and on SIGTERM stops the API, then etcd, and exits cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

import grpc

from jaco import __version__
from jaco.errors import DataDirError, JacoError, Unavailable
from jaco.node.config import DataDir, data_dir_from_env
from jaco.server.convert import serialized_or_message
from jaco.server.node import Node
from jaco.server.service import JacoService
from jaco.v1 import jaco_pb2 as pb

log = logging.getLogger("jacod")


# Each RPC's handler by (client streaming, server streaming), as grpc_tools generates them.
HANDLER_KINDS = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}
PRESERIALIZED = {"Backup"}  # RPCs whose service yields some messages serialized already


def add_service(server: grpc.aio.Server, service: JacoService) -> None:
    """What the generated `add_JacoServicer_to_server` does, from the same descriptor, except
    that Backup's data messages go out as the serialized bytes the service yields."""
    descriptor = pb.DESCRIPTOR.services_by_name["Jaco"]
    handlers = {}
    for method in descriptor.methods:
        response = getattr(pb, method.output_type.name)
        handlers[method.name] = HANDLER_KINDS[method.client_streaming, method.server_streaming](
            getattr(service, method.name),
            request_deserializer=getattr(pb, method.input_type.name).FromString,
            response_serializer=serialized_or_message
            if method.name in PRESERIALIZED
            else response.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(descriptor.full_name, handlers),)
    )
    server.add_registered_method_handlers(descriptor.full_name, handlers)  # type: ignore[attr-defined]  # not in the stubs


async def run(node: Node, listen: str, stop: asyncio.Event) -> None:
    """Serve until `stop` is set: etcd first, then the API; on the way out the API first."""
    await node.start()
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            # accept the clients' keepalive pings (every 10 s, also mid-stream)
            ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
            ("grpc.keepalive_permit_without_calls", 1),
            # ... also while a call sends nothing for a while (a backup's meta pass over 10⁷
            # keys takes a minute): without this, gRPC counts them as strikes and closes the
            # connection with GOAWAY too_many_pings after about 30 s of silence.
            ("grpc.http2.max_ping_strikes", 0),
        ]
    )
    add_service(server, JacoService(node))
    data = node.data
    chain = data.node_cert.read_bytes() + data.ca_cert.read_bytes()
    credentials = grpc.ssl_server_credentials([(data.node_key.read_bytes(), chain)])
    try:
        server.add_secure_port(listen, credentials)
    except RuntimeError:
        await node.member.stop()
        raise Unavailable(f"cannot listen on {listen} (in use?)") from None
    await server.start()
    log.info("jacod %s (%s) serving on %s", node.config.name, __version__, listen)
    tasks = node.duties(stop)
    try:
        await stop.wait()
    finally:
        log.info("stopping")
        await server.stop(grace=3)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await node.stop()


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


async def _serve(node: Node, listen: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await run(node, listen, stop)
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
        code = asyncio.run(_serve(Node(data, config), listen))
        lock.close()
    except JacoError as exc:
        print(f"jacod: {exc.message}", file=sys.stderr)
        sys.exit(exc.exit_code)
    sys.exit(code)


if __name__ == "__main__":
    main()
