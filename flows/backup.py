"""The `backup-cluster` flow: take-backup → encrypt → upload (S3 + local copy) → verify → prune.

Run it from a deployment (see deployments/), from the Prefect UI, or for one cluster from the
command line: `python -m flows.backup --help`. Parameters are a pydantic model, so the UI shows
a form; secrets come only from the environment.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, cast
from uuid import UUID

from prefect import flow
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.concurrency.sync import concurrency
from prefect.logging import get_run_logger
from pydantic import BaseModel, Field

from flows.retention import RetentionPolicy
from flows.storage import open_store
from flows.tasks import (
    backup_key,
    encrypt_task,
    prune_task,
    take_backup_task,
    upload_task,
    verify_task,
)

MIB = 1024 * 1024


class BackupParams(BaseModel):
    cluster: str = Field(
        description="A short name for the cluster (reports, concurrency limit).",
        pattern=r"^[a-z0-9][a-z0-9-]{0,40}$",
    )
    servers: list[str] = Field(
        description="jacod API addresses HOST:PORT; any reachable one will do (tried in order).",
        min_length=1,
    )
    bucket: str = Field(description="S3 bucket for the encrypted backups.")
    prefix: str = Field("jaco", description="Key prefix inside the bucket.")
    recipients: list[str] = Field(
        description="age recipients (age1… or ssh-ed25519 public "
        "keys); any of their identities can decrypt.",
        min_length=1,
    )
    local_dir: str = Field(
        "/var/backups/jaco",
        description="Where the local encrypted copy (and the working files) live.",
    )
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)
    timeout_seconds: float = Field(300, gt=0, description="Deadline of the Backup RPC.")
    drill_every: int = Field(
        0,
        ge=0,
        description="Run a restore drill after every Nth "
        "successful backup of this cluster (0: never, 1: every backup).",
    )
    drill_driver: Literal["bwrap", "docker"] = Field(
        "bwrap", description="Sandbox driver for those drills."
    )


def alert_on_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """POST a small JSON alert to $JACO_ALERT_WEBHOOK (if set) when a run fails."""
    url = os.environ.get("JACO_ALERT_WEBHOOK")
    if not url:
        return
    body = json.dumps(
        {
            "flow": flow.name,
            "flow_run": flow_run.name,
            "flow_run_id": str(flow_run.id),
            "state": state.name,
            "message": state.message or "",
        }
    ).encode()
    if not url.startswith(("https://", "http://")):
        return  # only web hooks: never file:// or other schemes
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310
    with contextlib.suppress(OSError):
        urllib.request.urlopen(request, timeout=10).close()  # noqa: S310


def _backups_counted(cluster: str) -> int:
    """Count successful backups per cluster in a Prefect variable (for drill_every)."""
    from prefect.variables import Variable

    name = f"jaco_backups_{cluster.replace('-', '_')}"
    count = int(str(Variable.get(name, default=0))) + 1
    Variable.set(name, count, overwrite=True)
    return count


def ensure_limit(name: str) -> None:
    """A global concurrency limit of 1 per cluster: one backup of a cluster at a time."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )


class Stages:
    """Per-stage durations and throughput for the report, and the progress artifact."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.rows: list[dict[str, Any]] = []
        self.progress = cast(
            UUID, create_progress_artifact(0.0, description="backup-cluster progress")
        )

    @contextlib.contextmanager
    def stage(self, name: str, size: int = 0) -> Iterator[dict[str, Any]]:
        started = time.monotonic()
        row: dict[str, Any] = {"stage": name, "bytes": size}
        yield row
        seconds = time.monotonic() - started
        row["seconds"] = round(seconds, 3)
        row["MiB/s"] = round(row["bytes"] / MIB / seconds, 1) if row["bytes"] and seconds else ""
        self.rows.append(row)
        done = len(self.rows) / len(self.names) * 100
        update_progress_artifact(self.progress, min(done, 100.0))


def _markdown(
    params: BackupParams,
    meta: dict[str, Any],
    key: str,
    enc: dict[str, Any],
    stages: Stages,
    pruned: list[dict[str, Any]],
) -> str:
    lines = [
        f"# Backup of `{params.cluster}` (cluster `{meta['cluster_id']}`)",
        "",
        f"- snapshot index **{meta['snapshot_index']}**, term {meta['snapshot_term']}, "
        f"leader at snapshot `{meta['leader_at_snapshot']}`, taken {meta['taken_at']}",
        f"- object `s3://{params.bucket}/{key}` and a local copy in `{params.local_dir}`",
        f"- archive {enc['size']} bytes encrypted; plaintext SHA-256 `{enc['plaintext_sha256']}`",
        f"- ciphertext SHA-256 `{enc['ciphertext_sha256']}`",
        f"- snapshot SHA-256 `{meta['snapshot_sha256']}`, state digest `{meta['state_digest']}`",
        f"- records: {', '.join(f'{k} {v}' for k, v in meta['counts'].items())}",
        "",
        "| stage | seconds | bytes | MiB/s |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['stage']} | {r['seconds']} | {r['bytes']} | {r['MiB/s']} |" for r in stages.rows
    ]
    for p in pruned:
        verb = "would delete" if p["dry_run"] else "deleted"
        lines.append(
            f"\nRetention on {p['store']}: {verb} {len(p['deleted'])}, kept "
            f"{len(p['kept'])}, {len(p['locked'])} under object lock."
        )
    return "\n".join(lines)


@flow(name="backup-cluster", on_failure=[alert_on_failure], log_prints=False)
def backup_cluster(params: BackupParams) -> dict[str, Any]:
    logger = get_run_logger()
    limit = f"jaco-backup-{params.cluster}"
    ensure_limit(limit)
    stages = Stages(["take-backup", "encrypt", "upload", "local-copy", "verify", "prune"])
    workdir = Path(params.local_dir) / ".work"
    s3_url, local_url = f"s3://{params.bucket}", f"file://{params.local_dir}"
    with concurrency(limit, occupy=1, strict=True, timeout_seconds=3600):
        taken: dict[str, Any] | None = None
        enc: dict[str, Any] | None = None
        try:
            with stages.stage("take-backup") as row:
                taken = take_backup_task(params.servers, str(workdir), params.timeout_seconds)
                row["bytes"] = taken["size"]
            meta = taken["meta"]
            with stages.stage("encrypt", taken["size"]) as row:
                enc = encrypt_task(taken["path"], params.recipients)
            key = backup_key(params.prefix, meta)
            metadata = {
                "cluster-id": meta["cluster_id"],
                "snapshot-index": str(meta["snapshot_index"]),
                "jaco-version": meta["jaco_version"],
                "plaintext-sha256": enc["plaintext_sha256"],
                "ciphertext-sha256": enc["ciphertext_sha256"],
            }
            # The local copy is written while S3 uploads (disk and network in parallel); its
            # row shows only the time it kept the run waiting after the upload.
            with stages.stage("upload", enc["size"]):
                local_copy = upload_task.submit(local_url, enc["path"], key, metadata)
                try:
                    upload_task(s3_url, enc["path"], key, metadata)
                except Exception:
                    local_copy.wait()  # an unverified copy must not outlive a failed run
                    open_store(local_url).delete(key)
                    raise
            with stages.stage("local-copy", enc["size"]):
                local_copy.result()
            with stages.stage("verify", enc["size"]):
                try:
                    verify_task(s3_url, key, {**enc, "meta": meta})
                except Exception as exc:
                    # Compensate explicitly (no transactions around retried tasks): a backup
                    # that cannot be proven restorable must not look like one.
                    logger.error("verification failed for good (%s); deleting %s", exc, key)
                    for url in (s3_url, local_url):
                        open_store(url).delete(key)
                    raise
            pruned = []
            with stages.stage("prune"):
                for url in (s3_url, local_url):
                    pruned.append(
                        prune_task(
                            url,
                            f"{params.prefix.strip('/')}/{meta['cluster_id']}/",
                            params.retention,
                            key,
                        )
                    )
        finally:
            for item in (taken, enc):
                if item is not None:
                    Path(item["path"]).unlink(missing_ok=True)
    create_markdown_artifact(
        _markdown(params, meta, key, enc, stages, pruned),
        key=f"jaco-backup-{params.cluster}",
        description=f"latest backup of {params.cluster}",
    )
    recent = sorted(
        open_store(s3_url).list(f"{params.prefix.strip('/')}/{meta['cluster_id']}/"),
        key=lambda o: o.key,
        reverse=True,
    )[:20]
    create_table_artifact(
        [{"key": o.key, "bytes": o.size, "stored": o.modified.isoformat()} for o in recent],
        key=f"jaco-backups-{params.cluster}",
        description=f"recent backups of {params.cluster}",
    )
    drill = None
    if params.drill_every and _backups_counted(params.cluster) % params.drill_every == 0:
        from flows.drill import DrillParams, drill_restore

        drill = drill_restore(
            DrillParams(
                cluster=params.cluster,
                bucket=params.bucket,
                prefix=params.prefix,
                key=key,
                driver=params.drill_driver,
                workdir=str(Path(params.local_dir) / ".drills"),
            )
        )
    return {
        "drill": drill,
        "key": key,
        "bucket": params.bucket,
        "snapshot_index": meta["snapshot_index"],
        "cluster_id": meta["cluster_id"],
        "size": enc["size"],
        "plaintext_sha256": enc["plaintext_sha256"],
        "ciphertext_sha256": enc["ciphertext_sha256"],
        "stages": stages.rows,
        "local_copy": str(Path(params.local_dir) / key),
        "pruned": pruned,
    }


@flow(name="prune-backups", on_failure=[alert_on_failure])
def prune_backups(
    cluster_id: str,
    bucket: str,
    local_dir: str,
    prefix: str = "jaco",
    retention: RetentionPolicy | None = None,
) -> list[dict[str, Any]]:
    """Retention on its own schedule: the newest backup in each store is always kept."""
    from flows.drill import find_backup_task

    policy = retention or RetentionPolicy()
    scope = f"{prefix.strip('/')}/{cluster_id}/"
    results = []
    for url in (f"s3://{bucket}", f"file://{local_dir}"):
        newest = find_backup_task(url, scope)
        results.append(prune_task(url, scope, policy, newest))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m flows.backup",
        description="Back up one jaco cluster through the whole pipeline. Secrets come from the "
        "environment: JACO_TOKEN, the AWS chain (AWS_ENDPOINT_URL_S3 for S3-compatible stores), "
        "JACO_AGE_IDENTITY_FILE (to verify).",
    )
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--server", action="append", required=True, dest="servers")
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--prefix", default="jaco")
    parser.add_argument("--recipient", action="append", required=True, dest="recipients")
    parser.add_argument("--local-dir", default="/var/backups/jaco")
    parser.add_argument("--keep-last", type=int, default=7)
    parser.add_argument("--dry-run-retention", action="store_true")
    args = parser.parse_args(argv)
    params = BackupParams(
        cluster=args.cluster,
        servers=args.servers,
        bucket=args.bucket,
        prefix=args.prefix,
        recipients=args.recipients,
        local_dir=args.local_dir,
        retention=RetentionPolicy(keep_last=args.keep_last, dry_run=args.dry_run_retention),
    )
    state = backup_cluster(params, return_state=True)
    if not state.is_completed():
        print(f"backup failed: {state.message}", file=sys.stderr)
        sys.exit(1)
    result = state.result()
    print(
        f"Backed up {params.cluster} at index {result['snapshot_index']} to "
        f"s3://{result['bucket']}/{result['key']} ({result['size']} bytes, encrypted); "
        f"local copy {result['local_copy']}"
    )
    for row in result["stages"]:
        print(f"  {row['stage']:<12} {row['seconds']:>8}s {row['MiB/s']!s:>8} MiB/s")


if __name__ == "__main__":
    main()
