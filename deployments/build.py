"""The deployments of a site, built once from its configuration for both ways of running
them: served by one process (deployments.serve) or registered on a work pool for a fleet of
workers (deployments.register). Each is a flow with the options and parameters it runs with.
"""

from __future__ import annotations

from typing import Any

from flows.backup_flow import backup_cluster
from flows.config import ClusterConfig, SiteConfig
from flows.drill_flow import drill_restore
from flows.errors import PipelineError
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
                "name": config.watchdog.name,
                "interval": config.watchdog.interval_seconds,
                "tags": ["jaco", "watchdog"],
                "parameters": {"params": watchdog_params(config).model_dump(mode="json")},
            },
        )
    )
    return made


def deployment_names(made: list[tuple[Any, dict[str, Any]]]) -> list[str]:
    return [f"{flow.name}/{options['name']}" for flow, options in made]


def held_otherwise(made: list[tuple[Any, dict[str, Any]]], for_pool: bool) -> dict[str, str]:
    """Deployments the Prefect server already holds under these names that re-creating them
    would silently take over. Held the other way: for a work pool (deployments.register) when
    about to serve them, or served (deployments.serve) when about to register them on a pool;
    re-created under the same name, a deployment keeps the other way's leftovers (a served run
    then tries to download the pool's code storage and crashes; pool workers would pick up a
    served deployment's runs). Or a watchdog of the same name watching clusters this site does
    not have: another site's, which made over would watch this site's clusters only, the other
    site's going unwatched without a word (a cluster added to this site is no collision).
    By name: how held."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    found: dict[str, str] = {}
    with get_client(sync_client=True) as client:
        for flow, options in made:
            name = f"{flow.name}/{options['name']}"
            try:
                existing = client.read_deployment_by_name(name)
            except ObjectNotFound:
                continue
            except Exception as exc:  # noqa: BLE001 - the API down, refused, or not Prefect's
                raise PipelineError(
                    f"cannot read the deployments from the Prefect API at "
                    f"{PREFECT_API_URL.value() or 'its temporary server'}: {exc}".splitlines()[0]
                ) from None
            pooled = bool(
                existing.work_pool_name or existing.storage_document_id or existing.pull_steps
            )
            if pooled and not for_pool:
                found[name] = f"registered on work pool {existing.work_pool_name or '?'}"
            elif not pooled and for_pool:
                found[name] = "served by a deployments.serve process"
            if flow.name == "watchdog" and (lacking := _watched(existing.parameters, options)):
                found[name] = (
                    f"watching clusters this site configuration does not have "
                    f"({', '.join(lacking)}: another site's? give each site its own "
                    "[watchdog] name)"
                )
    return found


def _watched(theirs: dict[str, Any] | None, ours: dict[str, Any]) -> list[str]:
    """The clusters an existing watchdog's parameters watch that ours do not."""
    watched = (theirs or {}).get("params", {}).get("clusters", [])
    mine = {c["cluster"] for c in ours["parameters"]["params"]["clusters"]}
    return sorted(
        {str(c["cluster"]) for c in watched if isinstance(c, dict) and "cluster" in c} - mine
    )


def replace(names: list[str]) -> None:
    """Delete these deployments (and with them their scheduled runs), to be created anew."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        for name in names:
            client.delete_deployment(client.read_deployment_by_name(name).id)


def refuse_or_replace(made: list[tuple[Any, dict[str, Any]]], for_pool: bool, take: bool) -> None:
    """Refuse (a PipelineError naming them and the way out) to re-create deployments the server
    holds the other way, or a watchdog that watches another site's clusters, unless told to
    take them over (--replace)."""
    held = held_otherwise(made, for_pool)
    if not held:
        return
    if not take:
        first, how = next(iter(held.items()))
        more = f" (and {len(held) - 1} more)" if len(held) > 1 else ""
        raise PipelineError(
            f"{first} is already {how}{more}; run with --replace to take them over (their "
            "scheduled runs are deleted and made again), or stop the other way first"
        )
    replace(sorted(held))
    for name, how in held.items():
        print(f"replaced {name} ({how})", flush=True)
