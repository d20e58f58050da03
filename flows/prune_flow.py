"""The `prune-backups` flow: retention on its own schedule, in S3 and the local directory.

The newest backup in each store is always kept, and objects under S3 object lock are never
deleted (flows.retention, flows.tasks.prune_task).
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.alerts import alert_on_failure
from flows.retention import RetentionPolicy
from flows.tasks import find_backup_task, prune_task, retrying


@flow(name="prune-backups", on_failure=[alert_on_failure])
def prune_backups(
    cluster_id: str,
    bucket: str,
    local_dir: str,
    prefix: str = "jaco",
    retention: RetentionPolicy | None = None,
) -> list[dict[str, Any]]:
    """Retention on its own schedule: the newest backup in each store is always kept."""
    policy = retention or RetentionPolicy()
    scope = f"{prefix.strip('/')}/{cluster_id}/"
    results = []
    for url in (f"s3://{bucket}", f"file://{local_dir}"):
        newest = retrying(find_backup_task)(url, scope)
        results.append(retrying(prune_task)(url, scope, policy, newest))
    return results
