"""A site with several real clusters, each with its own token, keys and catalog, served by one
process: backups and drills of each use only that cluster's secrets and backups, the catalog
lists them (`jaco backup ls`), the metrics endpoint reports them, and nothing ever falls back
to another cluster."""

from __future__ import annotations

import contextvars
import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deployments.build import deployment_names, held_otherwise, site_deployments
from flows.catalog import BackupRecord, Catalog
from flows.config import load_config
from flows.drill_flow import drill_restore
from flows.params import DrillParams
from flows.secrets import ClusterSecrets
from flows.storage import open_store
from infra.localcluster import JACO, Cluster, cluster_of, free_port, run, wait_for
from infra.seaweed import running_seaweed
from tests.pipeline import BUCKET, age_keygen

NAMES = ("alpha", "beta")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, prefect: str) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("site")
    with (
        cluster_of(root / "alpha", 1) as alpha,
        cluster_of(root / "beta", 1) as beta,
        running_seaweed(root / "s3") as s3,
        pytest.MonkeyPatch.context() as mp,
    ):
        s3.create_bucket(BUCKET)
        for name, value in s3.env().items():
            mp.setenv(name, value)
        for var in ("JACO_TOKEN", "JACO_AGE_IDENTITY_FILE"):
            mp.delenv(var, raising=False)  # only the per-cluster references may be used
        clusters = {"alpha": alpha, "beta": beta}
        secrets: dict[str, Any] = {}
        for name, cluster in clusters.items():
            cluster.ok("deploy", f"{name}-web", "--image", "nginx:1", "--replicas", "2")
            token = root / f"{name}.token"
            token.write_text(cluster.token + "\n")
            token.chmod(0o600)
            secrets[f"{name}_token"] = token
            secrets[f"{name}_identity"] = root / f"{name}.key"
            secrets[f"{name}_recipient"] = age_keygen(root / f"{name}.key")
        config = root / "clusters.toml"
        config.write_text(_config(root, clusters, secrets))
        yield {"root": root, "clusters": clusters, "s3": s3, "config": config}


def _config(root: Path, clusters: dict[str, Cluster], secrets: dict[str, Any]) -> str:
    sections = []
    for name, cluster in clusters.items():
        servers = ", ".join(f'"{n.server}"' for n in cluster.nodes.values())
        sections.append(f"""
[clusters.{name}]
servers = [{servers}]
bucket = "{BUCKET}"
recipients = ["{secrets[f"{name}_recipient"]}"]
local_dir = "{root / "local"}"
drill_rejoin = false
drill_workdir = "{root / "drills"}"
max_backup_age = "1h"
[clusters.{name}.secrets]
token = "file:{secrets[f"{name}_token"]}"
verify_identity = "file:{secrets[f"{name}_identity"]}"
""")
    return "".join(sections)


def _scrape(port: int) -> dict[tuple[str, str], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:  # noqa: S310
        text = reply.read().decode()
    return {
        (sample.name, sample.labels.get("cluster", "")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _catalog(name: str) -> Catalog:
    return Catalog(open_store(f"s3://{BUCKET}"), "jaco", name)


def test_one_process_serves_every_cluster_with_its_own_secrets(
    site: dict[str, Any], tmp_path: Path
) -> None:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    port = free_port()
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    # The same site registered on a work pool first (as a fleet of workers runs it): serving
    # it is refused, then --replace takes the deployments over. (A served deployment made over
    # a registered one kept its code storage: every run crashed loading the flow.)
    _pool("fleet-pool")
    register = [sys.executable, "-m", "deployments.register", "--config", str(site["config"]),
                "--pool", "fleet-pool"]  # fmt: skip
    # --replace for this first registration only: another test's serve process (gone; the
    # names stay) may have served the site's watchdog on this server (test_deployments).
    registered = subprocess.run(
        [*register, "--replace"], env=env, capture_output=True, text=True, timeout=300
    )
    assert registered.returncode == 0, registered.stderr[-2000:]
    serve = [sys.executable, "-m", "deployments.serve", "--config", str(site["config"]),
             "--metrics-port", str(port)]  # fmt: skip
    refused = _refused(serve, env)
    assert refused.stderr.startswith(
        "error: backup-cluster/backup-alpha is already registered on work pool fleet-pool (and "
    ), refused.stderr
    assert "--replace" in refused.stderr and len(refused.stderr.splitlines()) == 1
    assert _deployment("backup-cluster/backup-alpha").work_pool_name == "fleet-pool"

    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    serving = subprocess.Popen(
        [*serve, "--replace", "--poll-seconds", "1"], env=env, stdout=log, stderr=log
    )
    try:
        before = wait_for(lambda: _scrape(port), 120, "the metrics endpoint")
        for name in NAMES:
            assert before[("jaco_catalog_up", name)] == 1
            # what the catalog holds, whatever ran before in this module (none, or some)
            shown = ("jaco_backup_last_verified_timestamp_seconds", name) in before
            assert shown == any(b.verified for b in _catalog(name).backups()), name
            assert before[("jaco_backup_objective_seconds", name)] == 3600

        def run_all(prefix: str) -> dict[str, Any]:
            states: dict[str, Any] = {}

            def one(name: str) -> None:
                try:
                    states[name] = run_deployment(
                        f"{prefix}-{name}", timeout=600, poll_interval=1
                    ).state
                except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                    states[name] = exc

            # Each thread in this context: Prefect's settings (its API) are context-local.
            threads = [
                threading.Thread(target=contextvars.copy_context().run, args=(one, n))
                for n in NAMES
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return states

        made = site_deployments(load_config(site["config"]))
        served = deployment_names(made)
        # serve registers them one by one: the watchdog's may come after the clusters' (CI
        # once found it missing when drill-beta was there)
        wait_for(lambda: all(_registered(name) for name in served), 120, "the deployments")
        assert all(_deployment(name).work_pool_name is None for name in served)
        assert held_otherwise(made, for_pool=False) == {}  # a restarted serve takes its own
        backups = run_all("backup-cluster/backup")
        for name in NAMES:
            assert backups[name].is_completed(), (name, backups[name].message, _tail(log))
        drills = run_all("drill-restore/drill")
        for name in NAMES:
            assert drills[name].is_completed(), (name, drills[name].message, _tail(log))
        ids = {}
        for name, cluster in site["clusters"].items():
            ids[name] = cluster.ok("cluster", "status", "--json").json()["cluster_id"]
            view = _catalog(name).view()
            assert view.identity is not None and view.identity.cluster_id == ids[name]
            assert view.backups and {b.cluster_id for b in view.backups} == {ids[name]}
            assert view.backups[0].verified and view.backups[0].last_drill
            assert view.backups[0].last_drill.passed
        assert ids["alpha"] != ids["beta"]
        after = _scrape(port)  # the endpoint caches for 15 s at most
        wait_for(
            lambda: ("jaco_drill_last_success_timestamp_seconds", "beta") in _scrape(port),
            30,
            "the metrics to show the drills",
        )
        after = _scrape(port)
        for name in NAMES:
            assert after[("jaco_backup_last_verified_timestamp_seconds", name)] > 0
            assert after[("jaco_drill_last_rto_seconds", name)] > 0
            assert after[("jaco_backup_last_size_bytes", name)] > 0
    finally:
        serving.terminate()
        serving.wait(30)
        log.close()
    # ... and registering them on a pool while served is refused the same way
    refused = _refused(register, env)
    assert "is already served by a deployments.serve process" in refused.stderr
    assert _deployment("backup-cluster/backup-alpha").work_pool_name is None
    listed = run([JACO, "backup", "ls", "--json", "--config", str(site["config"])])
    assert listed.code == 0, listed.err
    shown = {c["cluster"]: c for c in json.loads(listed.out)}
    for name in NAMES:
        assert shown[name]["cluster_id"] == ids[name]
        backup = shown[name]["backups"][0]
        assert backup["verified"] and backup["drills"][0]["passed"]
    table = run([JACO, "backup", "ls", "--config", str(site["config"]), "--cluster", "beta"])
    assert table.code == 0 and "beta" in table.out and "alpha" not in table.out
    described = run([JACO, "backup", "describe", backup["key"], "--config", str(site["config"])])
    assert described.code == 0 and ids["beta"] in described.out and "passed" in described.out


def _tail(log: Any) -> str:
    """The serve process's last lines (its flow runs' output too): why a run crashed."""
    log.flush()
    return "\n".join(Path(log.name).read_text(errors="replace").splitlines()[-60:])


def _refused(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a command that must refuse at once (exit 2): not one that starts serving."""
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"not refused: still running after 90 s: {command[2]}") from exc
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    return done


def _pool(name: str) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
        except ObjectAlreadyExists:
            pass


def _deployment(name: str) -> Any:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def _registered(name: str) -> bool:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        client.read_deployment_by_name(name)
    return True


def _drill(site: dict[str, Any], name: str, **over: Any) -> Any:
    root = site["root"]
    values: dict[str, Any] = {
        "cluster": name,
        "bucket": BUCKET,
        "workdir": str(root / "drills"),
        "secrets": ClusterSecrets(
            token=f"file:{root / f'{name}.token'}", verify_identity=f"file:{root / f'{name}.key'}"
        ),
    }
    return drill_restore(DrillParams(**{**values, **over}), return_state=True)


def test_a_cluster_without_backups_fails_its_drill(site: dict[str, Any]) -> None:
    state = _drill(site, "gamma")
    assert state.is_failed()
    assert "no backup of gamma yet" in str(state.message)


def test_a_drill_refuses_a_backup_recorded_for_another_cluster(site: dict[str, Any]) -> None:
    """Someone with write access to the bucket records beta's backup under alpha's name
    (object metadata and catalog record say alpha; the archive inside is beta's): the drill of
    alpha refuses it, naming both clusters."""
    from flows.backup_flow import backup_cluster
    from flows.config import load_config

    config = load_config(site["config"])
    for name in NAMES:
        if not _catalog(name).backups():
            state = backup_cluster(config.clusters[name].backup_params(), return_state=True)
            assert state.is_completed(), state.message
    alpha, beta = _catalog("alpha"), _catalog("beta")
    alpha_id = alpha.identity().cluster_id  # type: ignore[union-attr]
    theirs: BackupRecord = beta.backups()[0]
    client = site["s3"].client()
    head = client.head_object(Bucket=BUCKET, Key=theirs.key)
    forged_key = f"jaco/{alpha_id}/2026/01/01/cluster-2026-01-01-999999.tar.gz.age"
    body = client.get_object(Bucket=BUCKET, Key=theirs.key)["Body"].read()
    client.put_object(
        Bucket=BUCKET,
        Key=forged_key,
        Body=body,
        Metadata={**head["Metadata"], "cluster-id": alpha_id, "cluster": "alpha"},
    )
    alpha.record_backup(theirs.model_copy(update={"key": forged_key, "cluster": "alpha",
                                                  "cluster_id": alpha_id}))  # fmt: skip
    # The drill decrypts with beta's identity (the forger re-used beta's ciphertext).
    identity = site["root"] / "beta.key"
    try:
        state = _drill(
            site,
            "alpha",
            key=forged_key,
            secrets=ClusterSecrets(
                token=f"file:{site['root'] / 'alpha.token'}", verify_identity=f"file:{identity}"
            ),
        )
    finally:
        alpha.forget([forged_key])
        client.delete_object(Bucket=BUCKET, Key=forged_key)
    assert state.is_failed()
    message = str(state.message)
    assert "cluster id" in message and theirs.cluster_id in message and alpha_id in message


def test_a_server_answering_as_another_cluster_fails_the_backup(site: dict[str, Any]) -> None:
    """alpha's configuration pointing at beta's servers and token (a copy-paste slip): the
    backup fails with both ids named, and nothing is stored under alpha."""
    from flows.backup_flow import backup_cluster
    from flows.config import load_config

    config = load_config(site["config"])
    alpha = config.clusters["alpha"]
    if _catalog("alpha").identity() is None:
        assert backup_cluster(alpha.backup_params(), return_state=True).is_completed()
    before = [b.key for b in _catalog("alpha").backups()]
    beta = config.clusters["beta"]
    # beta's servers and token; alpha's own verify identity (beta's would be refused before
    # the backup is taken: it is none of alpha's recipients)
    secrets = alpha.secrets.model_copy(update={"token": beta.secrets.token})
    wrong = alpha.backup_params().model_copy(update={"servers": beta.servers, "secrets": secrets})
    state = backup_cluster(wrong, return_state=True)
    assert state.is_failed()
    pinned = _catalog("alpha").identity()
    beta_id = site["clusters"]["beta"].ok("cluster", "status", "--json").json()["cluster_id"]
    message = str(state.message)
    assert pinned is not None and f"but alpha is pinned to cluster {pinned.cluster_id}" in message
    assert f"answered as cluster {beta_id}" in message
    assert [b.key for b in _catalog("alpha").backups()] == before
