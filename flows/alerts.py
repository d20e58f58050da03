"""Telling someone: every failed, crashed or timed-out run, and every missed objective.

An alert goes to the cluster's webhook (its `alert_webhook` reference, else
JACO_ALERT_WEBHOOK) as a small JSON POST and, as a Prefect event `jaco.<what>` about the
resource `jaco.cluster.<name>`, to anything an Automation wants to do with it. The payload
names the cluster, the deployment, the run and the reason, never a secret. A run's failure is
also recorded in the cluster's catalog, where `jaco backup ls`, the history table and the
metrics see it. `on_run_failure` is the flows' on_failure / on_crashed hook.
"""

from __future__ import annotations

import contextlib
import json
import logging
import urllib.request
from typing import Any

from flows.catalog import Catalog, Failure, RunRef, now
from flows.params import BackupParams, DrillParams, Where
from flows.secrets import ClusterSecrets
from flows.storage import open_store

log = logging.getLogger("jaco.alerts")


def current_run() -> RunRef | None:
    from prefect.runtime import flow_run

    if not flow_run.id:
        return None
    return RunRef(id=str(flow_run.id), name=flow_run.name or "", url=flow_run.ui_url or "")


def alert(
    what: str,
    cluster: str,
    reason: str,
    secrets: ClusterSecrets | None = None,
    run: RunRef | None = None,
    **detail: Any,
) -> dict[str, Any]:
    """Send one alert (webhook + Prefect event); returns the payload sent."""
    payload = {
        "event": f"jaco.{what}",
        "cluster": cluster,
        "reason": reason,
        "flow_run": run.name if run else "",
        "flow_run_id": run.id if run else "",
        "url": run.url if run else "",
        **detail,
    }
    with contextlib.suppress(Exception):  # an event that cannot be sent must not hide the alert
        from prefect.events import emit_event

        emit_event(
            event=f"jaco.{what}",
            resource={"prefect.resource.id": f"jaco.cluster.{cluster}", "jaco.cluster": cluster},
            payload=payload,
        )
    try:
        url = (secrets or ClusterSecrets()).webhook()
    except Exception as exc:  # noqa: BLE001 - a broken reference must not swallow the alert
        log.error("alert for %s not sent to a webhook: %s", cluster, exc)
        url = None
    if url and url.startswith(("https://", "http://")):  # only web hooks, never file:// etc.
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310
        try:
            urllib.request.urlopen(request, timeout=10).close()  # noqa: S310
        except OSError as exc:
            log.error("alert for %s could not be delivered to its webhook: %s", cluster, exc)
    return payload


def _params(flow_run: Any) -> Where | None:
    raw = (flow_run.parameters or {}).get("params")
    for model in (BackupParams, DrillParams, Where):
        with contextlib.suppress(Exception):
            return model.model_validate(raw)
    return None


def on_run_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """on_failure / on_crashed: record the failure in the catalog, then alert."""
    params = _params(flow_run)
    kind = {"backup-cluster": "backup", "drill-restore": "drill"}.get(flow.name, "prune")
    reason = state.message or state.name
    run = RunRef(id=str(flow_run.id), name=flow_run.name or "")
    with contextlib.suppress(Exception):
        from prefect.settings import get_current_settings

        ui = get_current_settings().ui_url
        run.url = f"{ui}/runs/flow-run/{flow_run.id}" if ui else ""
    cluster = params.cluster if params else "unknown"
    if params is not None:
        try:
            catalog = Catalog(open_store(params.s3_url, params.s3), params.prefix, cluster)
            catalog.record_failure(
                Failure(at=now(), kind=kind, reason=reason[:2000], run=run)  # type: ignore[arg-type]
            )
        except Exception as exc:  # noqa: BLE001 - S3 may be why the run failed
            log.error("could not record the failure of %s in its catalog: %s", cluster, exc)
    deployment = ""
    with contextlib.suppress(Exception):
        from prefect.runtime import deployment as current_deployment

        deployment = current_deployment.name or ""
    alert(
        f"{kind}.{state.name.lower()}",
        cluster,
        reason,
        params.secrets if params else None,
        run,
        flow=flow.name,
        state=state.name,
        deployment=deployment,
    )
