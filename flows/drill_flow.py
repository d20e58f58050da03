"""The `drill-restore` flow: prove a stored backup restores, in an ephemeral sandbox.

find the backup (the newest in the bucket unless a key is given: only verified backups stay
there) → download and decrypt it (the same code as verify) → restore, start and check it inside
a sandbox (flows/sandbox.py running `python -m jaco.drill.agent`) → wipe the sandbox, always →
report every check and the measured restore time (RTO). A failed check fails the run and
names the check.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_client, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.alerts import alert_on_failure
from flows.errors import DrillFailed
from flows.params import DrillParams
from flows.reports import drill_report
from flows.sandbox import open_sandbox
from flows.tasks import fetch_and_decrypt, find_backup_task, retrying
from jaco.public import BackupMeta, create_private

HISTORY_ROWS = 50


@dataclass(frozen=True)
class Fetched:
    directory: Path
    plaintext: Path
    meta: BackupMeta
    download_seconds: float
    decrypt_seconds: float


@task(name="fetch-backup", timeout_seconds=3600, cache_policy=NO_CACHE)
def fetch_backup_task(store_url: str, key: str, workdir: str) -> Fetched:
    Path(workdir).mkdir(mode=0o700, parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="fetch-", dir=workdir))
    try:
        fetched = fetch_and_decrypt(store_url, key, directory)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return Fetched(
        directory,
        fetched.plaintext,
        fetched.meta,
        fetched.download_seconds,
        fetched.decrypt_seconds,
    )


@task(name="sandbox-drill", cache_policy=NO_CACHE)
def sandbox_drill_task(
    plaintext: Path, meta: BackupMeta, driver: str, rejoin: bool, workdir: str, timeout: float
) -> dict[str, Any]:
    token = os.environ.get("JACO_TOKEN")
    if not token:
        raise DrillFailed("set JACO_TOKEN to an operator token from before the backup")
    inputs = Path(tempfile.mkdtemp(prefix="inputs-", dir=workdir))
    try:
        os.link(plaintext, inputs / "backup.tar.gz")
        (inputs / "meta.json").write_bytes(meta.to_json())
        with create_private(inputs / "token") as f:
            f.write(token.encode())
        sandbox = open_sandbox(driver)
        result = sandbox.run_agent(inputs, ["--rejoin"] if rejoin else [], timeout)
    finally:
        shutil.rmtree(inputs, ignore_errors=True)  # the sandbox itself is gone with its process
    if not result.report:
        raise DrillFailed(
            f"the drill agent in {sandbox.name} reported nothing (exit "
            f"{result.returncode}): {result.stderr.strip()[-400:]}"
        )
    return {**result.report, "sandbox": sandbox.name}


def _history(key: str, row: dict[str, Any]) -> list[dict[str, Any]]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    rows = [row]
    with contextlib.suppress(Exception), get_client(sync_client=True) as client:
        latest = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
        if latest:
            data = latest[0].data
            previous = json.loads(data) if isinstance(data, str) else data
            if isinstance(previous, list):
                rows += previous
    return rows[:HISTORY_ROWS]


@flow(name="drill-restore", on_failure=[alert_on_failure])
def drill_restore(params: DrillParams) -> dict[str, Any]:
    s3_url = f"s3://{params.bucket}"
    prefix = f"{params.prefix.strip('/')}/" + (f"{params.cluster_id}/" if params.cluster_id else "")
    step = "find-backup"
    fetched: Fetched | None = None
    try:
        key = params.key or retrying(find_backup_task)(s3_url, prefix)
        step = "fetch-backup"
        fetched = retrying(fetch_backup_task)(s3_url, key, params.workdir)
        step = "sandbox-drill"
        report = sandbox_drill_task(
            fetched.plaintext,
            fetched.meta,
            params.driver,
            params.rejoin,
            params.workdir,
            params.timeout_seconds,
        )
    except Exception as exc:
        message = getattr(exc, "message", str(exc))
        raise DrillFailed(f"drill step {step} failed: {message}") from None
    finally:
        if fetched is not None:
            shutil.rmtree(fetched.directory, ignore_errors=True)
    timings = report.get("timings", {})
    rto = (
        fetched.download_seconds
        + fetched.decrypt_seconds
        + timings.get("restore_seconds", 0)
        + timings.get("ready_seconds", 0)
    )
    create_markdown_artifact(
        drill_report(
            params.cluster,
            params.driver,
            key,
            fetched.meta,
            {
                "download_seconds": fetched.download_seconds,
                "decrypt_seconds": fetched.decrypt_seconds,
            },
            report,
            rto,
        ),
        key=f"jaco-drill-{params.cluster}",
        description=f"latest restore drill of {params.cluster}",
    )
    failed = [c for c in report["checks"] if not c["ok"]]
    row = {
        "key": key,
        "index": fetched.meta.snapshot_index,
        "ok": report["ok"],
        "rto_seconds": round(rto, 2),
        "failed": ", ".join(c["name"] for c in failed),
    }
    create_table_artifact(
        _history(f"jaco-drills-{params.cluster}", row),
        key=f"jaco-drills-{params.cluster}",
        description=f"restore drill history of {params.cluster}",
    )
    if failed or not report["ok"]:
        details = "; ".join(f"{c['name']}: {c['detail']}" for c in failed)
        raise DrillFailed(f"drill check(s) failed: {details or 'agent reported failure'}")
    return {
        "key": key,
        "rto_seconds": rto,
        "checks": report["checks"],
        "sandbox": report["sandbox"],
        "snapshot_index": fetched.meta.snapshot_index,
    }
