"""`jaco token`: operator tokens (the cluster keeps only their hashes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from jaco.cli.common import (
    AsJson,
    Server,
    operator_errors,
    out,
    print_json,
    print_table,
    safe,
    table,
)
from jaco.client.connection import open_client
from jaco.files import write_private
from jaco.model.tokens import check_role
from jaco.v1 import jaco_pb2 as pb

token_app = typer.Typer(no_args_is_help=True, help="Operator tokens (the cluster keeps hashes).")


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
    check_role(role)
    with open_client(server) as client:
        reply = client.call(
            "CreateToken", pb.CreateTokenRequest(role=role, description=description)
        )
    if file:
        write_private(file, reply.token.encode() + b"\n")
        out.print(safe(f"Created {role} token {reply.info.id}; written to {file}"))
    else:
        out.print(safe(f"Created {role} token {reply.info.id} (shown once):"))
        out.print(safe(reply.token), soft_wrap=True)


@token_app.command("ls")
@operator_errors
def token_ls(server: Server = "", as_json: AsJson = False) -> None:
    """List operator tokens (ids and roles; secrets are never stored)."""
    with open_client(server) as client:
        reply = client.call("ListTokens", pb.Empty())
    if as_json:
        return print_json(reply)
    rows = [
        (t.id, t.role, t.description, t.created_at, "yes" if t.revoked else "")
        for t in reply.tokens
    ]
    print_table(table(("ID", "ROLE", "DESCRIPTION", "CREATED", "REVOKED"), rows))


@token_app.command("revoke")
@operator_errors
def token_revoke(
    token_id: Annotated[str, typer.Argument(help="Token id (see `jaco token ls`).")],
    server: Server = "",
) -> None:
    """Revoke an operator token; it stops authenticating at once, on every node."""
    with open_client(server) as client:
        client.call("RevokeToken", pb.RevokeTokenRequest(id=token_id))
    out.print(f"Revoked token {safe(token_id)}")
