"""`jaco cluster` and `jaco node`: create a cluster, show its nodes, add nodes to it."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated

import typer

from jaco.cli.common import (
    AdvertiseHost,
    ApiPort,
    AsJson,
    ClientPort,
    DataDirOpt,
    PeerPort,
    Server,
    check_range,
    err,
    open_data_dir,
    operator_errors,
    out,
    primed,
    print_json,
    print_table,
    read_secret,
    safe,
    table,
)
from jaco.client.connection import open_client
from jaco.errors import InvalidArgument
from jaco.files import write_private
from jaco.model.tokens import MAX_JOIN_TTL
from jaco.v1 import jaco_pb2 as pb

cluster_app = typer.Typer(no_args_is_help=True, help="Create a cluster; show its nodes.")
node_app = typer.Typer(no_args_is_help=True, help="Add nodes to the cluster; remove lost ones.")


@cluster_app.command("init")
@operator_errors
def cluster_init(
    name: Annotated[str, typer.Option(help="This node's name.")],
    data_dir: DataDirOpt = None,
    advertise_host: AdvertiseHost = None,
    api_port: ApiPort = 7000,
    etcd_client_port: ClientPort = 2379,
    etcd_peer_port: PeerPort = 2380,
    subnet: Annotated[str, typer.Option(help="Subnet replica IPs come from.")] = "10.42.0.0/16",
    token_file: Annotated[
        Path | None,
        typer.Option(help="Also write the first operator token to this file (mode 0600)."),
    ] = None,
) -> None:
    """Create a new cluster on this (stopped) node with an empty data dir.

    Creates the cluster id, the cluster CA, this node's certificates, a single-member etcd and
    the first operator token, which is printed once: store it like a password.
    """
    from jaco.node.bootstrap import init_cluster, node_ports

    ports, warnings = node_ports(advertise_host, api_port, etcd_client_port, etcd_peer_port)
    data = open_data_dir(data_dir)
    cluster_id, token = init_cluster(data, name, ports, subnet)
    if token_file:
        write_private(token_file, token.encode() + b"\n")
    out.print(f"Created cluster {cluster_id} with node {name} in {data.path}")
    primed(data, warnings)
    if token_file:
        out.print(f"The first operator token was written to {token_file} (mode 0600).")
    else:
        out.print("First operator token (shown once; export it as JACO_TOKEN):")
        out.print(token, highlight=False, soft_wrap=True)


@cluster_app.command("status")
@operator_errors
def cluster_status(server: Server = "", as_json: AsJson = False) -> None:
    """Nodes of the cluster: name, address, state, leader, raft index and term."""
    with open_client(server) as client:
        reply = client.call("ClusterStatus", pb.ClusterStatusRequest())
    if as_json:
        return print_json(reply)
    rows = [
        (n.name, n.address, n.state, "*" if n.leader else "", n.raft_index, n.raft_term)
        for n in reply.nodes
    ]
    columns = ("NAME", "ADDRESS", "STATE", "LEADER", "RAFT INDEX", "RAFT TERM")
    print_table(table(columns, rows, f"cluster {reply.cluster_id}"))


@node_app.command("issue-join-token")
@operator_errors
def issue_join_token(
    ttl: Annotated[int, typer.Option(help="Seconds until the token expires.")] = 3600,
    server: Server = "",
) -> None:
    """Issue a single-use, expiring token for one new node to join."""
    check_range("--ttl", ttl, 1, MAX_JOIN_TTL, " seconds")
    with open_client(server) as client:
        reply = client.call("IssueJoinToken", pb.IssueJoinTokenRequest(ttl_seconds=ttl))
    err.print(safe(f"Single-use join token (expires {reply.expires_at}):"))
    out.print(safe(reply.token), soft_wrap=True)


@node_app.command("remove")
@operator_errors
def node_remove(
    name: Annotated[str, typer.Argument(help="The node's name (`jaco cluster status`).")],
    server: Server = "",
) -> None:
    """Remove a node the cluster has lost for good (its host gone, its disk wiped): its etcd
    member, its record and liveness key; the replicas placed on it go to the other nodes.
    A learner that never came back blocks every later join until it is removed. Ask another
    node than the one removed. To have it back: an empty data dir and a new join token. After
    a restore, replicas stay placed on the nodes the backup names, for each to find its own
    when it rejoins under its old name: for one that will not (the node the restore replaced,
    if restored under another name), remove that name, and its replicas are placed here."""
    with open_client(server) as client:
        reply = client.call("RemoveNode", pb.RemoveNodeRequest(name=name))
    member = "its etcd member removed" if reply.member_removed else "etcd had no member left"
    out.print(safe(f"Removed node {reply.name} ({member}; {reply.replicas_moved} replicas moved)"))


@node_app.command("join")
@operator_errors
def node_join(
    peer: Annotated[str, typer.Option(help="A running node's API address HOST:PORT.")],
    token_file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Read the join token (from `jaco node issue-join-token`) from FILE, or from "
            "stdin with '-'. Or set JACO_JOIN_TOKEN.",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            help="Deprecated: every local user sees it in the process list. "
            "Use --token-file or JACO_JOIN_TOKEN."
        ),
    ] = None,
    name: Annotated[str | None, typer.Option(help="This node's name (default: hostname).")] = None,
    data_dir: DataDirOpt = None,
    advertise_host: AdvertiseHost = None,
    api_port: ApiPort = 7000,
    etcd_client_port: ClientPort = 2379,
    etcd_peer_port: PeerPort = 2380,
    wait: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="How long to wait while an earlier node is still catching up as a learner.",
        ),
    ] = 300,
) -> None:
    """Join this (stopped, empty) node to a running cluster; then start jacod.

    The node enters as an etcd learner and is promoted to voter once it has caught up, so a
    join never costs the cluster its quorum. etcd admits one learner at a time: nodes joined
    back to back wait for each other (up to --wait seconds).
    """
    join_token = _join_token(token, token_file)
    node_name = name or socket.gethostname().split(".")[0].lower()
    from jaco.node.bootstrap import join_cluster, node_ports

    ports, warnings = node_ports(advertise_host, api_port, etcd_client_port, etcd_peer_port, peer)
    data = open_data_dir(data_dir)
    cluster_id = join_cluster(
        data,
        node_name,
        ports,
        peer,
        join_token,
        wait,
        lambda line: err.print(safe(line), soft_wrap=True),
    )
    out.print(f"Node {node_name} admitted to cluster {cluster_id}; data dir {data.path} primed.")
    primed(data, warnings)


def _join_token(flag: str | None, token_file: Path | None) -> str:
    """The join token from --token-file, JACO_JOIN_TOKEN or (deprecated) --token."""
    if flag is not None and token_file is not None:
        raise InvalidArgument("give the join token once: --token-file, not --token too")
    if flag is not None:
        err.print(
            "warning: --token is visible to every local user in the process list; use "
            "--token-file FILE, --token-file - (stdin) or JACO_JOIN_TOKEN",
            soft_wrap=True,
        )
        return flag
    if token_file is not None:
        return read_secret(token_file, "join token")
    from_env = os.environ.get("JACO_JOIN_TOKEN", "").strip()
    if not from_env:
        raise InvalidArgument(
            "no join token: use --token-file FILE, --token-file - (stdin) or set JACO_JOIN_TOKEN"
        )
    return from_env
