"""`jaco`: the operator CLI.

Online commands are thin clients of a jacod's gRPC API (`--server` / JACO_SERVER and
JACO_TOKEN). Offline commands (`cluster init`, `node join`, `restore`) prime a stopped node's
data dir. Expected failures print one line to stderr and exit non-zero; never a traceback.
"""

from __future__ import annotations

import functools
import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from google.protobuf.json_format import MessageToDict
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from jaco import __version__
from jaco.archive import check_version, read_archive
from jaco.backup import DEFAULT_TIMEOUT, take_backup
from jaco.client import open_client
from jaco.config import DataDir, data_dir_from_env, write_private
from jaco.errors import InvalidArgument, JacoError
from jaco.v1 import jaco_pb2 as pb

F = TypeVar("F", bound=Callable[..., Any])
out = Console()
err = Console(stderr=True)

app = typer.Typer(
    name="jaco",
    no_args_is_help=True,
    add_completion=False,
    help="Operate a jaco cluster: deployments, routes, certs, tokens, the audit log, nodes, "
    "and backups of all of it.",
)
cluster_app = typer.Typer(no_args_is_help=True, help="Create a cluster; show its nodes.")
route_app = typer.Typer(no_args_is_help=True, help="HTTP routes to deployments.")
cert_app = typer.Typer(no_args_is_help=True, help="Certificates issued by the cluster CA.")
token_app = typer.Typer(no_args_is_help=True, help="Operator tokens (the cluster keeps hashes).")
node_app = typer.Typer(no_args_is_help=True, help="Add nodes to the cluster.")
backup_app = typer.Typer(
    invoke_without_command=True,
    help="Write a consistent snapshot of all cluster state to a tarball.",
)
audit_app = typer.Typer(
    invoke_without_command=True, help="The append-only, hash-chained audit log."
)
app.add_typer(cluster_app, name="cluster")
app.add_typer(route_app, name="route")
app.add_typer(cert_app, name="cert")
app.add_typer(token_app, name="token")
app.add_typer(node_app, name="node")
app.add_typer(audit_app, name="audit")
app.add_typer(backup_app, name="backup")

Server = Annotated[
    str,
    typer.Option(
        "--server",
        "-s",
        envvar="JACO_SERVER",
        help="A jacod API address HOST:PORT (env JACO_SERVER).",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="The node's data dir (default $JACO_DATA_DIR or /var/lib/jaco)."
    ),
]
AdvertiseHost = Annotated[
    str | None, typer.Option(help="Host or IP other nodes and clients reach this node at.")
]
ApiPort = Annotated[int, typer.Option(help="Port the jacod API will listen on.")]
ClientPort = Annotated[int, typer.Option(help="Loopback port of the node's etcd client API.")]
PeerPort = Annotated[int, typer.Option(help="Port of the node's etcd peer (raft) traffic.")]


def operator_errors(fn: F) -> F:
    """Turn JacoErrors into one line on stderr and the error's exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except JacoError as exc:
            err.print(f"[red]error:[/red] {exc.message}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None
        except OSError as exc:  # the filesystem refused: say what and where, no traceback
            where = f": {exc.filename}" if exc.filename else ""
            err.print(
                f"[red]error:[/red] {exc.strerror or exc}{where}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _data_dir(path: Path | None) -> DataDir:
    return DataDir(path or data_dir_from_env())


def _print_json(message: Any) -> None:
    if hasattr(message, "DESCRIPTOR"):
        message = MessageToDict(
            message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
    out.print_json(json.dumps(message))


# -- cluster --------------------------------------------------------------------------------


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
    from jaco.bootstrap import Ports, default_advertise_host, init_cluster

    ports = Ports(
        advertise_host or default_advertise_host(), api_port, etcd_client_port, etcd_peer_port
    )
    data = _data_dir(data_dir)
    cluster_id, token = init_cluster(data, name, ports, subnet)
    if token_file:
        write_private(token_file, token.encode() + b"\n")
    out.print(f"Created cluster {cluster_id} with node {name} in {data.path}")
    out.print(f"Start it with: jacod --name {name} --data-dir {data.path}")
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
        return _print_json(reply)
    table = Table(title=f"cluster {reply.cluster_id}")
    for col in ("NAME", "ADDRESS", "STATE", "LEADER", "RAFT INDEX", "RAFT TERM"):
        table.add_column(col)
    for n in reply.nodes:
        table.add_row(
            n.name, n.address, n.state, "*" if n.leader else "", str(n.raft_index), str(n.raft_term)
        )
    out.print(table)


# -- deployments ----------------------------------------------------------------------------


@app.command("status")
@operator_errors
def status(server: Server = "", as_json: AsJson = False) -> None:
    """Deployments with their replicas, IPs and nodes."""
    with open_client(server) as client:
        reply = client.call("Status", pb.StatusRequest())
    if as_json:
        return _print_json(reply)
    table = Table(title=f"deployments of cluster {reply.cluster_id}")
    for col in ("DEPLOYMENT", "IMAGE", "REPLICAS", "REPLICA", "IP", "NODE"):
        table.add_column(col)
    for d in reply.deployments:
        if not d.placed:
            table.add_row(d.name, d.image, str(d.replicas), "-", "-", "-")
        for i, r in enumerate(d.placed):
            first = i == 0
            table.add_row(
                d.name if first else "",
                d.image if first else "",
                str(d.replicas) if first else "",
                r.id,
                r.ip,
                r.node,
            )
    out.print(table)


def _parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"invalid --env {pair!r}: use KEY=VALUE")
        env[key] = value
    return env


def _check_count(replicas: int) -> int:
    if replicas < 0:
        raise InvalidArgument(f"replicas cannot be negative ({replicas})")
    return replicas


@app.command("deploy")
@operator_errors
def deploy(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    image: Annotated[str, typer.Option(help="Container image, e.g. nginx:1.27.")],
    replicas: Annotated[int, typer.Option(help="How many replicas to run.")] = 1,
    env: Annotated[list[str] | None, typer.Option(help="KEY=VALUE, repeatable.")] = None,
    server: Server = "",
    as_json: AsJson = False,
) -> None:
    """Create a deployment: its replicas get nodes and IPs from the cluster."""
    request = pb.DeployRequest(
        name=name, image=image, replicas=_check_count(replicas), env=_parse_env(env or [])
    )
    with open_client(server) as client:
        reply = client.call("Deploy", request)
    if as_json:
        return _print_json(reply)
    ips = ", ".join(r.ip for r in reply.placed) or "none"
    out.print(f"Deployed {reply.name} ({reply.image}) with {reply.replicas} replica(s): {ips}")


@app.command("scale")
@operator_errors
def scale(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    replicas: Annotated[int, typer.Option(help="New replica count.")],
    server: Server = "",
) -> None:
    """Change a deployment's replica count (IPs of removed replicas are released)."""
    with open_client(server) as client:
        reply = client.call("Scale", pb.ScaleRequest(name=name, replicas=_check_count(replicas)))
    out.print(f"Scaled {reply.name} to {reply.replicas} replica(s)")


@app.command("rm")
@operator_errors
def remove(
    name: Annotated[str, typer.Argument(help="Deployment name.")], server: Server = ""
) -> None:
    """Delete a deployment, its replicas and their IPs."""
    with open_client(server) as client:
        client.call("RemoveDeployment", pb.RemoveDeploymentRequest(name=name))
    out.print(f"Removed {name}")


# -- routes ---------------------------------------------------------------------------------


@route_app.command("add")
@operator_errors
def route_add(
    name: Annotated[str, typer.Argument(help="Route name.")],
    host: Annotated[str, typer.Option(help="Host name the route serves.")],
    deployment: Annotated[str, typer.Option(help="Deployment that receives the traffic.")],
    port: Annotated[int, typer.Option(help="Container port.")] = 80,
    path: Annotated[str, typer.Option(help="Path prefix.")] = "/",
    server: Server = "",
) -> None:
    """Route HOST/PATH to a deployment's port."""
    with open_client(server) as client:
        reply = client.call(
            "AddRoute", pb.Route(name=name, host=host, path=path, deployment=deployment, port=port)
        )
    out.print(f"Route {reply.name}: {reply.host}{reply.path} -> {reply.deployment}:{reply.port}")


@route_app.command("ls")
@operator_errors
def route_ls(server: Server = "", as_json: AsJson = False) -> None:
    """List routes."""
    with open_client(server) as client:
        reply = client.call("ListRoutes", pb.Empty())
    if as_json:
        return _print_json(reply)
    table = Table()
    for col in ("NAME", "HOST", "PATH", "DEPLOYMENT", "PORT"):
        table.add_column(col)
    for r in reply.routes:
        table.add_row(r.name, r.host, r.path, r.deployment, str(r.port))
    out.print(table)


@route_app.command("rm")
@operator_errors
def route_rm(name: Annotated[str, typer.Argument(help="Route name.")], server: Server = "") -> None:
    """Remove a route."""
    with open_client(server) as client:
        client.call("RemoveRoute", pb.RemoveRouteRequest(name=name))
    out.print(f"Removed route {name}")


# -- certs ----------------------------------------------------------------------------------


@cert_app.command("issue")
@operator_errors
def cert_issue(
    common_name: Annotated[str, typer.Argument(help="Certificate common name.")],
    out_dir: Annotated[Path, typer.Option(help="Where to write NAME.crt, NAME.key, ca.crt.")],
    dns: Annotated[list[str] | None, typer.Option(help="DNS name or IP, repeatable.")] = None,
    days: Annotated[int, typer.Option(help="Validity in days.")] = 90,
    server: Server = "",
) -> None:
    """Issue a certificate signed by the cluster CA (the key is written 0600, never stored)."""
    if days <= 0:
        raise InvalidArgument("--days must be positive")
    if not out_dir.is_dir():
        raise InvalidArgument(f"--out-dir {out_dir} is not a directory")
    with open_client(server) as client:
        reply = client.call(
            "IssueCert",
            pb.IssueCertRequest(common_name=common_name, dns_names=dns or [], valid_days=days),
        )
    write_private(out_dir / f"{common_name}.crt", reply.cert_pem.encode())
    write_private(out_dir / f"{common_name}.key", reply.key_pem.encode())
    write_private(out_dir / "ca.crt", reply.ca_pem.encode())
    out.print(
        f"Issued certificate {reply.info.serial} for {common_name} "
        f"(until {reply.info.not_after}) into {out_dir}"
    )


@cert_app.command("ls")
@operator_errors
def cert_ls(server: Server = "", as_json: AsJson = False) -> None:
    """List certificates issued by the cluster CA."""
    with open_client(server) as client:
        reply = client.call("ListCerts", pb.Empty())
    if as_json:
        return _print_json(reply)
    table = Table()
    for col in ("SERIAL", "COMMON NAME", "NAMES", "NOT AFTER"):
        table.add_column(col)
    for c in reply.certs:
        table.add_row(c.serial, c.common_name, ", ".join(c.dns_names), c.not_after)
    out.print(table)


# -- tokens ---------------------------------------------------------------------------------


@token_app.command("create")
@operator_errors
def token_create(
    role: Annotated[str, typer.Option(help="admin (read/write) or viewer (read-only).")] = "admin",
    description: Annotated[str, typer.Option(help="Who or what the token is for.")] = "",
    file: Annotated[
        Path | None,
        typer.Option(help="Write the token to this file (0600) instead of printing it."),
    ] = None,
    server: Server = "",
) -> None:
    """Create an operator token. It is shown once; the cluster keeps only its SHA-256."""
    with open_client(server) as client:
        reply = client.call(
            "CreateToken", pb.CreateTokenRequest(role=role, description=description)
        )
    if file:
        write_private(file, reply.token.encode() + b"\n")
        out.print(f"Created {role} token {reply.info.id}; written to {file}")
    else:
        out.print(f"Created {role} token {reply.info.id} (shown once):")
        out.print(reply.token, highlight=False, soft_wrap=True)


@token_app.command("ls")
@operator_errors
def token_ls(server: Server = "", as_json: AsJson = False) -> None:
    """List operator tokens (ids and roles; secrets are never stored)."""
    with open_client(server) as client:
        reply = client.call("ListTokens", pb.Empty())
    if as_json:
        return _print_json(reply)
    table = Table()
    for col in ("ID", "ROLE", "DESCRIPTION", "CREATED", "REVOKED"):
        table.add_column(col)
    for t in reply.tokens:
        table.add_row(t.id, t.role, t.description, t.created_at, "yes" if t.revoked else "")
    out.print(table)


@token_app.command("revoke")
@operator_errors
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="Token id (see `jaco token ls`).")],
    server: Server = "",
) -> None:
    """Revoke an operator token; it stops authenticating at once, on every node."""
    with open_client(server) as client:
        client.call("RevokeToken", pb.RevokeTokenRequest(id=token_id))
    out.print(f"Revoked token {token_id}")


# -- audit ----------------------------------------------------------------------------------


@audit_app.callback()
@operator_errors
def audit(
    ctx: typer.Context,
    type_: Annotated[
        list[str] | None,
        typer.Option("--type", help="Only these event types (repeatable), e.g. BACKUP_TAKEN."),
    ] = None,
    since: Annotated[str, typer.Option(help="Only events at or after (RFC 3339).")] = "",
    until: Annotated[str, typer.Option(help="Only events before (RFC 3339).")] = "",
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new events.")
    ] = False,
    server: Server = "",
    as_json: AsJson = False,
) -> None:
    """Show the audit log, oldest first. `jaco audit verify` checks its hash chain."""
    if ctx.invoked_subcommand:
        ctx.obj = server
        return
    request = pb.AuditRequest(types=type_ or [], since=since, until=until, follow=follow)
    with open_client(server) as client:
        for event in client.stream("Audit", request, timeout=None if follow else 60):
            if as_json:
                print(
                    json.dumps(
                        {
                            **MessageToDict(event, preserving_proto_field_name=True),
                            "detail": json.loads(event.detail_json),
                        }
                    ),
                    flush=True,
                )
            else:
                out.print(
                    f"{event.seq:>6} {event.at} {event.type:<22} {event.actor:<20} "
                    f"{event.detail_json}",
                    highlight=False,
                    soft_wrap=True,
                )


@audit_app.command("verify")
@operator_errors
def audit_verify(ctx: typer.Context, server: Server = "") -> None:
    """Recompute the audit log's hash chain; exit 1 if any event was altered or removed."""
    with open_client(server or ctx.obj or "") as client:
        reply = client.call("VerifyAudit", pb.Empty())
    if reply.ok:
        out.print(f"Audit chain intact: {reply.events} events")
    else:
        err.print(f"[red]Audit chain broken at event {reply.first_bad_seq}:[/red] {reply.reason}")
        raise typer.Exit(1)


# -- nodes ----------------------------------------------------------------------------------


@node_app.command("issue-join-token")
@operator_errors
def issue_join_token(
    ttl: Annotated[int, typer.Option(help="Seconds until the token expires.")] = 3600,
    server: Server = "",
) -> None:
    """Issue a single-use, expiring token for one new node to join."""
    with open_client(server) as client:
        reply = client.call("IssueJoinToken", pb.IssueJoinTokenRequest(ttl_seconds=ttl))
    err.print(f"Single-use join token (expires {reply.expires_at}):")
    out.print(reply.token, highlight=False, soft_wrap=True)


@node_app.command("join")
@operator_errors
def node_join(
    peer: Annotated[str, typer.Option(help="A running node's API address HOST:PORT.")],
    token: Annotated[
        str,
        typer.Option(
            envvar="JACO_JOIN_TOKEN", help="A join token from `jaco node issue-join-token`."
        ),
    ],
    name: Annotated[str | None, typer.Option(help="This node's name (default: hostname).")] = None,
    data_dir: DataDirOpt = None,
    advertise_host: AdvertiseHost = None,
    api_port: ApiPort = 7000,
    etcd_client_port: ClientPort = 2379,
    etcd_peer_port: PeerPort = 2380,
) -> None:
    """Join this (stopped, empty) node to a running cluster; then start jacod.

    The node enters as an etcd learner and is promoted to voter once it has caught up, so a
    join never costs the cluster its quorum.
    """
    node_name = name or socket.gethostname().split(".")[0].lower()
    from jaco.bootstrap import Ports, default_advertise_host, join_cluster

    ports = Ports(
        advertise_host or default_advertise_host(), api_port, etcd_client_port, etcd_peer_port
    )
    data = _data_dir(data_dir)
    cluster_id = join_cluster(data, node_name, ports, peer, token)
    out.print(f"Node {node_name} admitted to cluster {cluster_id}; data dir {data.path} primed.")
    out.print(
        f"Start it with: systemctl start jaco  (or: jacod --name {node_name} "
        f"--data-dir {data.path})"
    )


# -- backup and restore ---------------------------------------------------------------------


@backup_app.callback()
@operator_errors
def backup(
    ctx: typer.Context,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="The archive to write, e.g. cluster-$(date +%F).tar.gz."
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Deadline for the whole backup, seconds.")
    ] = DEFAULT_TIMEOUT,
    server: Server = "",
) -> None:
    """Stream a snapshot, consistent at one raft index, into a tarball (mode 0600).

    The archive holds the cluster CA key and token hashes: encrypt it before it leaves the
    host. `jaco backup inspect FILE` verifies an archive.
    """
    if ctx.invoked_subcommand:
        return
    if output is None:
        raise InvalidArgument("--output FILE is required (or use `jaco backup inspect FILE`)")
    if output.is_dir():
        raise InvalidArgument(f"--output {output} is a directory; name the archive file")
    shown = str(output)
    output = output.absolute()
    with open_client(server) as client, _progress() as bar:
        task = bar.add_task("snapshot", total=None)
        result = take_backup(
            client,
            output,
            timeout,
            on_size=lambda size: bar.update(task, total=size),
            progress=lambda n: bar.advance(task, n),
        )
    out.print(f"Wrote {result.size} bytes to {shown}", highlight=False, soft_wrap=True)
    meta = result.meta
    err.print(
        f"snapshot index {meta['snapshot_index']}, term {meta['snapshot_term']}, "
        f"leader {meta['leader_at_snapshot']}, cluster {meta['cluster_id']}",
        highlight=False,
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


@backup_app.command("inspect")
@operator_errors
def backup_inspect(
    archive: Annotated[Path, typer.Argument(help="A jaco backup archive (.tar.gz).")],
    as_json: AsJson = False,
) -> None:
    """Verify an archive (structure, meta.json, snapshot checksum) and show what it holds.

    Exits non-zero if the archive is damaged, or intact but from another major version.
    """
    verified = read_archive(archive)
    meta = verified.meta
    if as_json:
        _print_json({**meta, "archive_size": verified.archive_size, "verified": True})
        return check_version(meta)
    table = Table(title=f"{archive.name}: verified", show_header=False)
    for key in (
        "cluster_id",
        "snapshot_index",
        "snapshot_term",
        "leader_at_snapshot",
        "taken_at",
        "jaco_version",
        "format",
        "snapshot_size",
        "snapshot_sha256",
        "state_digest",
    ):
        table.add_row(key, str(meta[key]))
    table.add_row("records", ", ".join(f"{k}={v}" for k, v in meta["counts"].items()))
    out.print(table)
    check_version(meta)  # intact, but can this jaco restore it?


@app.command("restore")
@operator_errors
def restore_cmd(
    input_: Annotated[Path, typer.Option("--input", "-i", help="The backup archive.")],
    name: Annotated[str, typer.Option(help="This node's name in the restored cluster.")],
    data_dir: DataDirOpt = None,
    advertise_host: AdvertiseHost = None,
    api_port: ApiPort = 7000,
    etcd_client_port: ClientPort = 2379,
    etcd_peer_port: PeerPort = 2380,
) -> None:
    """Prime a fresh node (daemon stopped, empty data dir) from a backup.

    The whole archive is verified before anything is written. The next jacod start comes up as
    the single voter of the same cluster (same id, same CA: old tokens still work) and records
    RESTORE_COMPLETED. Other nodes then rejoin with `jaco node issue-join-token` / `node join`.
    """
    # Imported here: the node-side modules (PKI, etcd) would cost every command startup time.
    from jaco.bootstrap import Ports, default_advertise_host
    from jaco.restore import restore

    ports = Ports(
        advertise_host or default_advertise_host(), api_port, etcd_client_port, etcd_peer_port
    )
    data = _data_dir(data_dir)
    meta = restore(input_, data, name, ports)
    out.print(
        f"Restored cluster {meta['cluster_id']} at index {meta['snapshot_index']} "
        f"(taken {meta['taken_at']}) into {data.path} as node {name}; "
        f"state digest {meta['state_digest'][:16]}… verified."
    )
    out.print(f"Start it: systemctl start jaco  (or: jacod --name {name} --data-dir {data.path})")


def version_callback(value: bool) -> None:
    if value:
        out.print(f"jaco {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=version_callback, is_eager=True, help="Show the version."
        ),
    ] = False,
) -> None:
    """Operate a jaco cluster."""


def main() -> None:
    app(prog_name="jaco")


if __name__ == "__main__":
    main()
