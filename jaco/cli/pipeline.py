"""`jaco pipeline run` (alias `jaco-backup`): one cluster through the whole backup pipeline.

take-backup → encrypt → upload (S3 + local copy) → verify → prune, as the `backup-cluster`
Prefect flow (flows/backup_flow.py). Prefect and the flows are imported only when the command
runs, so the rest of the CLI starts fast.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from jaco.cli.common import err, operator_errors, out, safe
from jaco.errors import InvalidArgument

pipeline_app = typer.Typer(
    no_args_is_help=True,
    help="The backup pipeline (Prefect flows): take, encrypt, upload, verify, prune, drill.",
)


@pipeline_app.callback()
def pipeline() -> None:
    """The backup pipeline: `run` backs up one cluster now."""


@pipeline_app.command("run")
@operator_errors
def run(
    cluster: Annotated[str, typer.Option(help="A short name for the cluster (reports, limits).")],
    server: Annotated[
        list[str], typer.Option(help="A jacod API address HOST:PORT; repeat for fail-over.")
    ],
    bucket: Annotated[str, typer.Option(help="S3 bucket for the encrypted backups.")],
    recipient: Annotated[
        list[str], typer.Option(help="age recipient (age1… or ssh-ed25519 …); repeatable.")
    ],
    prefix: Annotated[str, typer.Option(help="Key prefix inside the bucket.")] = "jaco",
    local_dir: Annotated[
        str, typer.Option(help="Where the local encrypted copy lives.")
    ] = "/var/backups/jaco",
    keep_last: Annotated[int, typer.Option(min=1, help="Always keep this many backups.")] = 7,
    dry_run_retention: Annotated[
        bool, typer.Option(help="Report what retention would delete; delete nothing.")
    ] = False,
) -> None:
    """Back up one cluster through the whole pipeline.

    Secrets come from the environment: JACO_TOKEN, the AWS chain (AWS_ENDPOINT_URL_S3 for
    S3-compatible stores), JACO_AGE_IDENTITY_FILE (to verify). Without PREFECT_API_URL the run
    uses a temporary local Prefect server; with it, the run shows in the UI.
    """
    quiet_prefect()
    from pydantic import ValidationError

    from flows.backup_flow import backup_cluster
    from flows.params import BackupParams
    from flows.retention import RetentionPolicy

    try:
        params = BackupParams(
            cluster=cluster,
            servers=server,
            bucket=bucket,
            prefix=prefix,
            recipients=recipient,
            local_dir=local_dir,
            retention=RetentionPolicy(keep_last=keep_last, dry_run=dry_run_retention),
        )
    except ValidationError as exc:
        error = exc.errors(include_input=False, include_url=False)[0]
        field = ".".join(str(x) for x in error["loc"])
        err.print(f"[red]error:[/red] invalid --{field.replace('_', '-')}: {safe(error['msg'])}")
        raise typer.Exit(2) from None
    state = backup_cluster(params, return_state=True)
    if not state.is_completed():
        err.print(f"[red]backup failed:[/red] {safe(state.message)}", soft_wrap=True)
        raise typer.Exit(1)
    result = state.result()
    out.print(
        safe(
            f"Backed up {params.cluster} at index {result['snapshot_index']} to "
            f"s3://{result['bucket']}/{result['key']} ({result['size']} bytes, encrypted); "
            f"local copy {result['local_copy']}"
        ),
        soft_wrap=True,
    )
    for row in result["stages"]:
        out.print(safe(f"  {row['stage']:<12} {row['seconds']:>8}s {row['MiB/s']!s:>8} MiB/s"))


@pipeline_app.command("stream")
@operator_errors
def stream(
    cluster: Annotated[str, typer.Option(help="The cluster's name in the site configuration.")],
    config: Annotated[
        Path | None,
        typer.Option(
            help="The site configuration (default $JACO_CLUSTERS_FILE or /etc/jaco/clusters.toml)."
        ),
    ] = None,
    segment_seconds: Annotated[
        float, typer.Option(min=0.1, max=3600, help="Cut a segment at least this often.")
    ] = 5.0,
    segment_mib: Annotated[
        float, typer.Option(min=0.01, max=256, help="... or when it holds this many MiB.")
    ] = 4.0,
    heartbeat_seconds: Annotated[
        float,
        typer.Option(
            min=0.5, max=3600, help="How often to record how far it has stored (stream.json)."
        ),
    ] = 15.0,
    max_queued_mib: Annotated[
        float,
        typer.Option(
            min=0.001,
            max=65536,
            help="Segments held in memory for a failing store, at most; then reading pauses "
            "(etcd keeps the history) until they are stored.",
        ),
    ] = 64.0,
    full_backup_retry_seconds: Annotated[
        float,
        typer.Option(
            min=0.1,
            max=3600,
            help="After a failed full backup (none yet, or etcd compacted past the stream), "
            "wait this long and try again; the wait doubles after each failure, up to 1 h.",
        ),
    ] = 60.0,
) -> None:
    """Continuous backup: the cluster's changes as encrypted segments to its stores, until
    SIGTERM. Resumes after the last segment recorded in the catalog; see docs/pipeline.md."""
    quiet_prefect()
    import logging
    import signal
    import threading

    from flows.config import load_config, site_config_path
    from flows.errors import PipelineError
    from flows.stream import Stream, StreamSettings

    path = config or site_config_path()
    try:
        site = load_config(path)
    except PipelineError as exc:
        raise InvalidArgument(exc.message.splitlines()[0]) from None
    if cluster not in site.clusters:
        known = ", ".join(sorted(site.clusters)) or "none"
        raise InvalidArgument(f"no cluster named {cluster} in {path} (it has {known})")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    settings = StreamSettings(
        segment_seconds=segment_seconds,
        segment_bytes=int(segment_mib * 1024 * 1024),
        heartbeat_seconds=heartbeat_seconds,
        max_queued_bytes=max(int(max_queued_mib * 1024 * 1024), 1),
        full_backup_retry_seconds=full_backup_retry_seconds,
    )
    Stream(site.clusters[cluster].backup_params(), settings, stop).run()


def quiet_prefect() -> None:
    """Before Prefect is imported: no usage reports from the temporary server a run without
    PREFECT_API_URL starts (a backup tool sends nothing anywhere it was not told to)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def backup_alias() -> None:
    """`jaco-backup …`: the same as `jaco pipeline run …`."""
    command = typer.main.get_command(pipeline_app)
    command.main(args=["run", *sys.argv[1:]], prog_name="jaco-backup")
