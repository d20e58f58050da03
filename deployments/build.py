"""The deployments of a site, built once from its configuration for both ways of running
them: served by one process (deployments.serve) or registered on a work pool for a fleet of
workers (deployments.register). Each is a flow with the options and parameters it runs with.
"""

from __future__ import annotations

from typing import Any

from flows.backup_flow import backup_cluster
from flows.config import ClusterConfig, SiteConfig
from flows.drill_flow import drill_restore
from flows.prune_flow import prune_backups
from flows.watchdog_flow import Objective, WatchdogParams, watchdog


def watchdog_params(config: SiteConfig) -> WatchdogParams:
    objectives = [
        Objective(
            **c.model_dump(
                include=set(Objective.model_fields)
                - {"max_backup_age", "max_drill_age", "max_stream_lag"}
            ),
            max_backup_age=c.max_backup_age,
            max_drill_age=c.max_drill_age,
            max_stream_lag=c.max_stream_lag,
        )
        for c in config.clusters.values()
    ]
    timeouts = {
        "backup-cluster": max((c.backup_timeout for c in config.clusters.values()), default=7200),
        "drill-restore": max((c.drill_timeout for c in config.clusters.values()), default=3600),
        "prune-backups": 3600,
    }
    return WatchdogParams(
        clusters=objectives,
        realert_seconds=config.watchdog.realert_seconds,
        run_timeouts=timeouts,
    )


def cluster_deployments(name: str, cluster: ClusterConfig) -> list[tuple[Any, dict[str, Any]]]:
    tags = ["jaco", f"cluster:{name}"]
    backup = backup_cluster.with_options(timeout_seconds=cluster.backup_timeout)
    drill = drill_restore.with_options(timeout_seconds=cluster.drill_timeout)
    return [
        (
            backup,
            {
                "name": f"backup-{name}",
                "cron": cluster.backup_cron,
                "tags": tags,
                "parameters": {"params": cluster.backup_params().model_dump(mode="json")},
            },
        ),
        (
            drill,
            {
                "name": f"weekly-drill-{name}",
                "cron": cluster.drill_cron,
                "tags": tags,
                "parameters": {"params": cluster.drill_params().model_dump(mode="json")},
            },
        ),
        (
            drill,
            {
                "name": f"drill-{name}",
                "tags": [*tags, "on-demand"],
                "parameters": {
                    "params": cluster.drill_params(rejoin=False).model_dump(mode="json")
                },
            },
        ),
        (
            prune_backups,
            {
                "name": f"retention-{name}",
                "cron": cluster.prune_cron,
                "tags": tags,
                "parameters": {"params": cluster.prune_params().model_dump(mode="json")},
            },
        ),
    ]


def site_deployments(config: SiteConfig) -> list[tuple[Any, dict[str, Any]]]:
    made = [d for name, c in config.clusters.items() for d in cluster_deployments(name, c)]
    made.append(
        (
            watchdog,
            {
                "name": "jaco-watchdog",
                "interval": config.watchdog.interval_seconds,
                "tags": ["jaco", "watchdog"],
                "parameters": {"params": watchdog_params(config).model_dump(mode="json")},
            },
        )
    )
    return made
