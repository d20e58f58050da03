"""Workloads: `jaco status`, `deploy`, `scale`, `rm`, `jaco route …` and `jaco cert …`."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from jaco.cli.common import (
    AsJson,
    Server,
    check_range,
    operator_errors,
    out,
    print_json,
    print_table,
    safe,
    table,
)
from jaco.client.connection import full_status, open_client, status_pages
from jaco.errors import InvalidArgument
from jaco.files import write_private
from jaco.model.names import check_host, check_replicas
from jaco.v1 import jaco_pb2 as pb

app = typer.Typer()
route_app = typer.Typer(no_args_is_help=True, help="HTTP routes to deployments.")
cert_app = typer.Typer(no_args_is_help=True, help="Certificates issued by the cluster CA.")


@app.command("status")
@operator_errors
def status(server: Server = "", as_json: AsJson = False) -> None:
    """Deployments with their replicas, IPs and nodes."""
    with open_client(server) as client:
        if as_json:
            return write_status_json(status_pages(client), sys.stdout)
        reply = full_status(client)
    rows: list[tuple[object, ...]] = []
    for d in reply.deployments:
        if not d.placed:
            rows.append((d.name, d.image, d.replicas, "-", "-", "-"))
        for i, r in enumerate(d.placed):
            shown = (d.name, d.image, d.replicas) if i == 0 else ("", "", "")
            rows.append((*shown, r.id, r.ip, r.node))
    columns = ("DEPLOYMENT", "IMAGE", "REPLICAS", "REPLICA", "IP", "NODE")
    print_table(table(columns, rows, f"deployments of cluster {reply.cluster_id}"))


def write_status_json(pages: Iterable[Any], out: TextIO) -> None:
    """`{"cluster_id": …, "deployments": […]}` as `print_json` would print it, written a page
    at a time: at 163 500 deployments the whole reply as one dict took 806 MiB and 7.6 s.
    The state only: no next_after, no revision."""
    opened = written = False
    for page in pages:
        if not opened:
            out.write(f'{{\n  "cluster_id": {json.dumps(page.cluster_id)},\n  "deployments": [')
            opened = True
        for d in page.deployments:
            out.write((",\n" if written else "\n") + textwrap.indent(_dumped(d), "    "))
            written = True
    out.write("\n  ]\n}\n" if written else "]\n}\n")
    out.flush()


def _dumped(d: Any) -> str:
    """A deployment message as MessageToDict gives it (every field, proto names; here in
    the proto's order), then json.dumps with indent 2; built field by field, far cheaper
    than MessageToDict. tests/unit/test_wire.py holds the two equal."""
    record = {
        "name": d.name,
        "image": d.image,
        "replicas": d.replicas,
        "env": dict(d.env),
        "placed": [{"id": r.id, "index": r.index, "ip": r.ip, "node": r.node} for r in d.placed],
        "created_at": d.created_at,
        "updated_at": d.updated_at,
    }
    return json.dumps(record, indent=2)


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
    return check_replicas(replicas)


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
        return print_json(reply)
    ips = ", ".join(r.ip for r in reply.placed) or "none"
    out.print(
        safe(f"Deployed {reply.name} ({reply.image}) with {reply.replicas} replica(s): {ips}"),
        soft_wrap=True,
    )


@app.command("scale")
@operator_errors
def scale(
    name: Annotated[str, typer.Argument(help="Deployment name.")],
    replicas: Annotated[int, typer.Option(help="New replica count.")],
    server: Server = "",
) -> None:
    """Change a deployment's replica count (IPs of removed replicas are released)."""
    request = pb.ScaleRequest(name=name, replicas=_check_count(replicas))
    with open_client(server) as client:
        reply = client.call("Scale", request)
    out.print(safe(f"Scaled {reply.name} to {reply.replicas} replica(s)"))


@app.command("rm")
@operator_errors
def remove(
    name: Annotated[str, typer.Argument(help="Deployment name.")], server: Server = ""
) -> None:
    """Delete a deployment, its replicas and their IPs."""
    with open_client(server) as client:
        client.call("RemoveDeployment", pb.RemoveDeploymentRequest(name=name))
    out.print(f"Removed {safe(name)}")


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
    check_host(host, "route host")
    check_range("--port", port, 1, 65535)
    with open_client(server) as client:
        r = client.call(
            "AddRoute", pb.Route(name=name, host=host, path=path, deployment=deployment, port=port)
        )
    out.print(safe(f"Route {r.name}: {r.host}{r.path} -> {r.deployment}:{r.port}"), soft_wrap=True)


@route_app.command("ls")
@operator_errors
def route_ls(server: Server = "", as_json: AsJson = False) -> None:
    """List routes."""
    with open_client(server) as client:
        reply = client.call("ListRoutes", pb.Empty())
    if as_json:
        return print_json(reply)
    rows = [(r.name, r.host, r.path, r.deployment, r.port) for r in reply.routes]
    print_table(table(("NAME", "HOST", "PATH", "DEPLOYMENT", "PORT"), rows))


@route_app.command("rm")
@operator_errors
def route_rm(name: Annotated[str, typer.Argument(help="Route name.")], server: Server = "") -> None:
    """Remove a route."""
    with open_client(server) as client:
        client.call("RemoveRoute", pb.RemoveRouteRequest(name=name))
    out.print(f"Removed route {safe(name)}")


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
    from jaco.model.pki import NODE_VALID_DAYS  # here: cryptography costs every command 30 ms

    check_range("--days", days, 1, NODE_VALID_DAYS)
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
        safe(
            f"Issued certificate {reply.info.serial} for {common_name} "
            f"(until {reply.info.not_after}) into {out_dir}"
        ),
        soft_wrap=True,
    )


@cert_app.command("ls")
@operator_errors
def cert_ls(server: Server = "", as_json: AsJson = False) -> None:
    """List certificates issued by the cluster CA."""
    with open_client(server) as client:
        reply = client.call("ListCerts", pb.Empty())
    if as_json:
        return print_json(reply)
    rows = [(c.serial, c.common_name, ", ".join(c.dns_names), c.not_after) for c in reply.certs]
    print_table(table(("SERIAL", "COMMON NAME", "NAMES", "NOT AFTER"), rows))
