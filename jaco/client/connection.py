"""The gRPC client of a jacod, used by the CLI and the flows.

Trust needs nothing but the token: an operator or join token carries the SHA-256 of the
cluster CA certificate. The client reads the certificate chain the server presents, keeps the
certificate whose fingerprint matches, and then opens a normal, fully verified TLS channel with
that CA as its only root. `JACO_CA_CERT` (a PEM file) may be given instead or as well.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc

from jaco.errors import (
    ERROR_METADATA,
    InvalidArgument,
    JacoError,
    TrustError,
    Unavailable,
    from_grpc_code,
)
from jaco.model.names import PAGE_DEPLOYMENTS, check_host
from jaco.model.tokens import OPERATOR, parse_token
from jaco.v1 import jaco_pb2 as pb
from jaco.v1 import jaco_pb2_grpc as pb_grpc

DEFAULT_PORT = 7000
# Where a command goes with neither --server nor JACO_SERVER: the node on this host, as
# etcdctl's default is the member on this host (the backup page's bare `jaco cluster status`).
LOCAL_SERVER = f"127.0.0.1:{DEFAULT_PORT}"
KEEPALIVE_MS = 10_000
# Every ping's answer waits behind what the server has queued for the link, gRPC's own
# flow-control pings' too: a stream slower than PING_TIMEOUT_MS allows is cut (loopback
# through a throttling proxy: 30 s cut a stream at 100 kB/s, not at 150; 10 s at 200 kB/s;
# gRPC's default minute at 40, not at 70). See docs/pipeline.md.
PING_TIMEOUT_MS = 30_000
BACKUP_TIMEOUT = 300.0  # a whole backup's deadline unless told (jaco backup --timeout)
MAX_BACKUP_TIMEOUT = 7 * 86400.0
# A call that reads every record on the server (the state digest, the audit chain): about
# 15 s at 10⁶ keys, growing faster than the key count (docs/benchmarks.md).
WHOLE_STORE_TIMEOUT = 600.0


def split_server(server: str) -> tuple[str, int]:
    if not server:
        raise InvalidArgument("no server given: use --server HOST:PORT or set JACO_SERVER")
    parts = urlsplit(f"//{server}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise InvalidArgument(f"invalid server address {server!r}: use HOST:PORT") from None
    try:
        return check_host(parts.hostname or "", "server address"), port
    except InvalidArgument:
        raise InvalidArgument(f"invalid server address {server!r}: use HOST:PORT") from None


def fetch_pinned_ca(server: str, fingerprint: str, timeout: float = 10.0) -> bytes:
    """The CA certificate the server presents in its chain, if it matches the pin."""
    host, port = split_server(server)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only to read the chain; trust comes from the pin
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host, port), timeout=timeout) as raw:
            with context.wrap_socket(raw, server_hostname=host) as tls:
                chain = tls._sslobj.get_unverified_chain()  # type: ignore[attr-defined]
    except OSError as exc:
        raise Unavailable(f"cannot reach {server}: {exc.strerror or exc}") from None
    for cert in chain or []:
        der = cert.public_bytes(ssl._ssl.ENCODING_DER)  # type: ignore[attr-defined]
        if hashlib.sha256(der).hexdigest() == fingerprint:
            return ssl.DER_cert_to_PEM_cert(der).encode()
    raise TrustError(
        f"{server} did not present the cluster CA the token pins ({fingerprint[:16]}…): "
        "it is another cluster's node, or something is intercepting the connection"
    )


@dataclass
class Connection:
    server: str
    token: str
    ca_pem: bytes


def connect_info(server: str | None, token: str | None, kind: str = OPERATOR) -> Connection:
    server = server or os.environ.get("JACO_SERVER", "")
    named, server = bool(server), server or LOCAL_SERVER
    token = token if token is not None else os.environ.get("JACO_TOKEN", "")
    if not token:
        raise InvalidArgument("no token: set JACO_TOKEN to an operator token")
    parsed = parse_token(token, kind)
    ca_file = os.environ.get("JACO_CA_CERT")
    if ca_file:
        try:
            ca_pem = Path(ca_file).read_bytes()
        except OSError as exc:
            raise InvalidArgument(f"cannot read JACO_CA_CERT {ca_file}: {exc.strerror}") from None
        from jaco.model.pki import fingerprint

        if fingerprint(ca_pem) != parsed.ca_fingerprint:
            raise TrustError(f"JACO_CA_CERT {ca_file} is not the CA this token belongs to")
    else:
        try:
            ca_pem = fetch_pinned_ca(server, parsed.ca_fingerprint)
        except Unavailable as exc:
            if named:
                raise
            raise Unavailable(
                f"{exc.message} (no --server or JACO_SERVER given: tried the node on this host)"
            ) from None
    return Connection(server, token, ca_pem)


def translate(exc: grpc.RpcError) -> JacoError:
    code = exc.code()  # type: ignore[attr-defined]
    details = exc.details() or code.name  # type: ignore[attr-defined]
    trailers: Any = exc.trailing_metadata() or ()  # type: ignore[attr-defined]
    error_name = next((str(item[1]) for item in trailers if item[0] == ERROR_METADATA), "")
    # jacod names its own errors; an UNAVAILABLE without a name is the transport's.
    if code == grpc.StatusCode.UNAVAILABLE and not error_name and "jaco" not in details:
        return Unavailable(f"the server is unavailable: {details}")
    return from_grpc_code(code.name, details, error_name)


class Client:
    """A blocking client: each method is an RPC with a deadline; errors become JacoErrors."""

    def __init__(self, conn: Connection, timeout: float = 30.0) -> None:
        self.conn = conn
        self.timeout = timeout
        host, port = split_server(conn.server)
        credentials = grpc.ssl_channel_credentials(root_certificates=conn.ca_pem)
        self.channel = grpc.secure_channel(
            f"{host}:{port}",
            credentials,
            options=[
                ("grpc.max_receive_message_length", 64 * 1024 * 1024),
                # A server that vanishes without a FIN/RST (power loss, partition) is noticed
                # by a ping unanswered for PING_TIMEOUT_MS, about 40 s, not at the call's
                # deadline. gRPC ends an unanswered ping after its ping timeout (a minute
                # unless set), not after the keepalive timeout.
                ("grpc.keepalive_time_ms", KEEPALIVE_MS),
                ("grpc.keepalive_timeout_ms", KEEPALIVE_MS),
                ("grpc.http2.ping_timeout_ms", PING_TIMEOUT_MS),
                ("grpc.http2.max_pings_without_data", 0),
            ],
        )
        self.stub = pb_grpc.JacoStub(self.channel)
        self.metadata = (("authorization", f"Bearer {conn.token}"),)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self.stub, method)(
                request, timeout=timeout or self.timeout, metadata=self.metadata
            )
        except grpc.RpcError as exc:
            raise translate(exc) from None

    def stream(
        self, method: str, request: Any, timeout: float | None = None
    ) -> Generator[Any, None, None]:
        call = getattr(self.stub, method)(request, timeout=timeout, metadata=self.metadata)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise translate(exc) from None
        finally:
            call.cancel()


def open_client(server: str | None, token: str | None = None, timeout: float = 30.0) -> Client:
    return Client(connect_info(server, token), timeout)


def status_pages(client: Client, timeout: float | None = None) -> Iterator[Any]:
    """`Status` a page at a time (each answer a few MiB, however many deployments there
    are), every page at the first one's revision."""
    request = pb.StatusRequest(limit=PAGE_DEPLOYMENTS)
    while True:
        page = client.call("Status", request, timeout)
        yield page
        if not page.next_after:
            return
        request = pb.StatusRequest(
            after=page.next_after, limit=PAGE_DEPLOYMENTS, revision=page.revision
        )


def full_status(client: Client, timeout: float | None = None) -> Any:
    """`Status` with every deployment, joined from its pages."""
    whole = pb.StatusResponse()
    for page in status_pages(client, timeout):
        whole.cluster_id, whole.revision = page.cluster_id, page.revision
        whole.deployments.extend(page.deployments)
    return whole
