"""Helpers shared by the flow tests: real age keys, the flow's parameters, catalog records."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from pathlib import Path
from typing import Any

from flows.catalog import BackupRecord, Verified
from flows.params import BackupParams
from flows.retention import RetentionPolicy
from infra.localcluster import Cluster
from tests.keys import age_keygen  # noqa: F401 - the tests import it from here too

BUCKET = "backups"
# A drill on a sandbox tmpfs of 64 KiB (JACO_DRILL_TMPFS): the restore's own space check.
SANDBOX_FULL = re.compile(
    r"drill check\(s\) failed: restore: restoring this backup needs (\d+) bytes but the "
    r"filesystem holding /var/lib/jaco has only (\d+) free; nothing was written"
)


def params(source: Cluster, keys: dict[str, Any], local: Path, **over: Any) -> BackupParams:
    values: dict[str, Any] = {
        "cluster": "prod",
        "servers": [n.server for n in source.nodes.values()],
        "bucket": BUCKET,
        "prefix": "jaco",
        "recipients": [keys["recipient"]],
        "local_dir": str(local),
        "retention": RetentionPolicy(keep_last=30),
    }
    values.update(over)
    return BackupParams(**values)


class Webhook:
    """A real HTTP listener on 127.0.0.1 that records the JSON bodies POSTed to it."""

    def __init__(self) -> None:
        import http.server
        import json
        import threading

        posts: list[dict[str, Any]] = []
        self.posts = posts

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                posts.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, cluster: str | None = None) -> list[str]:
        return [p["event"] for p in self.posts if cluster is None or p["cluster"] == cluster]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def latest_table(key: str) -> list[dict[str, Any]]:
    """The rows of the newest table artifact under `key` (read from the Prefect API)."""
    data = _latest_artifact(key)
    return list(json.loads(data) if isinstance(data, str) else data)


def latest_report(cluster: str) -> str:
    """The newest drill report (markdown) of `cluster`."""
    return str(_latest_artifact(f"jaco-drill-{cluster}"))


def latest_checks(cluster: str) -> list[str]:
    """The check rows ("| name | result |") of the newest drill report of `cluster`."""
    report = latest_report(cluster)
    rows = [line.split(" | ")[:2] for line in report.splitlines() if line.startswith("| ")]
    return [f"{name[2:]}: {result}" for name, result in rows[1:]]  # past the header row


def _latest_artifact(key: str) -> Any:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        (latest,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    return latest.data


def task_runs(state: Any, name: str) -> list[Any]:
    """The task runs of the flow run `state` ended, whose names start with `name`."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
        )
    return [r for r in runs if r.name.startswith(name)]


def flow_logs(state: Any) -> str:
    """The warnings and errors the flow run `state` ended logged, as the Prefect server holds
    them (where operators read them), one message per line."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterLevel
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)  # the last batch may still be on its way
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            LogFilter(
                flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]),
                level=LogFilterLevel(ge_=logging.WARNING),  # a long run's first page is INFO
            )
        )
    return "\n".join(log.message for log in logs)


def backup_record(key: str, day: dt.date, index: int, verified: bool) -> BackupRecord:
    """A catalog record of backup `key` (cluster c1) taken at midnight of `day`, verified or
    not; its checksums are placeholders (nothing reads the object)."""
    return BackupRecord(
        cluster="c1", cluster_id="c1", key=key,
        taken_at=dt.datetime.combine(day, dt.time(), dt.UTC), snapshot_index=index,
        snapshot_term=1, jaco_version="test", archive_size=1, size=1,
        plaintext_sha256="0" * 64, ciphertext_sha256="1" * 64, snapshot_sha256="2" * 64,
        state_digest="3" * 64, counts={},
        verified=Verified(at=dt.datetime.now(dt.UTC)) if verified else None,
    )  # fmt: skip
