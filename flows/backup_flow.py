"""The `backup-cluster` flow: take-backup → encrypt → upload (S3 + local copy) → verify → prune.

Run it from a deployment (see deployments/), from the Prefect UI, or for one cluster from the
command line (`jaco pipeline run`, alias `jaco-backup`). One backup of a cluster at a time
(flows.locking), and each run first sweeps what dead runs left. The cluster's id is pinned in
its catalog on the first backup; a server answering as another cluster fails the run. The
catalog records the backup when it is stored and marks it verified once verify has proven it;
a backup verify shows damaged is deleted from both stores and from the catalog, and one verify
could not finish checking (the store kept failing) is kept, recorded unverified. A verify
identity that is none of the recipients is refused before anything is taken.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast
from uuid import UUID

from prefect import flow, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from flows.alerts import current_run, on_run_failure
from flows.api_writes import set_variable
from flows.catalog import BackupRecord, Catalog, RunRef, Verified, now
from flows.drill_flow import drill_restore
from flows.errors import PipelineError, VerifyFailed
from flows.locking import cluster_lock
from flows.params import BackupParams
from flows.records import backups_root
from flows.reports import backup_report, publish_history
from flows.storage import open_store
from flows.tasks import (
    backup_key,
    encrypt_task,
    local_copy_task,
    prune_task,
    retrying,
    take_backup_task,
    upload_task,
    verify_task,
)
from flows.workdirs import run_workdir, sweep_workdirs
from jaco.public import ArchiveError, DecryptionFailed, JacoError, parse_identities

MIB = 1024 * 1024
# What verify raises when it has shown the stored backup not to be the one taken (as opposed
# to not having been able to look).
DAMAGE = (VerifyFailed, DecryptionFailed, ArchiveError)
BACKUP_TIMEOUT = 2 * 3600


def count_backups(cluster: str) -> int:
    """Count successful backups per cluster in a Prefect variable (for drill_every).

    Called inside the cluster's lock: two runs never read-increment-write it at once."""
    from prefect.variables import Variable

    name = f"jaco_backups_{cluster.replace('-', '_')}"
    count = int(str(Variable.get(name, default=0))) + 1
    set_variable(name, count)
    return count


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


@task(name="prepare", cache_policy=NO_CACHE)
def prepare_task(params: BackupParams) -> tuple[str | None, list[str]]:
    """Check the verify identity, read the cluster's pinned id, and sweep the work
    directories dead runs left (the archive before encryption). Called inside the cluster's
    lock."""
    check_verify_identity(params)
    catalog = Catalog(open_store(params.s3_url, params.s3), params.prefix, params.cluster)
    identity = catalog.identity()
    swept = sweep_workdirs(Path(params.local_dir) / ".work")
    for item in swept:
        get_run_logger().warning("swept %s", item)
    return (identity.cluster_id if identity else params.cluster_id), swept


def check_verify_identity(params: BackupParams) -> None:
    """Refuse, before anything is taken, a verify identity that is none of the recipients:
    verify could not open the backup, which would then be deleted as undecryptable, run after
    run (and the change stream, restarted, would take one after another). An identity that
    cannot be read decides nothing here: the backup is taken, and verify, which cannot check
    it either, keeps it unverified and says why."""
    try:
        identities = parse_identities(params.secrets.read_identity(), "the verify identity")
    except JacoError:
        return
    public = sorted(str(identity.to_public()) for identity in identities)
    if not set(public) & set(params.recipients):
        raise PipelineError(
            f"the verify identity (public key {', '.join(public)}) is not one of "
            f"{params.cluster}'s recipients: verify could not open its backups; nothing was "
            "taken (add its public key to recipients, or set the identity of one of them)"
        )


@task(name="sweep", cache_policy=NO_CACHE)
def sweep_task(params: BackupParams, cluster_id: str) -> list[str]:
    """Remove the unfinished local copies and multipart uploads of this cluster's dead runs
    (the key names the cluster id, known once the server has answered). Inside the lock, no
    live run of the cluster can be writing there."""
    scope = backups_root(params.prefix, cluster_id)
    swept = open_store(params.local_url).sweep(scope)
    swept += open_store(params.s3_url, params.s3).sweep(scope)
    for item in swept:
        get_run_logger().warning("swept %s", item)
    return swept


@task(name="catalog", cache_policy=NO_CACHE)
def catalog_task(params: BackupParams, record: BackupRecord, run: RunRef | None) -> None:
    """Pin the cluster's id (refusing another) and record the backup, in the catalog of S3
    and of the local copies."""
    for url, s3 in ((params.s3_url, params.s3), (params.local_url, None)):
        catalog = Catalog(open_store(url, s3), params.prefix, params.cluster)
        catalog.pin(record.cluster_id, run)
        catalog.record_backup(record)


@flow(
    name="backup-cluster",
    on_failure=[on_run_failure],
    on_crashed=[on_run_failure],
    timeout_seconds=BACKUP_TIMEOUT,
    log_prints=False,
)
def backup_cluster(params: BackupParams) -> dict[str, Any]:
    logger = get_run_logger()
    run = current_run()
    stages = Stages(["take-backup", "encrypt", "upload", "local-copy", "verify", "prune"])
    drill_due = False
    lock = f"jaco-backup-{params.cluster}"
    with (
        cluster_lock(lock, params.cluster, params.wait_seconds, Path(params.local_dir), logger),
        run_workdir(Path(params.local_dir) / ".work", f"backup-{params.cluster}") as workdir,
    ):
        pinned_id, swept = retrying(prepare_task)(params)
        with stages.stage("take-backup") as row:
            taken = retrying(take_backup_task)(
                params.servers, workdir, params.timeout_seconds, params.secrets
            )
            row["bytes"] = taken.size
        meta = taken.meta
        for expected, why in ((params.cluster_id, "configured as"), (pinned_id, "pinned to")):
            if expected and expected != meta.cluster_id:
                raise PipelineError(
                    f"the server {taken.server} answered as cluster {meta.cluster_id}, but "
                    f"{params.cluster} is {why} cluster {expected}: refusing to mix two "
                    "clusters' backups"
                )
        swept += retrying(sweep_task)(params, meta.cluster_id)
        with stages.stage("encrypt", taken.size):
            enc = retrying(encrypt_task)(taken.path, params.recipients)
        taken.path.unlink()  # the plaintext archive is not needed any more
        key = backup_key(params.prefix, meta)
        metadata = {
            "cluster": params.cluster,
            "cluster-id": meta.cluster_id,
            "snapshot-index": str(meta.snapshot_index),
            "jaco-version": meta.jaco_version,
            "plaintext-sha256": enc.plaintext_sha256,
            "ciphertext-sha256": enc.ciphertext_sha256,
        }
        if meta.audit_head is not None:  # kept with the object (object lock keeps it as is)
            metadata["audit-head-seq"] = str(meta.audit_head.seq)
            metadata["audit-head-hash"] = meta.audit_head.hash
        record = BackupRecord(
            cluster=params.cluster,
            cluster_id=meta.cluster_id,
            key=key,
            taken_at=meta.taken_at,
            snapshot_index=meta.snapshot_index,
            snapshot_term=meta.snapshot_term,
            jaco_version=meta.jaco_version,
            archive_size=taken.size,
            size=enc.size,
            plaintext_sha256=enc.plaintext_sha256,
            ciphertext_sha256=enc.ciphertext_sha256,
            snapshot_sha256=meta.snapshot_sha256,
            state_digest=meta.state_digest,
            counts=meta.counts,
            audit_head=meta.audit_head,
            taken_by=run,
        )
        # The local copy is written while S3 uploads (disk and network in parallel); its
        # row shows only the time it kept the run waiting after the upload.
        with stages.stage("upload", enc.size):
            local_copy = retrying(local_copy_task).submit(
                params.local_url, params.s3, enc.path, key, metadata
            )
            try:
                retrying(upload_task)(params.s3_url, params.s3, enc.path, key, metadata)
            except Exception:
                local_copy.wait()  # an unverified copy must not outlive a failed run
                open_store(params.local_url).delete(key)
                raise
        with stages.stage("local-copy", enc.size):
            local_copy.result()
            enc.path.unlink()  # both stores hold it now (verify reads them), nor its pages
            retrying(catalog_task)(params, record, run)
        with stages.stage("verify", enc.size):
            try:
                retrying(verify_task)(params, key, meta, enc)
            except DAMAGE as exc:
                # Compensate explicitly (no transactions around retried tasks): a backup
                # shown not to restore must not look like one. (The verify identity is one of
                # the recipients, checked before the backup was taken: a ciphertext it cannot
                # open is damaged, not a configuration error.)
                logger.error("verification failed for good (%s); deleting %s", exc, key)
                for url, s3 in ((params.s3_url, params.s3), (params.local_url, None)):
                    open_store(url, s3).delete(key)
                    Catalog(open_store(url, s3), params.prefix, params.cluster).forget([key])
                raise
            except Exception as exc:
                # Verify could not run to the end (the store kept failing, a secret could not
                # be read): nothing showed the backup damaged, so it is not deleted. Its
                # records stay unverified, which nothing counts as a good backup.
                logger.error(
                    "verification could not finish (%s: %s); %s is kept, recorded unverified",
                    type(exc).__name__, exc, key,
                )  # fmt: skip
                raise
            record = record.model_copy(update={"verified": Verified(at=now(), run=run)})
            retrying(catalog_task)(params, record, run)
        pruned = []
        with stages.stage("prune"):
            for url in (params.s3_url, params.local_url):
                pruned.append(
                    retrying(prune_task)(params, url, meta.cluster_id, params.retention, key)
                )
        if params.drill_every:
            drill_due = count_backups(params.cluster) % params.drill_every == 0
    create_markdown_artifact(
        backup_report(params, meta, key, enc, stages.rows, pruned, swept),
        key=f"jaco-backup-{params.cluster}",
        description=f"latest backup of {params.cluster}",
    )
    publish_history(params)
    drill = None
    if drill_due:
        drill = drill_restore(params.drill(cluster_id=meta.cluster_id, key=key))
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
        "swept": swept,
    }
