"""Priming a node's data dir: `jaco cluster init` (a new cluster) and `jaco node join`.

Both run with jacod stopped and refuse a data dir that holds anything. Init starts the new
member's etcd once to write the cluster's first records, then stops it; join asks a running
node to admit this one as an etcd learner (it is promoted to voter once it has caught up).
"""

from __future__ import annotations

import asyncio
import ipaddress
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jaco.client.connection import Client, Connection, fetch_pinned_ca, split_server
from jaco.errors import InvalidArgument, LearnerPending, TrustError
from jaco.files import write_private
from jaco.model import pki, tokens
from jaco.model.ipam import check_subnet
from jaco.model.keys import new_cluster_id, now
from jaco.model.names import check_host, check_name
from jaco.model.store import Store
from jaco.node.config import DataDir, NodeConfig, url_host
from jaco.node.etcd_member import EtcdMember
from jaco.v1 import jaco_pb2 as pb

JOIN_WAIT = 300.0  # seconds a join waits, by default, for earlier nodes still catching up
RESEND_PAUSE = 1.0


@dataclass
class Ports:
    advertise_host: str
    api_port: int = 7000
    etcd_client_port: int = 2379
    etcd_peer_port: int = 2380

    def check(self) -> None:
        named = {
            "--api-port": self.api_port,
            "--etcd-client-port": self.etcd_client_port,
            "--etcd-peer-port": self.etcd_peer_port,
        }
        for flag, port in named.items():
            if not 1 <= port <= 65535:
                raise InvalidArgument(f"{flag} {port} is not a port number (1-65535)")
        if len(set(named.values())) != len(named):
            raise InvalidArgument("the API, etcd client and etcd peer ports must differ")
        check_host(self.advertise_host, "--advertise-host")


def single_member_config(name: str, cluster_id: str, ports: Ports) -> NodeConfig:
    """A node that starts a store of its own (a new cluster, or a restored one)."""
    config = NodeConfig(
        name=name,
        cluster_id=cluster_id,
        advertise_host=ports.advertise_host,
        api_port=ports.api_port,
        etcd_client_port=ports.etcd_client_port,
        etcd_peer_port=ports.etcd_peer_port,
        initial_cluster="",
        initial_cluster_state="new",
    )
    config.initial_cluster = f"{name}={config.peer_url}"
    return config


def default_advertise_host() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def advertised(given: str | None, warn: Callable[[str], None], peer: str = "") -> str:
    """The address other nodes reach this one at: --advertise-host, else what the host's name
    resolves to. Where that is a loopback address (Debian's /etc/hosts maps the host's name to
    127.0.1.1) a new or restored node works alone, but no other node can reach or join it:
    `warn` says so. A node joining a `peer` on another host could never be reached by it, and
    its etcd learner would block every later join: refused, before anything is sent."""
    if given:
        return given
    host = default_advertise_host()
    if ipaddress.ip_address(host).is_loopback:
        if peer and not _loopback(split_server(peer)[0]):
            raise InvalidArgument(
                f"this host's name resolves to {host}, a loopback address, which {peer} could "
                "never reach: give --advertise-host this node's address"
            )
        warn(
            f"warning: this host's name resolves to {host}, a loopback address: no other node "
            "can reach or join this one (give --advertise-host an address they can reach)"
        )
    return host


def node_ports(
    advertise_host: str | None, api_port: int, client_port: int, peer_port: int, peer: str = ""
) -> tuple[Ports, list[str]]:
    """The ports of a node init, join or restore primes, and the warnings to print once it
    is done (`advertised`: a refusal before the work stays its one line)."""
    warnings: list[str] = []
    host = advertised(advertise_host, warnings.append, peer)
    return Ports(host, api_port, client_port, peer_port), warnings


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def write_pki(data: DataDir, ca_pem: bytes, cert_pem: bytes, key_pem: bytes) -> None:
    write_private(data.ca_cert, ca_pem)
    write_private(data.node_cert, cert_pem)
    write_private(data.node_key, key_pem)


def empty_data_dir(data: DataDir, created: bool) -> None:
    """Leave an empty data dir behind on failure, never a half-primed one."""
    if data.path.is_dir():
        for child in data.path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        if created:
            data.path.rmdir()


def init_cluster(data: DataDir, name: str, ports: Ports, subnet: str) -> tuple[str, str]:
    """Create a cluster on this node; returns (cluster_id, first operator token)."""
    check_name("node", name)
    ports.check()
    subnet = check_subnet(subnet)
    data.require_empty()
    created = not data.path.exists()
    data.create()
    try:
        cluster_id = new_cluster_id()
        ca = pki.create_ca(cluster_id)
        node = pki.issue(ca, name, pki.node_hosts(name, ports.advertise_host), pki.NODE_VALID_DAYS)
        write_pki(data, ca.cert_pem, node.cert_pem, node.key_pem)
        config = single_member_config(name, cluster_id, ports)
        token = tokens.new_token(tokens.OPERATOR, pki.fingerprint(ca.cert_pem))
        asyncio.run(_bootstrap_store(data, config, ca, token, subnet))
        data.save(config)
    except BaseException:
        empty_data_dir(data, created)
        raise
    return cluster_id, str(token)


async def _bootstrap_store(
    data: DataDir, config: NodeConfig, ca: pki.KeyPair, token: tokens.Token, subnet: str
) -> None:
    member = EtcdMember(data, config)
    etcd = await member.start()
    try:
        status = await etcd.status()
        node = {
            "name": config.name,
            "api_address": config.api_address,
            "peer_url": config.peer_url,
            "member_id": f"{status.member_id:x}",
            "voter": True,
            "joined_at": now(),
        }
        await Store(etcd).bootstrap(config.cluster_id, ca, node, token, subnet)
    finally:
        await member.stop()


def join_cluster(
    data: DataDir,
    name: str,
    ports: Ports,
    peer: str,
    join_token: str,
    wait: float = JOIN_WAIT,
    on_wait: Callable[[str], None] | None = None,
) -> str:
    """Prime this node's data dir to join the cluster at `peer`; returns the cluster id.

    While an earlier node is still catching up as a learner the join is sent again, for up
    to `wait` seconds; `on_wait` is told once. The data dir is written only once the cluster
    has admitted this node: a join that fails or is killed leaves it as it was.
    """
    check_name("node", name)
    ports.check()
    if not 0 <= wait <= 86400:
        raise InvalidArgument(f"--wait {wait:g} is not a number of seconds from 0 to 86400")
    parsed = tokens.parse_token(join_token, tokens.JOIN)
    data.require_empty()
    ca_pem = fetch_pinned_ca(peer, parsed.ca_fingerprint)
    csr_pem, key_pem = pki.make_csr(name, pki.node_hosts(name, ports.advertise_host))
    request = pb.JoinRequest(
        token=join_token,
        name=name,
        api_address=f"{url_host(ports.advertise_host)}:{ports.api_port}",
        peer_url=f"https://{url_host(ports.advertise_host)}:{ports.etcd_peer_port}",
        csr_pem=csr_pem.decode(),
    )
    with Client(Connection(peer, join_token, ca_pem), timeout=60) as client:
        reply = _send_join(client, request, wait, on_wait or (lambda _: None))
    if pki.fingerprint(reply.ca_pem.encode()) != parsed.ca_fingerprint:
        raise TrustError("the peer answered with a CA that does not match the join token")
    created = not data.path.exists()
    data.create()
    try:
        write_pki(data, reply.ca_pem.encode(), reply.cert_pem.encode(), key_pem)
        data.save(
            NodeConfig(
                name=name,
                cluster_id=reply.cluster_id,
                advertise_host=ports.advertise_host,
                api_port=ports.api_port,
                etcd_client_port=ports.etcd_client_port,
                etcd_peer_port=ports.etcd_peer_port,
                initial_cluster=reply.initial_cluster,
                initial_cluster_state="existing",
            )
        )
    except BaseException:
        empty_data_dir(data, created)
        raise
    return str(reply.cluster_id)


def _send_join(
    client: Client, request: pb.JoinRequest, wait: float, on_wait: Callable[[str], None]
) -> Any:
    """Send the join until the cluster admits this node. etcd admits one learner at a time:
    while an earlier node is still catching up the server answers LearnerPending, and the very
    same request is sent again (its token is consumed only once this node is added)."""
    started = time.monotonic()
    told = False
    while True:
        try:
            return client.call("Join", request)
        except LearnerPending as exc:
            waited = time.monotonic() - started
            if waited >= wait:
                raise LearnerPending(
                    f"gave up after {waited:.0f} s: {exc.message}; make sure jacod runs on "
                    "that node and reaches the cluster (see its log), then run this join "
                    "again (the join token stays valid until it expires)"
                ) from None
            if not told:
                on_wait(
                    f"waiting: {exc.message} (etcd admits one learner at a time); "
                    f"giving up after {wait:g} s…"
                )
                told = True
        time.sleep(RESEND_PAUSE)
