"""The `backup-cluster` flow: take-backup → encrypt → upload (S3 + local copy) → verify → prune.

Run it from a deployment (see deployments/), from the Prefect UI, or for one cluster from the
command line (`jaco pipeline run`, alias `jaco-backup`). Parameters are a pydantic model, so
the UI shows a form; secrets come only from the environment.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
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

from flows.alerts import alert_on_failure
from flows.drill_flow import drill_restore
from flows.params import BackupParams, DrillParams
from flows.reports import backup_report
from flows.storage import open_store
from flows.tasks import (
    Encrypted,
    Taken,
    backup_key,
    encrypt_task,
    prune_task,
    retrying,
    take_backup_task,
    upload_task,
    verify_task,
)

MIB = 1024 * 1024


def _backups_counted(cluster: str) -> int:
    """Count successful backups per cluster in a Prefect variable (for drill_every).

    Called inside the cluster's concurrency slot: two runs never read-increment-write it
    at once."""
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


@flow(name="backup-cluster", on_failure=[alert_on_failure], log_prints=False)
def backup_cluster(params: BackupParams) -> dict[str, Any]:
    logger = get_run_logger()
    limit = f"jaco-backup-{params.cluster}"
    ensure_limit(limit)
    stages = Stages(["take-backup", "encrypt", "upload", "local-copy", "verify", "prune"])
    workdir = Path(params.local_dir) / ".work"
    s3_url, local_url = f"s3://{params.bucket}", f"file://{params.local_dir}"
    drill_due = False
    with concurrency(limit, occupy=1, strict=True, timeout_seconds=3600):
        taken: Taken | None = None
        enc: Encrypted | None = None
        try:
            with stages.stage("take-backup") as row:
                taken = retrying(take_backup_task)(
                    params.servers, str(workdir), params.timeout_seconds
                )
                row["bytes"] = taken.size
            meta = taken.meta
            with stages.stage("encrypt", taken.size):
                enc = retrying(encrypt_task)(taken.path, params.recipients)
            key = backup_key(params.prefix, meta)
            metadata = {
                "cluster-id": meta.cluster_id,
                "snapshot-index": str(meta.snapshot_index),
                "jaco-version": meta.jaco_version,
                "plaintext-sha256": enc.plaintext_sha256,
                "ciphertext-sha256": enc.ciphertext_sha256,
            }
            # The local copy is written while S3 uploads (disk and network in parallel); its
            # row shows only the time it kept the run waiting after the upload.
            with stages.stage("upload", enc.size):
                local_copy = retrying(upload_task).submit(local_url, enc.path, key, metadata)
                try:
                    retrying(upload_task)(s3_url, enc.path, key, metadata)
                except Exception:
                    local_copy.wait()  # an unverified copy must not outlive a failed run
                    open_store(local_url).delete(key)
                    raise
            with stages.stage("local-copy", enc.size):
                local_copy.result()
            with stages.stage("verify", enc.size):
                try:
                    retrying(verify_task)(s3_url, key, meta, enc)
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
                        retrying(prune_task)(
                            url,
                            f"{params.prefix.strip('/')}/{meta.cluster_id}/",
                            params.retention,
                            key,
                        )
                    )
            if params.drill_every:
                drill_due = _backups_counted(params.cluster) % params.drill_every == 0
        finally:
            for item in (taken, enc):
                if item is not None:
                    item.path.unlink(missing_ok=True)
    create_markdown_artifact(
        backup_report(
            params.cluster, params.bucket, params.local_dir, meta, key, enc, stages.rows, pruned
        ),
        key=f"jaco-backup-{params.cluster}",
        description=f"latest backup of {params.cluster}",
    )
    recent = sorted(
        open_store(s3_url).list(f"{params.prefix.strip('/')}/{meta.cluster_id}/"),
        key=lambda o: o.key,
        reverse=True,
    )[:20]
    create_table_artifact(
        [{"key": o.key, "bytes": o.size, "stored": o.modified.isoformat()} for o in recent],
        key=f"jaco-backups-{params.cluster}",
        description=f"recent backups of {params.cluster}",
    )
    drill = None
    if drill_due:
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
        "snapshot_index": meta.snapshot_index,
        "cluster_id": meta.cluster_id,
        "size": enc.size,
        "plaintext_sha256": enc.plaintext_sha256,
        "ciphertext_sha256": enc.ciphertext_sha256,
        "stages": stages.rows,
        "local_copy": str(Path(params.local_dir) / key),
        "pruned": pruned,
    }
