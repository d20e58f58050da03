"""jacod's API: the gRPC server over TLS that serves a started node (jaco.server.node).

Imported by jaco.server.daemon once the node's etcd member is spawned: this module and what it
imports (gRPC, the service, the store, certificates) take about a quarter of a second to load,
which now passes while etcd starts instead of before it (docs/benchmarks.md, stop 38).
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from jaco import __version__
from jaco.errors import Unavailable
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
    except RuntimeError:  # jaco.server.daemon stops the member on the way out
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
