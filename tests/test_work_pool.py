"""A fleet: a real Prefect server, one process work pool, two real workers, three real clusters.

Backups of different clusters run at the same time on both workers, each with its own token
(read by the worker from the reference in the site configuration), and each lands in its own
cluster's catalog. This is how jaco grows past one machine: more workers on the same pool.
"""

from __future__ import annotations

import os
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from flows.catalog import Catalog
from flows.storage import open_store
from infra.localcluster import cluster_of, wait_for
from infra.seaweed import running_seaweed
from tests.netfaults import FaultyProxy
from tests.pipeline import BUCKET, age_keygen

CLUSTERS = ("alpha", "beta", "gamma")
BIN = Path(sys.executable).parent


def _prefect(url: str, *args: str) -> str:
    env = {**os.environ, "PREFECT_API_URL": url}
    done = subprocess.run(
        [str(BIN / "prefect"), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_two_workers_back_up_three_clusters_at_once(
    prefect: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(The session's Prefect server is a real one, `prefect server start`: not ephemeral.)"""
    from prefect import get_client
    from prefect.client.schemas.objects import WorkerStatus

    server = prefect
    with ExitStack() as stack:
        clusters = {n: stack.enter_context(cluster_of(tmp_path / n, 1)) for n in CLUSTERS}
        s3 = stack.enter_context(running_seaweed(tmp_path / "s3"))
        s3.create_bucket(BUCKET)
        for var, value in s3.env().items():
            monkeypatch.setenv(var, value)
        config = tmp_path / "clusters.toml"
        sections = []
        for name, cluster in clusters.items():
            (tmp_path / f"{name}.token").write_text(cluster.token)
            recipient = age_keygen(tmp_path / f"{name}.key")
            sections.append(
                f'[clusters.{name}]\nservers = ["{cluster.nodes["node-1"].server}"]\n'
                f'bucket = "{BUCKET}"\nrecipients = ["{recipient}"]\n'
                f'local_dir = "{tmp_path / "local"}"\n'
                f"[clusters.{name}.secrets]\n"
                f'token = "file:{tmp_path / f"{name}.token"}"\n'
                f'verify_identity = "file:{tmp_path / f"{name}.key"}"\n'
            )
        config.write_text("\n".join(sections))
        _prefect(server, "work-pool", "create", "jaco-fleet", "--type", "process")
        # S3 behind a slow link: each run lasts long enough for the runs to overlap.
        slow = FaultyProxy(s3.s3_port, delay_per_chunk=0.3)
        stack.callback(slow.close)
        env = {
            **os.environ,
            **s3.env(),
            "AWS_ENDPOINT_URL_S3": f"http://{slow.address}",
            "PREFECT_API_URL": server,
            "PREFECT_WORKER_QUERY_SECONDS": "2",
        }
        for var in ("JACO_TOKEN", "JACO_AGE_IDENTITY_FILE"):
            env.pop(var, None)  # only the per-cluster references
        # --replace: test_fleet may have served alpha and beta on this server before (its
        # serve process is gone; the names stay). That refusal is test_fleet's to check.
        registered = subprocess.run(
            [sys.executable, "-m", "deployments.register", "--config", str(config),
             "--pool", "jaco-fleet", "--replace"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert registered.returncode == 0, registered.stderr[-2000:]
        workers = []
        for name in ("worker-1", "worker-2"):
            log = stack.enter_context(open(tmp_path / f"{name}.log", "wb"))
            worker = subprocess.Popen(
                [str(BIN / "prefect"), "worker", "start", "--pool", "jaco-fleet",
                 "--type", "process", "--name", name, "--limit", "2"],
                env=env, stdout=log, stderr=log,
            )  # fmt: skip
            workers.append(worker)
            stack.callback(_stop, worker)
        with get_client(sync_client=True) as client:
            # Both workers polling before any run exists: a worker still importing Prefect
            # when the runs appear leaves all three to the other (seen in a fresh-clone run).
            def online() -> set[str]:
                found = client.read_workers_for_work_pool("jaco-fleet")
                return {w.name for w in found if w.status == WorkerStatus.ONLINE}

            wait_for(lambda: online() == {"worker-1", "worker-2"}, 120, "both workers online")
            runs = {}
            for name in CLUSTERS:
                deployment = client.read_deployment_by_name(f"backup-cluster/backup-{name}")
                runs[name] = client.create_flow_run_from_deployment(deployment.id).id

            def finished() -> bool:
                states = [client.read_flow_run(r).state for r in runs.values()]
                return all(s is not None and s.is_final() for s in states)

            wait_for(finished, 480, "the three backups")
            done = {n: client.read_flow_run(r) for n, r in runs.items()}
        for name, run in done.items():
            assert run.state is not None and run.state.is_completed(), (name, run.state)
        # At the same time: some run started before another had ended.
        spans = sorted((r.start_time, r.end_time) for r in done.values())
        assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))
        # On both workers (a run's own log lines go to the worker that executed it).
        logs = {w: (tmp_path / f"{w}.log").read_text() for w in ("worker-1", "worker-2")}
        took = {
            w: [n for n, r in done.items() if f"Beginning flow run '{r.name}'" in text]
            for w, text in logs.items()
        }
        tails = {w: text[-3000:] for w, text in logs.items()}  # why, if it ever fails
        assert all(took.values()) and sorted(sum(took.values(), [])) == sorted(CLUSTERS), (
            took,
            tails,
        )
        # Each cluster in its own catalog, under its own id.
        store = open_store(f"s3://{BUCKET}")
        for name, cluster in clusters.items():
            cluster_id = cluster.ok("cluster", "status", "--json").json()["cluster_id"]
            backups = Catalog(store, "jaco", name).backups()
            assert [b.cluster_id for b in backups] == [cluster_id]
            assert backups[0].verified is not None


def _stop(worker: Any) -> None:
    worker.terminate()
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
