"""The `drill-restore` flow: prove a stored backup restores, in an ephemeral sandbox.

find the backup (the newest in the bucket unless a key is given: only verified backups stay
there) → download and decrypt it (the same code as verify) → restore, start and check it inside
a sandbox (flows/sandbox.py, flows/drill_agent.py) → wipe the sandbox, always → report every
check and the measured restore time (RTO). A failed check fails the run and names the check.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_client, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from flows.backup import alert_on_failure
from flows.errors import PipelineError
from flows.retention import parse_key
from flows.sandbox import open_sandbox
from flows.storage import open_store
from flows.tasks import RETRY, fetch_and_decrypt

HISTORY_ROWS = 50


class DrillFailed(PipelineError):
    pass


class DrillParams(BaseModel):
    cluster: str = Field(
        description="The cluster's short name (reports, history).",
        pattern=r"^[a-z0-9][a-z0-9-]{0,40}$",
    )
    bucket: str = Field(description="S3 bucket holding the encrypted backups.")
    prefix: str = Field("jaco", description="Key prefix inside the bucket.")
    cluster_id: str | None = Field(None, description="Only this cluster id's backups.")
    key: str | None = Field(None, description="A specific object key; default: the newest.")
    driver: Literal["bwrap", "docker"] = Field("bwrap", description="Sandbox driver.")
    rejoin: bool = Field(False, description="Also join a second sandboxed node (full drill).")
    workdir: str = Field("/var/lib/jaco-drills", description="Host scratch space (0700).")
    timeout_seconds: float = Field(900, gt=0)


@task(
    name="find-backup",
    cache_policy=NO_CACHE,
    retries=RETRY["retries"],
    retry_delay_seconds=RETRY["retry_delay_seconds"],
    retry_condition_fn=RETRY["retry_condition_fn"],
)
def find_backup_task(store_url: str, prefix: str) -> str:
    backups = [b for b in (parse_key(o.key) for o in open_store(store_url).list(prefix)) if b]
    if not backups:
        raise DrillFailed(f"no backup under {store_url}/{prefix}")
    return max(backups, key=lambda b: (b.day, b.index)).key


@task(name="fetch-backup", timeout_seconds=3600, **RETRY)
def fetch_backup_task(store_url: str, key: str, workdir: str) -> dict[str, Any]:
    Path(workdir).mkdir(mode=0o700, parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix="fetch-", dir=workdir))
    try:
        fetched = fetch_and_decrypt(store_url, key, directory)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return {
        "dir": str(directory),
        "plaintext": str(fetched.plaintext),
        "meta": fetched.meta,
        "download_seconds": fetched.download_seconds,
        "decrypt_seconds": fetched.decrypt_seconds,
    }


@task(name="sandbox-drill", cache_policy=NO_CACHE)
def sandbox_drill_task(
    plaintext: str, meta: dict[str, Any], driver: str, rejoin: bool, workdir: str, timeout: float
) -> dict[str, Any]:
    token = os.environ.get("JACO_TOKEN")
    if not token:
        raise DrillFailed("set JACO_TOKEN to an operator token from before the backup")
    inputs = Path(tempfile.mkdtemp(prefix="inputs-", dir=workdir))
    try:
        os.link(plaintext, inputs / "backup.tar.gz")
        (inputs / "meta.json").write_text(json.dumps(meta))
        fd = os.open(inputs / "token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(token)
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


def _report(
    params: DrillParams, key: str, fetched: dict[str, Any], report: dict[str, Any], rto: float
) -> str:
    meta = fetched["meta"]
    lines = [
        f"# Restore drill of `{params.cluster}`: {'PASSED' if report['ok'] else 'FAILED'}",
        "",
        f"- backup `{key}` (index {meta['snapshot_index']}, taken {meta['taken_at']})",
        f"- sandbox `{report['sandbox']}` ({params.driver}), wiped",
        f"- **RTO {rto:.1f} s**: download {fetched['download_seconds']:.2f} s, decrypt "
        f"{fetched['decrypt_seconds']:.2f} s, restore "
        f"{report['timings'].get('restore_seconds', 0):.2f} s, ready "
        f"{report['timings'].get('ready_seconds', 0):.2f} s",
        "",
        "| check | result | detail |",
        "|---|---|---|",
    ]
    lines += [
        f"| {c['name']} | {'pass' if c['ok'] else '**FAIL**'} | {c['detail']} |"
        for c in report["checks"]
    ]
    return "\n".join(lines)


@flow(name="drill-restore", on_failure=[alert_on_failure])
def drill_restore(params: DrillParams) -> dict[str, Any]:
    s3_url = f"s3://{params.bucket}"
    prefix = f"{params.prefix.strip('/')}/" + (f"{params.cluster_id}/" if params.cluster_id else "")
    step = "find-backup"
    fetched: dict[str, Any] | None = None
    try:
        key = params.key or find_backup_task(s3_url, prefix)
        step = "fetch-backup"
        fetched = fetch_backup_task(s3_url, key, params.workdir)
        step = "sandbox-drill"
        report = sandbox_drill_task(
            fetched["plaintext"],
            fetched["meta"],
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
            shutil.rmtree(fetched["dir"], ignore_errors=True)
    timings = report.get("timings", {})
    rto = (
        fetched["download_seconds"]
        + fetched["decrypt_seconds"]
        + timings.get("restore_seconds", 0)
        + timings.get("ready_seconds", 0)
    )
    create_markdown_artifact(
        _report(params, key, fetched, report, rto),
        key=f"jaco-drill-{params.cluster}",
        description=f"latest restore drill of {params.cluster}",
    )
    failed = [c for c in report["checks"] if not c["ok"]]
    row = {
        "key": key,
        "index": fetched["meta"]["snapshot_index"],
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
        "snapshot_index": fetched["meta"]["snapshot_index"],
    }
