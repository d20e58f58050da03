"""Never quiet: stale backups and drills, crashed, timed-out and abandoned runs all alert.

Alerts are received by a real HTTP listener; runs that must crash or hang run in processes
of their own, against a real Prefect server, real jacod behind a real TCP proxy, real S3.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.catalog import Catalog
from flows.params import BackupParams
from flows.secrets import ClusterSecrets, S3Settings
from flows.storage import open_store
from flows.watchdog_flow import Objective, WatchdogParams, watchdog
from infra.localcluster import wait_for
from tests.netfaults import FaultyProxy
from tests.pipeline import BUCKET, Webhook, params


@pytest.fixture
def hook(stored1: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Webhook]:
    """A listener as the default alert target, and no memory of alerts already sent."""
    open_store(f"s3://{BUCKET}").delete("jaco/catalog/prod/watchdog.json")
    listener = Webhook()
    monkeypatch.setenv("JACO_ALERT_WEBHOOK", listener.url)
    yield listener
    listener.close()


def objective(stored: dict[str, Any], **over: Any) -> Objective:
    values = {"cluster": "prod", "bucket": BUCKET, "local_dir": str(stored["root"] / "local")}
    return Objective(**{**values, **over})


def catalog(stored: dict[str, Any]) -> Catalog:
    return Catalog(open_store(f"s3://{BUCKET}"), "jaco", "prod")


def test_stale_backups_and_missing_drills_alert_once_per_interval(
    stored1: dict[str, Any], hook: Webhook
) -> None:
    fresh = objective(stored1, max_backup_age=3600, max_drill_age=3600)
    state = watchdog(WatchdogParams(clusters=[fresh]), return_state=True)
    assert state.is_completed(), state.message
    # Backed up a moment ago, never drilled: only the drill objective is missed.
    assert hook.events("prod") == ["jaco.drill.stale"]
    assert "no restore drill of prod has ever passed" in hook.posts[0]["reason"]
    time.sleep(2)
    stale = objective(stored1, max_backup_age=1, max_drill_age=3600)
    watchdog(WatchdogParams(clusters=[stale]))
    assert hook.events("prod") == ["jaco.drill.stale", "jaco.backup.stale"]
    reason = hook.posts[-1]["reason"]
    assert "the newest verified backup of prod" in reason and "objective is 1s" in reason
    # The same conditions again, within realert_seconds: recorded as findings, not re-sent.
    findings = watchdog(WatchdogParams(clusters=[stale]))
    assert len(hook.posts) == 2 and len(findings["prod"]) == 2
    recorded = {f.reason for f in catalog(stored1).failures() if f.kind == "watchdog"}
    assert {p["reason"] for p in hook.posts} <= recorded


def test_a_verified_backup_gone_from_the_store_is_no_backup(
    stored1: dict[str, Any], hook: Webhook
) -> None:
    """The catalog records a verified backup taken a moment ago whose object is gone from S3
    (deleted by hand, or by a lifecycle rule): the watchdog alerts that there is no verified
    backup, naming the missing one, and the metric of the newest verified backup is absent,
    as for a cluster never backed up (before: both counted the record, a fresh green)."""
    from flows.metrics import CatalogCollector

    taken = catalog(stored1).backups()[0]
    gone = Catalog(open_store(f"s3://{BUCKET}"), "jaco", "vanished")
    key = taken.key.replace(".tar.gz.age", "-gone.tar.gz.age")
    gone.record_backup(taken.model_copy(update={"key": key, "cluster": "vanished"}))
    target = objective(stored1, cluster="vanished", max_backup_age=3600, max_drill_age=10**9)
    try:
        findings = watchdog(WatchdogParams(clusters=[target]))
        samples = [
            (family.name, sample.labels.get("cluster"))
            for family in CatalogCollector([target]).collect()
            for sample in family.samples
        ]
    finally:
        store = open_store(f"s3://{BUCKET}")
        for obj in list(store.list("jaco/catalog/vanished/")):
            store.delete(obj.key)
    assert sorted(hook.events("vanished")) == ["jaco.backup.stale", "jaco.drill.stale"]
    [reason] = [p["reason"] for p in hook.posts if p["event"] == "jaco.backup.stale"]
    assert "there is no verified backup of vanished at all" in reason, reason
    assert f"recorded in the catalog are gone from s3://{BUCKET}: {key}" in reason, reason
    assert reason in findings["vanished"]
    assert ("jaco_backup_last_success_timestamp_seconds", "vanished") in samples  # stored record
    assert ("jaco_backup_last_verified_timestamp_seconds", "vanished") not in samples


def test_an_unreadable_catalog_alerts_and_the_other_clusters_are_still_checked(
    stored1: dict[str, Any], hook: Webhook
) -> None:
    """One cluster's catalog cannot be read (its bucket does not exist): that is an alert of
    its own, and the watchdog goes on to the next cluster instead of failing for all."""
    broken = objective(stored1, cluster="lost", bucket="no-such-bucket")
    fresh = objective(stored1, max_backup_age=3600, max_drill_age=3600)
    findings = watchdog(WatchdogParams(clusters=[broken, fresh]))
    assert hook.events("lost") == ["jaco.catalog.unreadable"]
    assert "the catalog of lost cannot be read" in findings["lost"][0]
    assert hook.events("prod") == ["jaco.drill.stale"]  # checked after it


def test_a_cluster_whose_store_cannot_be_opened_alerts_and_the_others_are_still_checked(
    stored1: dict[str, Any], hook: Webhook
) -> None:
    """The same when the cluster's S3 client cannot even be made (a profile that does not
    exist): its own alert, not a failed run that checks no cluster at all."""
    broken = objective(stored1, cluster="lost", s3=S3Settings(profile="no-such-profile"))
    fresh = objective(stored1, max_backup_age=3600, max_drill_age=3600)
    findings = watchdog(WatchdogParams(clusters=[broken, fresh]))
    assert hook.events("lost") == ["jaco.catalog.unreadable"]
    assert "the catalog of lost cannot be read" in findings["lost"][0]
    assert "no-such-profile" in findings["lost"][0]
    assert hook.events("prod") == ["jaco.drill.stale"]


def _flow_process(kind: str, p: Any, log: Path, timeout: float | None = None) -> Any:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    args = [sys.executable, "-m", "tests.run_flow", kind, p.model_dump_json()]
    if timeout:
        args.append(str(timeout))
    out = open(log, "wb")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)


def _stalled(stored: dict[str, Any], tmp_path: Path) -> tuple[FaultyProxy, BackupParams]:
    """Backup parameters whose only server answers, but at a crawl (a saturated link)."""
    node = stored["cluster"].nodes["node-1"]
    proxy = FaultyProxy(node.api_port, delay_per_chunk=3.0)
    return proxy, params(stored["cluster"], stored["keys"], tmp_path / "local", servers=[
        proxy.address
    ], timeout_seconds=600)  # fmt: skip


def _running(log: Path) -> bool:
    return log.exists() and "Beginning flow run" in log.read_text()


def test_a_crashed_run_alerts_and_is_recorded(
    stored1: dict[str, Any], hook: Webhook, tmp_path: Path
) -> None:
    proxy, stalled = _stalled(stored1, tmp_path)
    log = tmp_path / "run.log"
    run = _flow_process("backup", stalled, log)
    try:
        wait_for(lambda: _running(log), 120, "the run to start")
        time.sleep(2)  # inside take-backup, waiting on the silent server
        run.send_signal(signal.SIGTERM)  # what a worker does to cancel, or systemd to stop
        assert run.wait(60) != 0
    finally:
        proxy.close()
    wait_for(lambda: "jaco.backup.crashed" in hook.events("prod"), 30, "the crash alert")
    sent = next(p for p in hook.posts if p["event"] == "jaco.backup.crashed")
    assert sent["cluster"] == "prod" and sent["flow_run_id"] and sent["state"] == "Crashed"
    assert "termination signal" in sent["reason"]
    crashed = [f for f in catalog(stored1).failures() if f.run and f.run.id == sent["flow_run_id"]]
    assert crashed and crashed[0].kind == "backup"


def test_a_hung_run_times_out_and_alerts(
    stored1: dict[str, Any], hook: Webhook, tmp_path: Path
) -> None:
    proxy, stalled = _stalled(stored1, tmp_path)
    log = tmp_path / "run.log"
    run = _flow_process("backup", stalled, log, timeout=8)
    try:
        assert run.wait(180) == 1, log.read_text()[-2000:]  # ended by its own timeout, below
    finally:
        proxy.close()
    assert "TimedOut" in log.read_text()
    sent = [p for p in hook.posts if p["event"] == "jaco.backup.timedout"]
    assert sent and sent[0]["cluster"] == "prod" and "exceeded timeout" in sent[0]["reason"]


def test_a_run_killed_outside_any_worker_is_ended_by_the_watchdog(
    stored1: dict[str, Any], hook: Webhook, tmp_path: Path
) -> None:
    from prefect import get_client

    proxy, stalled = _stalled(stored1, tmp_path)
    log = tmp_path / "run.log"
    run = _flow_process("backup", stalled, log)
    try:
        wait_for(lambda: _running(log), 120, "the run to start")
        run.kill()  # no hook can run: the run stays "Running" for ever
        run.wait()
    finally:
        proxy.close()
    params = WatchdogParams(
        clusters=[objective(stored1, max_backup_age=3600, max_drill_age=10**6)],
        run_timeouts={"backup-cluster": 1},
        grace_seconds=0,
    )
    name = re.search(r"Beginning flow run '([^']+)'", log.read_text())
    assert name is not None
    time.sleep(2)
    watchdog(params)
    # Runs other tests killed may be ended too: this test's own run must be among them.
    abandoned = [
        p for p in hook.posts if p["event"] == "jaco.run.abandoned" and p["flow_run"] == name[1]
    ]
    assert len(abandoned) == 1 and abandoned[0]["cluster"] == "prod"
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(abandoned[0]["flow_run_id"]).state
    assert state is not None and state.is_crashed()
    assert "marked Crashed by the watchdog" in str(state.message)
    run_id = abandoned[0]["flow_run_id"]
    recorded = [f for f in catalog(stored1).failures() if f.run and f.run.id == run_id]
    assert recorded and "process is gone" in recorded[0].reason


def test_a_clusters_own_webhook_and_no_secret_in_alerts(
    stored1: dict[str, Any], hook: Webhook, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = Webhook()
    try:
        monkeypatch.setenv("PROD_ALERTS", own.url)
        target = objective(
            stored1,
            max_backup_age=1,
            secrets=ClusterSecrets(alert_webhook="env:PROD_ALERTS"),
        )
        watchdog(WatchdogParams(clusters=[target], realert_seconds=1))
        assert own.events("prod") and not hook.posts  # the cluster's target, not the default
        token = stored1["cluster"].token
        assert all(token not in str(p) for p in own.posts)
    finally:
        own.close()
