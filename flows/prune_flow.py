"""The `prune-backups` flow: retention on its own schedule, in S3 and the local directory.

Only backups of the cluster's pinned id are considered; the newest backup in each store is
always kept, objects under S3 object lock are never deleted (flows.retention,
flows.tasks.prune_task), and the catalog forgets what was deleted.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.alerts import on_run_failure
from flows.catalog import Catalog
from flows.errors import PipelineError
from flows.params import PruneParams
from flows.storage import open_store
from flows.tasks import prune_task, retrying


@flow(name="prune-backups", on_failure=[on_run_failure], on_crashed=[on_run_failure])
def prune_backups(params: PruneParams) -> list[dict[str, Any]]:
    pinned = Catalog(open_store(params.s3_url, params.s3), params.prefix, params.cluster).identity()
    cluster_id = pinned.cluster_id if pinned else params.cluster_id
    if cluster_id is None:
        raise PipelineError(f"no backup of {params.cluster} yet: nothing to prune")
    return [
        retrying(prune_task)(params, url, cluster_id, params.retention, None)
        for url in (params.s3_url, params.local_url)
    ]
