"""`jaco audit`: the append-only, hash-chained audit log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from jaco.cli.common import (
    AsJson,
    Server,
    check_range,
    err,
    operator_errors,
    out,
    safe,
)
from jaco.client.connection import open_client
from jaco.errors import InvalidArgument
from jaco.model.audit import DAMAGED, check_types
from jaco.model.names import parse_time
from jaco.v1 import jaco_pb2 as pb

MAX_TIMEOUT = 86_400.0
Timeout = Annotated[
    float,
    typer.Option(
        help="Seconds the server may take over the whole log: verifying costs about 20 µs an "
        "event, listing about 0.25 ms (10⁶ events: 20 seconds, 4 minutes)."
    ),
]

audit_app = typer.Typer(
    invoke_without_command=True, help="The append-only, hash-chained audit log."
)


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
    timeout: Timeout = 600.0,
) -> None:
    """Show the audit log, oldest first. `jaco audit verify` checks its hash chain."""
    if ctx.invoked_subcommand:
        ctx.obj = server
        return
    check_range("--timeout", timeout, 0.001, MAX_TIMEOUT, " seconds")
    types = sorted(check_types(type_ or []))
    parse_time(since, "--since")
    parse_time(until, "--until")
    request = pb.AuditRequest(types=types, since=since, until=until, follow=follow)
    from google.protobuf.json_format import MessageToDict

    damaged: list[int] = []
    with open_client(server) as client:
        for event in client.stream("Audit", request, timeout=None if follow else timeout):
            if event.type == DAMAGED:
                damaged.append(event.seq)
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
                line = f"{event.seq:>6} {event.at} {event.type:<22} {event.actor:<20} "
                out.print(safe(line + event.detail_json), soft_wrap=True)
    if damaged:
        numbers = ", ".join(str(seq) for seq in damaged)
        err.print(
            f"{len(damaged)} damaged event{'s' if len(damaged) > 1 else ''} in the log "
            f"({numbers}): `jaco audit verify` checks the chain",
            soft_wrap=True,
        )


@audit_app.command("verify")
@operator_errors
def audit_verify(
    ctx: typer.Context,
    anchor: Annotated[
        list[str] | None,
        typer.Option(
            "--anchor",
            help="A backup (.tar.gz, or .tar.gz.age with --identity) whose meta.json recorded "
            "the audit head; or `catalog` for the heads of every backup the pipeline keeps of "
            "--cluster. Repeatable. The chain must still pass through each of them.",
        ),
    ] = None,
    cluster: Annotated[
        str | None, typer.Option(help="With --anchor catalog: the cluster's name.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="With --anchor catalog: the site configuration.")
    ] = None,
    identity: Annotated[
        Path | None,
        typer.Option(envvar="JACO_AGE_IDENTITY_FILE", help="Decrypts .tar.gz.age anchors."),
    ] = None,
    server: Server = "",
    timeout: Timeout = 600.0,
) -> None:
    """Recompute the audit log's hash chain; exit 1 if any event was altered or removed.

    The cluster can recompute every hash after rewriting history, so the chain alone proves
    little against someone holding its etcd credentials; audit heads recorded outside the
    cluster (each backup's meta.json, the pipeline's catalog) do: with --anchor, history
    older than an anchor cannot be rewritten or cut without this failing.
    """
    check_range("--timeout", timeout, 0.001, MAX_TIMEOUT, " seconds")
    anchors = [a for source in anchor or [] for a in _anchors(source, cluster, config, identity)]
    with open_client(server or ctx.obj or "") as client:
        request = pb.VerifyAuditRequest(anchors=anchors)
        reply = client.call("VerifyAudit", request, timeout=timeout)
    if reply.ok:
        extends = f"; it extends all {reply.anchors_checked} anchors given" if anchors else ""
        out.print(f"Audit chain intact: {reply.events} events{extends}")
    else:
        err.print(
            f"[red]Audit chain broken at event {reply.first_bad_seq}:[/red] {safe(reply.reason)}",
            soft_wrap=True,
        )
        raise typer.Exit(1)


def _anchors(
    source: str, cluster: str | None, config: Path | None, identity: Path | None
) -> list[pb.AuditAnchor]:
    if source == "catalog":
        return _catalog_anchors(cluster, config)
    from jaco.archive.encrypted import inspect_backup

    meta = inspect_backup(Path(source), identity).meta
    if meta.audit_head is None:
        raise InvalidArgument(f"{source} records no audit head (taken by an older jaco)")
    head = meta.audit_head
    return [pb.AuditAnchor(seq=head.seq, hash=head.hash, source=Path(source).name)]


def _catalog_anchors(cluster: str | None, config: Path | None) -> list[pb.AuditAnchor]:
    from jaco.cli.catalog import catalog_views

    if not cluster:
        raise InvalidArgument("--anchor catalog needs --cluster NAME")
    (view,) = catalog_views(config, None, "jaco", [cluster])
    heads = [
        pb.AuditAnchor(seq=b.audit_head.seq, hash=b.audit_head.hash, source=b.key)
        for b in view.backups
        if b.audit_head is not None
    ]
    if not heads:
        raise InvalidArgument(f"the catalog of {cluster} records no audit head yet")
    return heads
