"""The `watchdog` flow: nobody hears silence, so something must listen for it.

Every few minutes (its own deployment), for each cluster it reads the *catalog* — not Prefect's
run states — and alerts when the newest verified backup is older than `max_backup_age` (the
RPO objective) or the newest passing drill older than `max_drill_age`: a stopped schedule, a
dead worker, a paused deployment and a run killed outside any worker all look the same there.
Where a change stream runs (`max_stream_lag` set), it alerts when the stream's heartbeat says
changes received more than that long ago are still not stored, or when it stopped beating.
It also ends runs that a killed process left "Running" past their timeout (marks them Crashed,
records and alerts). An alert repeats every `realert_seconds` while the condition lasts.
"""

from __future__ import annotations

import datetime as dt
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prefect import flow, get_client
from prefect.logging import get_run_logger
from pydantic import BaseModel, Field

from flows.alerts import alert, current_run, on_run_failure
from flows.catalog import Catalog, ClusterView, Failure, RunRef, newest_verified_in, now
from flows.params import Where
from flows.storage import BackupStore, open_store

WATCHED_FLOWS = {"backup-cluster": 7200.0, "drill-restore": 3600.0, "prune-backups": 3600.0}
GRACE_SECONDS = 600
READ_THREADS = 4  # catalogs read at a time (flows.metrics reads as many)


class Objective(Where):
    max_backup_age: float = Field(7200, gt=0)
    max_drill_age: float = Field(8 * 86400, gt=0)
    max_stream_lag: float | None = Field(None, gt=0)  # for clusters with a change stream


class WatchdogParams(BaseModel):
    clusters: list[Objective]
    realert_seconds: float = Field(3600, gt=0)
    run_timeouts: dict[str, float] = Field(default_factory=lambda: dict(WATCHED_FLOWS))
    grace_seconds: float = Field(GRACE_SECONDS, ge=0)


def _age(at: dt.datetime | None) -> float | None:
    return None if at is None else (now() - at).total_seconds()


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def stale_conditions(target: Objective, view: ClusterView, store: BackupStore) -> dict[str, str]:
    """What is wrong with one cluster's recoverability, by condition, as alert reasons. A
    verified backup counts only while its object is in `store`."""
    problems = {}
    newest, gone = newest_verified_in(view.backups, store.exists)  # a HEAD each, newest first
    age = _age(newest.taken_at if newest else None)
    if age is None:
        problems["backup.stale"] = f"there is no verified backup of {target.cluster} at all"
    elif age > target.max_backup_age:
        problems["backup.stale"] = (
            f"the newest verified backup of {target.cluster} ({newest.key if newest else ''}) "
            f"is {_human(age)} old; the objective is {_human(target.max_backup_age)}"
        )
    if gone and "backup.stale" in problems:
        problems["backup.stale"] += (
            f" ({len(gone)} newer verified backup(s) recorded in the catalog are gone from "
            f"{store.name}: {gone[0].key})"
        )
    drilled = view.last_passing_drill()
    age = _age(drilled[1].at if drilled else None)
    if age is None:
        problems["drill.stale"] = f"no restore drill of {target.cluster} has ever passed"
    elif age > target.max_drill_age:
        problems["drill.stale"] = (
            f"the last passing restore drill of {target.cluster} was {_human(age)} ago; the "
            f"objective is {_human(target.max_drill_age)}"
        )
    if target.max_stream_lag is not None:
        status = view.stream
        lag = _age(status.durable_at if status else None)
        if status is None or lag is None:
            problems["stream.stale"] = (
                f"the change stream of {target.cluster} has never reported: is `jaco pipeline "
                f"stream --cluster {target.cluster}` running?"
            )
        elif lag > target.max_stream_lag:
            queued = f", {status.queued} segments queued" if status.queued else ""
            problems["stream.stale"] = (
                f"the change stream of {target.cluster} has stored nothing it received since "
                f"{status.durable_at:%Y-%m-%d %H:%M:%S} UTC ({_human(lag)} ago; last heard "
                f"from {status.host} pid {status.pid} {_human(_age(status.at) or 0)} ago"
                f"{queued}); the objective is {_human(target.max_stream_lag)}"
            )
    return problems


def _due(catalog: Catalog, condition: str, realert: float) -> bool:
    """Alert now? (Not if the same condition was alerted less than `realert` ago.)"""
    key = f"{catalog.root}watchdog.json"
    state = json.loads(catalog.store.get_bytes(key) or b"{}")
    last = state.get(condition)
    if last and (now() - dt.datetime.fromisoformat(last)).total_seconds() < realert:
        return False
    state[condition] = now().isoformat()
    catalog.store.put_bytes(key, json.dumps(state).encode())
    return True


def _clear(catalog: Catalog, conditions: set[str]) -> None:
    key = f"{catalog.root}watchdog.json"
    state = json.loads(catalog.store.get_bytes(key) or b"{}")
    if any(c in state for c in conditions):
        catalog.store.put_bytes(
            key, json.dumps({k: v for k, v in state.items() if k not in conditions}).encode()
        )


def end_abandoned_runs(params: WatchdogParams, logger: Any) -> list[dict[str, Any]]:
    """Runs still 'Running' long past their flow's timeout: their process is gone (killed
    outside a worker, a host lost). Mark them Crashed so nothing waits on them; report them."""
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    ended = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=list(params.run_timeouts))),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
            ),
        )
        flows = {}
        for run in runs:
            if run.flow_id not in flows:
                flows[run.flow_id] = client.read_flow(run.flow_id).name
            limit = params.run_timeouts.get(flows[run.flow_id], 0) + params.grace_seconds
            started = run.start_time
            if started is None or (now() - started).total_seconds() < limit:
                continue
            message = (
                f"still Running {_human((now() - started).total_seconds())} after it started, "
                f"past its {_human(limit - params.grace_seconds)} timeout: its process is gone; "
                "marked Crashed by the watchdog"
            )
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            logger.error("flow run %s (%s): %s", run.name, flows[run.flow_id], message)
            ended.append(
                {"flow": flows[run.flow_id], "run": run, "message": message,
                 "params": run.parameters.get("params")}
            )  # fmt: skip
    return ended


def _conditions(target: Objective) -> tuple[Catalog, dict[str, str]] | Exception:
    """A cluster's catalog and what is wrong with its recoverability, or why it could not be
    read: its store (S3 client), the catalog, the HEAD of its newest verified backups."""
    try:
        catalog = Catalog(open_store(target.s3_url, target.s3), target.prefix, target.cluster)
        return catalog, stale_conditions(target, catalog.view(), catalog.store)
    except Exception as exc:  # noqa: BLE001 - reported by the caller
        return exc


@flow(name="watchdog", on_failure=[on_run_failure], timeout_seconds=900)
def watchdog(params: WatchdogParams) -> dict[str, Any]:
    logger = get_run_logger()
    me = current_run()
    findings: dict[str, Any] = {}
    by_name = {t.cluster: t for t in params.clusters}
    for abandoned in end_abandoned_runs(params, logger):
        run = abandoned["run"]
        target = by_name.get((abandoned["params"] or {}).get("cluster", ""))
        cluster = target.cluster if target else "unknown"
        ref = RunRef(id=str(run.id), name=run.name)
        if target is not None:
            catalog = Catalog(open_store(target.s3_url, target.s3), target.prefix, cluster)
            kind = {"backup-cluster": "backup", "drill-restore": "drill"}.get(
                abandoned["flow"], "prune"
            )
            catalog.record_failure(
                Failure(at=now(), kind=kind, reason=abandoned["message"], run=ref)  # type: ignore[arg-type]
            )
        alert(
            "run.abandoned",
            cluster,
            abandoned["message"],
            target.secrets if target else None,
            ref,
            flow=abandoned["flow"],
        )
        findings.setdefault(cluster, []).append(f"run {run.name}: {abandoned['message']}")
    # The catalogs are read side by side (a fleet's, one after the other, outlasted the run's
    # timeout on real S3); what they say is acted on one cluster at a time.
    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="watch") as pool:
        read = list(pool.map(_conditions, params.clusters))
    for target, conditions in zip(params.clusters, read, strict=True):
        if isinstance(conditions, Exception):  # an unreadable catalog is itself the alarm
            reason = f"the catalog of {target.cluster} cannot be read: {conditions}"
            logger.error(reason)
            alert("catalog.unreadable", target.cluster, reason, target.secrets, me)
            findings.setdefault(target.cluster, []).append(reason)
            continue
        catalog, problems = conditions
        _clear(catalog, {"backup.stale", "drill.stale", "stream.stale"} - set(problems))
        for condition, reason in problems.items():
            findings.setdefault(target.cluster, []).append(reason)
            logger.error(reason)
            if _due(catalog, condition, params.realert_seconds):
                alert(condition, target.cluster, reason, target.secrets, me)
                catalog.record_failure(Failure(at=now(), kind="watchdog", reason=reason, run=me))
        if not problems:
            logger.info("%s: backups and drills within their objectives", target.cluster)
    return findings
