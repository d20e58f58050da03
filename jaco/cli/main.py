"""`jaco`: the operator CLI.

Online commands are thin clients of a jacod's gRPC API (`--server` / JACO_SERVER and
JACO_TOKEN). Offline commands (`cluster init`, `node join`, `restore`) prime a stopped node's
data dir. Each command group lives in a module of its own; this one assembles them.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from jaco import __version__
from jaco.cli import access, audit, backup, catalog, cluster, pipeline, workloads
from jaco.cli.common import fail, out

app = typer.Typer(
    name="jaco",
    no_args_is_help=True,
    add_completion=False,
    help="Operate a jaco cluster: deployments, routes, certs, tokens, the audit log, nodes, "
    "and backups of all of it.",
)
app.add_typer(workloads.app)
app.add_typer(backup.app)
app.add_typer(cluster.cluster_app, name="cluster")
app.add_typer(workloads.route_app, name="route")
app.add_typer(workloads.cert_app, name="cert")
app.add_typer(access.token_app, name="token")
app.add_typer(cluster.node_app, name="node")
app.add_typer(audit.audit_app, name="audit")
backup.backup_app.command("ls")(catalog.backup_ls)
backup.backup_app.command("describe")(catalog.backup_describe)
app.add_typer(backup.backup_app, name="backup")
app.add_typer(pipeline.pipeline_app, name="pipeline")


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
    """Run the CLI; the parser's own refusals (an unknown command, a value that is not a
    number) get one line on stderr like every other refusal, not a usage panel."""
    try:
        code = app(prog_name="jaco", standalone_mode=False)
    except typer.TyperException as exc:  # click's usage errors, as typer vendors them
        if type(exc).__name__ == "NoArgsIsHelpError":
            sys.exit(exc.exit_code)  # the help was shown
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        sys.exit(fail(exc.format_message() + hint, exc.exit_code).exit_code)
    except typer.Abort:
        sys.exit(fail("aborted").exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
