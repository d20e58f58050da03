"""`jaco backup`, `jaco backup inspect` and `jaco restore`.

Each command imports the archive, client and node code it runs when it runs: every `jaco`
command loads this module, and `jaco deploy` has no use for the archive format's imports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
    progress,
    safe,
    table,
)
from jaco.client.connection import BACKUP_TIMEOUT, MAX_BACKUP_TIMEOUT, open_client
from jaco.errors import InvalidArgument
from jaco.files import sweep_partials

app = typer.Typer()
IdentityOpt = Annotated[
    Path | None,
    typer.Option(
        "--identity",
        envvar="JACO_AGE_IDENTITY_FILE",
        help="An age identity file that decrypts the backup (for .tar.gz.age).",
    ),
]
backup_app = typer.Typer(
    invoke_without_command=True,
    help="Write a consistent snapshot of all cluster state to a tarball.",
)


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
    ] = BACKUP_TIMEOUT,
    server: Server = "",
) -> None:
    """Stream a snapshot, consistent at one raft index, into a tarball (mode 0600).

    The archive holds the cluster CA key and token hashes: encrypt it before it leaves the
    host. `jaco backup inspect FILE` verifies an archive.
    """
    if ctx.invoked_subcommand:
        return
    from jaco.archive.format import check_archive_output
    from jaco.client.backup import take_backup
    from jaco.memory import keep_freed_memory

    if output is None:
        raise InvalidArgument("--output FILE is required (or use `jaco backup inspect FILE`)")
    check_range("--timeout", timeout, 0.001, MAX_BACKUP_TIMEOUT, " seconds")
    shown = str(output)
    output = output.absolute()
    replaces = check_archive_output(output)  # before the server is contacted
    for left in sweep_partials(output.parent):
        err.print(f"removed {safe(left.name)}, left by an interrupted backup", soft_wrap=True)
    keep_freed_memory()  # the stream's 1 MiB messages reuse the pages of those before
    with open_client(server) as client, progress() as bar:
        task = bar.add_task("snapshot", total=None)
        result = take_backup(
            client,
            output,
            timeout,
            on_size=lambda size: bar.update(task, total=size),
            progress=lambda n: bar.advance(task, n),
        )
    out.print(f"Wrote {result.size} bytes to {safe(shown)}", soft_wrap=True)
    if replaces:
        err.print(f"replaced existing file {safe(shown)}", soft_wrap=True)
    meta = result.meta
    err.print(
        f"snapshot index {meta.snapshot_index}, term {meta.snapshot_term}, "
        f"leader {meta.leader_at_snapshot}, cluster {meta.cluster_id}"
    )


@backup_app.command("inspect")
@operator_errors
def backup_inspect(
    archive: Annotated[
        Path, typer.Argument(help="A jaco backup archive (.tar.gz), or the pipeline's .tar.gz.age.")
    ],
    identity: IdentityOpt = None,
    as_json: AsJson = False,
) -> None:
    """Verify an archive (structure, meta.json, snapshot checksum) and show what it holds.

    An age-encrypted backup is decrypted as it is read (--identity, or JACO_AGE_IDENTITY_FILE):
    nothing decrypted is written to disk. Exits non-zero if the archive is damaged, or intact
    but from another major version.
    """
    from jaco.archive.encrypted import inspect_backup

    verified = inspect_backup(archive, identity)
    meta = verified.meta
    if as_json:
        shown = meta.model_dump(mode="json", exclude_none=True)
        print_json({**shown, "archive_size": verified.archive_size, "verified": True})
        return meta.check_version()
    rows: list[tuple[str, object]] = []
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
        rows.append((key, getattr(meta, key)))
    rows.append(("records", ", ".join(f"{k}={v}" for k, v in meta.counts.items())))
    print_table(table((), rows, f"{archive.name}: verified"))
    meta.check_version()  # intact, but can this jaco restore it?


@app.command("restore")
@operator_errors
def restore_cmd(
    input_: Annotated[
        Path,
        typer.Option(
            "--input", "-i", help="The backup: an archive, or .tar.gz.age with --identity."
        ),
    ],
    name: Annotated[str, typer.Option(help="This node's name in the restored cluster.")],
    data_dir: DataDirOpt = None,
    advertise_host: AdvertiseHost = None,
    api_port: ApiPort = 7000,
    etcd_client_port: ClientPort = 2379,
    etcd_peer_port: PeerPort = 2380,
    segments: Annotated[
        str | None,
        typer.Option(
            help="Point-in-time restore: the backup's change segments, a directory or "
            "s3://BUCKET/PREFIX/segments/CLUSTER/BACKUP (the AWS chain's credentials)."
        ),
    ] = None,
    to_revision: Annotated[
        int | None, typer.Option(min=0, help="With --segments: the cluster's revision to restore.")
    ] = None,
    to_time: Annotated[
        str | None,
        typer.Option(help="With --segments: restore the last revision at or before this time."),
    ] = None,
    before_event: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="With --segments: restore the state just before this audit event (its seq, "
            "as `jaco audit` shows it), e.g. the DEPLOYMENT_REMOVED of a mistaken `jaco rm`.",
        ),
    ] = None,
    identity: IdentityOpt = None,
) -> None:
    """Prime a fresh node (daemon stopped, empty data dir) from a backup.

    The whole archive is verified before anything is written. The next jacod start comes up as
    the single voter of the same cluster (same id, same CA: old tokens still work) and records
    RESTORE_COMPLETED. Other nodes then rejoin with `jaco node issue-join-token` / `node join`.
    With --segments and --to-revision or --to-time (RFC 3339), the backup's change segments
    are verified (checksums, no gap, same cluster) and replayed up to that point. An
    age-encrypted backup (.tar.gz.age, as the pipeline stores it) is decrypted as it is read
    with --identity: no decrypted copy of it is written.
    """
    # Imported here: the node-side modules (PKI, etcd) would cost every command startup time.
    from jaco.archive.encrypted import identities_for
    from jaco.node.bootstrap import node_ports
    from jaco.node.restore import restore

    ports, warnings = node_ports(advertise_host, api_port, etcd_client_port, etcd_peer_port)
    data = open_data_dir(data_dir)
    notify = lambda note: err.print(safe(note), soft_wrap=True)  # noqa: E731
    if segments is None:
        if (to_revision, to_time, before_event) != (None, None, None):
            raise InvalidArgument("--to-revision, --to-time and --before-event need --segments")
        identities = identities_for(input_, identity)
        meta = restore(input_, data, name, ports, notify, identities=identities)
        point = f"at index {meta.snapshot_index} (taken {meta.taken_at.isoformat()})"
    else:
        target = _target(to_revision, to_time, before_event)
        meta, revision, at = _point_in_time(
            input_, segments, target, identity, data, name, ports, notify
        )
        point = f"to revision {revision} ({at}) from the backup at index {meta.snapshot_index}"
    out.print(
        f"Restored cluster {meta.cluster_id} {point} into {safe(data.path)} as node {name}; "
        f"state digest {meta.state_digest[:16]}… verified."
    )
    primed(data, warnings)


def _target(to_revision: int | None, to_time: str | None, before_event: int | None) -> Any:
    from jaco.model.names import parse_time
    from jaco.node.pitr import Target

    if [to_revision, to_time, before_event].count(None) != 2:
        raise InvalidArgument("give exactly one of --to-revision, --to-time and --before-event")
    return Target(to_revision, parse_time(to_time or "", "--to-time"), before_event)


def _point_in_time(
    archive: Path, segments: str, target: Any, identity: Path | None, *rest: Any
) -> Any:
    from jaco.archive.age import load_identities
    from jaco.node.pitr import DirSource, point_in_time_restore

    if identity is None:
        raise InvalidArgument(
            "the segments are age-encrypted: give --identity FILE (or JACO_AGE_IDENTITY_FILE)"
        )
    source: Any
    if segments.startswith("s3://"):
        from jaco.cli.segments import S3Source

        source = S3Source(segments)
    else:
        source = DirSource(Path(segments))
    return point_in_time_restore(archive, source, load_identities(identity), target, *rest)
