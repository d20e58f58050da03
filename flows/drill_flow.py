"""The `drill-restore` flow: prove a stored backup of one cluster restores, in a sandbox.

find the backup in the cluster's catalog (its newest verified backup unless a key is given;
only ever a backup recorded under this cluster's pinned id) → in a fresh sandbox
(flows/sandbox.py running `python -m jaco.drill.agent`) download the ciphertext (its size and
object metadata must be the record's), decrypt and restore it as it arrives, check it is the
object recorded (its SHA-256, once read whole, in the flow; the decrypted archive's in the
agent), check meta.json names the same cluster, start and check through the API → wipe the
sandbox, always → record the result in the catalog and report every check and the measured
restore time (RTO, from when the agent starts reading the download to READY).

When the backup is extended by change segments (the continuous backup, flows/stream.py) and
the drill knows the live cluster's servers, it also proves a point in time: a revision of the
backup's window, at random among those the live cluster still holds, its state digest read
there from the live cluster; the segments up to it go into the sandbox after the backup, and
the agent's "point in time" check restores backup + segments to that revision as `jaco restore
--segments` does and compares the digests.

Neither the backup nor its decryption touches the host's disk: the sandbox gets the
ciphertext as it downloads, and the token and verify identity, through a pipe. A failed check
fails the run and names it.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from flows.alerts import current_run, on_run_failure
from flows.catalog import BackupRecord, Catalog, DrillRecord, now
from flows.download import Download
from flows.errors import DrillFailed, StorageError, VerifyFailed
from flows.params import DrillParams
from flows.reports import drill_report, publish_history
from flows.sandbox import open_sandbox, sweep_sandboxes
from flows.sandbox_limits import tmpfs_bytes
from flows.storage import open_store
from flows.tasks import check_ciphertext, retrying
from flows.workdirs import run_workdir, sweep_workdirs
from jaco.public import (
    BackupMeta,
    Unavailable,
    cluster_id,
    open_client,
    random_point,
    sha256_file,
)

DRILL_TIMEOUT = 3600
FEED_WAIT = 30.0  # seconds the download may go on once the agent has ended


@task(name="find-backup", cache_policy=NO_CACHE)
def find_backup_task(params: DrillParams) -> tuple[BackupRecord, list[dict[str, Any]]]:
    """The backup to drill, recorded in this cluster's catalog under its pinned id, and the
    audit heads of the cluster's earlier backups (the restored chain must extend them)."""
    catalog = Catalog(open_store(params.s3_url, params.s3), params.prefix, params.cluster)
    record = _find(params, catalog)
    return record, _anchors(catalog.backups(), record)


def _find(params: DrillParams, catalog: Catalog) -> BackupRecord:
    pinned = catalog.identity()
    if pinned is None:
        raise DrillFailed(
            f"no backup of {params.cluster} yet (its catalog in s3://{params.bucket} has none)"
        )
    if params.cluster_id and params.cluster_id != pinned.cluster_id:
        raise DrillFailed(
            f"{params.cluster} is configured as cluster {params.cluster_id} but its catalog is "
            f"pinned to {pinned.cluster_id}: refusing to drill either"
        )
    if params.key:
        record = catalog.backup(params.key)
        if record is None or record.cluster_id != pinned.cluster_id:
            raise DrillFailed(
                f"{params.key} is not a backup of {params.cluster} (cluster "
                f"{pinned.cluster_id}) in its catalog: refusing to drill it"
            )
        return record
    verified = [b for b in catalog.backups() if b.verified and b.cluster_id == pinned.cluster_id]
    if not verified:
        raise DrillFailed(f"no verified backup of {params.cluster} yet")
    return verified[0]


def _check_object(record: BackupRecord, backup: Download) -> None:
    """Before a byte of it reaches a sandbox, the object must be the size recorded, say it is
    of the record's cluster and carry its ciphertext checksum. Its content is only known to be
    the one recorded once it has been read whole (its SHA-256, `check_ciphertext`)."""
    metadata = backup.metadata
    if backup.size != record.size:
        raise VerifyFailed(
            f"{record.key} is {backup.size} bytes; the catalog recorded {record.size}: it is "
            "not the object uploaded"
        )
    if metadata.get("cluster-id") != record.cluster_id:
        raise VerifyFailed(
            f"{record.key} says it belongs to cluster {metadata.get('cluster-id')!r}, not "
            f"{record.cluster_id}: refusing to drill it"
        )
    if "ciphertext-sha256" not in metadata:
        raise VerifyFailed(f"{record.key} carries no ciphertext checksum")


@task(name="pick-point", cache_policy=NO_CACHE)
def pick_point_task(params: DrillParams, record: BackupRecord) -> dict[str, Any] | None:
    """The point in time to drill: a revision after the backup, up to its newest segment, at
    random among those the live cluster still holds, with the live state digest there and the
    segments that reach it. None when the backup has no segments or no servers are given."""
    chain = Catalog(open_store(params.s3_url, params.s3), params.prefix, params.cluster).segments(
        record.stem
    )
    if not chain or not params.servers:
        return None
    low, high = record.snapshot_index + 1, chain[-1].last_revision
    token = params.secrets.read_token()
    last: Exception | None = None
    for server in params.servers:
        try:
            with open_client(server, token) as client:
                live = cluster_id(client)
                if live != record.cluster_id:
                    raise DrillFailed(
                        f"{server} answers as cluster {live}, not {record.cluster_id} "
                        f"({params.cluster}): refusing to compare the point in time with it"
                    )
                found = random_point(client, low, high, random.SystemRandom())
        except Unavailable as exc:
            last = exc
            continue
        if found is None:
            raise DrillFailed(
                f"the live cluster no longer holds any revision of the window of {record.stem} "
                f"(revisions {low}-{high} are compacted): the point in time cannot be compared "
                "with it; its change stream has stopped (see `jaco backup ls`)"
            )
        revision, digest = found
        needed = [s for s in chain if s.first_revision <= revision]
        return {
            "revision": revision,
            "state_digest": digest,
            "segments": [(s.key, s.size, s.ciphertext_sha256) for s in needed],
        }
    assert last is not None
    raise last


@task(name="fetch-segments", cache_policy=NO_CACHE)
def fetch_segments_task(params: DrillParams, point: dict[str, Any], directory: Path) -> list[Path]:
    """Download the segments' ciphertexts, each the object the catalog recorded (its size and
    SHA-256); the agent decrypts them and checks their content."""
    store = open_store(params.s3_url, params.s3)
    folder = directory / "segments"
    folder.mkdir(mode=0o700, exist_ok=True)
    paths = []
    for key, size, sha in point["segments"]:
        path = folder / key.rsplit("/", 1)[-1]
        store.get(key, path)
        if path.stat().st_size != size or sha256_file(path) != sha:
            raise DrillFailed(
                f"segment {key} is not the object the catalog recorded ({size} bytes, "
                f"SHA-256 {sha[:16]}…): refusing to drill it"
            )
        paths.append(path)
    return paths


@task(name="sandbox-drill", cache_policy=NO_CACHE)
def sandbox_drill_task(
    params: DrillParams,
    record: BackupRecord,
    anchors: list[dict[str, Any]],
    point: dict[str, Any] | None = None,
    segments: list[Path] | None = None,
) -> dict[str, Any]:
    """Run the agent in a fresh sandbox; secrets go in through its stdin, never a file, then
    the backup's ciphertext as it downloads, and the segments' (the header gives each one's
    size). The agent decrypts and restores as the bytes come; only once the object has been
    read whole is it known to be the one recorded (its SHA-256): until then nothing the agent
    restored counts; the agent's own first check holds the archive it decrypted to the
    plaintext SHA-256 recorded."""
    segments = segments or []
    with contextlib.closing(open_store(params.s3_url, params.s3).open(record.key)) as backup:
        _check_object(record, backup)
        header = _header(params, record, anchors, point, segments, backup.size)
        sandbox = open_sandbox(params.driver)
        result = sandbox.run_agent(
            ["--rejoin"] if params.rejoin else [],
            params.timeout_seconds,
            header=header,
            payload=[backup, *segments],
        )
        if not backup.finish(FEED_WAIT):
            raise StorageError(
                f"the download of {record.key} stalled after {backup.received} of "
                f"{backup.size} bytes"
            )
        if backup.error is None and result.report:
            backup.drain()  # an agent that stopped reading early: the hash needs it all
    if backup.error is not None:
        raise backup.error  # the store failed midway: retried, in a fresh sandbox
    if not result.report:
        raise DrillFailed(
            f"the drill agent in {sandbox.name} reported nothing (exit "
            f"{result.returncode}): {result.stderr.strip()[-400:]}"
        )
    check_ciphertext(record.key, backup.sha256, backup.metadata, record.ciphertext_sha256)
    return {
        **result.report,
        "timings": {**result.report.get("timings", {}), "download_seconds": backup.seconds},
        "sandbox": sandbox.name,
        "driver": sandbox.driver,
        "image": sandbox.image,
    }


def _header(
    params: DrillParams,
    record: BackupRecord,
    anchors: list[dict[str, Any]],
    point: dict[str, Any] | None,
    segments: list[Path],
    backup_bytes: int,
) -> bytes:
    """The agent's first line: the secrets, what to expect, and where each input ends."""
    handed: dict[str, Any] = {
        "token": params.secrets.read_token(),
        "identity": params.secrets.read_identity(),
        "expect": {
            "cluster_id": record.cluster_id,
            "snapshot_index": record.snapshot_index,
            "plaintext_sha256": record.plaintext_sha256,  # the ciphertext is this flow's to check
            "anchors": anchors,
        },
        "backup_bytes": backup_bytes,
    }
    if point is not None:
        handed["point"] = {
            "revision": point["revision"],
            "state_digest": point["state_digest"],
            "segments": [(p.name, p.stat().st_size) for p in segments],
        }
    return json.dumps(handed).encode() + b"\n"


@task(name="record-drill", cache_policy=NO_CACHE)
def record_drill_task(params: DrillParams, key: str, drill: DrillRecord) -> None:
    Catalog(open_store(params.s3_url, params.s3), params.prefix, params.cluster).record_drill(
        key, drill
    )


def _anchors(catalog_backups: list[BackupRecord], record: BackupRecord) -> list[dict[str, Any]]:
    """Audit heads of this cluster's earlier backups: the restored chain must pass through
    every one of them (history older than the backup was not rewritten since)."""
    return [
        {"seq": b.audit_head.seq, "hash": b.audit_head.hash, "source": b.key}
        for b in catalog_backups
        if b.audit_head
        and b.cluster_id == record.cluster_id
        and b.snapshot_index < record.snapshot_index
    ]


@flow(
    name="drill-restore",
    on_failure=[on_run_failure],
    on_crashed=[on_run_failure],
    timeout_seconds=DRILL_TIMEOUT,
)
def drill_restore(params: DrillParams) -> dict[str, Any]:
    logger = get_run_logger()
    run = current_run()
    workdir = Path(params.workdir)
    swept = sweep_workdirs(workdir) + sweep_sandboxes()
    for item in swept:
        logger.warning("swept %s", item)
    step = "sandbox-settings"
    try:
        tmpfs_bytes()  # a JACO_DRILL_TMPFS that is not a size fails before any download
        step = "find-backup"
        record, anchors = retrying(find_backup_task)(params)
        with run_workdir(workdir, f"drill-{params.cluster}") as directory:
            step = "pick-point"
            point = retrying(pick_point_task)(params, record)
            segments = []
            if point is not None:
                step = "fetch-segments"
                segments = retrying(fetch_segments_task)(params, point, directory)
                logger.info(
                    "drilling the point in time at revision %s too (%d segments)",
                    point["revision"],
                    len(segments),
                )
            step = "sandbox-drill"
            started = time.monotonic()
            report = retrying(sandbox_drill_task)(params, record, anchors, point, segments)
            logger.info("sandbox %s done in %.1fs", report["sandbox"], time.monotonic() - started)
    except Exception as exc:
        message = getattr(exc, "message", str(exc))
        if step == "sandbox-drill" and isinstance(exc, VerifyFailed | StorageError):
            step = "fetch-backup"  # the download runs beside the sandbox: it is what failed
        raise DrillFailed(f"drill step {step} failed: {message}") from None
    timings = report["timings"]
    # The download overlaps the decryption (the agent's clock runs from its first read).
    rto = sum(timings.get(k, 0.0) for k in ("decrypt_seconds", "restore_seconds", "ready_seconds"))
    meta = BackupMeta.model_validate(report["meta"], strict=False) if report.get("meta") else None
    failed = [c for c in report["checks"] if not c["ok"]]
    passed = bool(report["ok"]) and not failed
    retrying(record_drill_task)(
        params,
        record.key,
        DrillRecord(
            at=now(),
            passed=passed,
            run=run,
            rto_seconds=round(rto, 2) if passed else None,
            failed_checks=[c["name"] for c in failed],
            reason="; ".join(f"{c['name']}: {c['detail']}" for c in failed)[:2000],
            driver=report["driver"],
            image=report.get("image") or "",
            point_revision=point["revision"] if point else None,
        ),
    )
    create_markdown_artifact(
        drill_report(params.cluster, report["driver"], record.key, meta, report, rto),
        key=f"jaco-drill-{params.cluster}",
        description=f"latest restore drill of {params.cluster}",
    )
    publish_history(params)
    if not passed:
        details = "; ".join(f"{c['name']}: {c['detail']}" for c in failed)
        raise DrillFailed(f"drill check(s) failed: {details or 'agent reported failure'}")
    return {
        "key": record.key,
        "rto_seconds": rto,
        "timings": timings,
        "checks": report["checks"],
        "sandbox": report["sandbox"],
        "driver": report["driver"],
        "image": report.get("image"),
        "snapshot_index": record.snapshot_index,
        "cluster_id": record.cluster_id,
        "point_revision": point["revision"] if point else None,
        "swept": swept,
    }
