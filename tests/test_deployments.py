"""The deployments load against a real Prefect server; an on-demand drill runs through the API."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from infra.localcluster import free_port, wait_for
from tests.pipeline import BUCKET

NAMES = [
    "backup-cluster/backup-prod",
    "drill-restore/weekly-drill-prod",
    "drill-restore/drill-prod",
    "prune-backups/retention-prod",
]


def _config(stored: dict[str, Any], path: Path) -> Path:
    cluster = stored["cluster"]
    servers = ", ".join(f'"{n.server}"' for n in cluster.nodes.values())
    cluster_id = cluster.ok("cluster", "status", "--json").json()["cluster_id"]
    path.write_text(f"""
[clusters.prod]
servers = [{servers}]
bucket = "{BUCKET}"
recipients = ["{stored["keys"]["recipient"]}"]
local_dir = "{stored["root"] / "local"}"
cluster_id = "{cluster_id}"
backup_cron = "0 * * * *"
drill_rejoin = false
""")
    return path


def test_serve_registers_deployments_and_an_on_demand_drill_completes(
    stored: dict[str, Any], tmp_path: Path
) -> None:
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    config = _config(stored, tmp_path / "clusters.toml")
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    # --replace: the site's watchdog (`watchdog/jaco-watchdog`, one name per Prefect server) may
    # be registered on a work pool by a test that ran before on this server (test_work_pool,
    # test_fleet); served, it would be refused. That refusal is test_fleet's to check.
    serving = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "deployments.serve",
            "--config",
            str(config),
            "--replace",
            "--poll-seconds",
            "1",
        ],  # fmt: skip
        env=env,
        stdout=log,
        stderr=log,
    )
    try:

        def registered() -> bool:
            if serving.poll() is not None:
                return True  # it ended: reported below, with its log
            with get_client(sync_client=True) as client:
                for name in NAMES:
                    client.read_deployment_by_name(name)
            return True

        try:
            wait_for(registered, 120, "the deployments to be registered")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_tail(log)}") from None
        assert serving.poll() is None, (serving.returncode, _tail(log))
        with get_client(sync_client=True) as client:
            backup = client.read_deployment_by_name("backup-cluster/backup-prod")
            assert [s.schedule.cron for s in backup.schedules] == ["0 * * * *"]
            assert backup.parameters["params"]["bucket"] == BUCKET
            on_demand = client.read_deployment_by_name("drill-restore/drill-prod")
            assert on_demand.schedules == []
        # "Custom run": parameters edited for this run only.
        params = {**on_demand.parameters["params"], "workdir": str(tmp_path / "drills")}
        run = run_deployment(
            "drill-restore/drill-prod", parameters={"params": params}, timeout=600, poll_interval=1
        )
        assert run.state is not None and run.state.is_completed(), (
            run.state,
            _tail(log),
        )
        assert list((tmp_path / "drills").iterdir()) == []
    finally:
        serving.terminate()
        serving.wait(30)
        log.close()


def test_serve_refuses_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[clusters.prod]\nservers = "not-a-list"\n')
    result = subprocess.run(
        [sys.executable, "-m", "deployments.serve", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "is not a valid jaco site configuration" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_the_prefect_api_down_says_so_in_one_line(
    stored: dict[str, Any], tmp_path: Path
) -> None:
    config = _config(stored, tmp_path / "clusters.toml")
    down = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    env = {**os.environ, "PREFECT_API_URL": down, "PREFECT_CLIENT_MAX_RETRIES": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "deployments.serve", "--config", str(config)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith(
        f"error: cannot read the deployments from the Prefect API at {down}: "
    ), result.stderr
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def _tail(log: Any) -> str:
    """The serve process's last lines: why it did not register, or why a run failed."""
    log.flush()
    return "\n".join(Path(log.name).read_text(errors="replace").splitlines()[-60:])


def _site(path: Path, clusters: list[str], watchdog: str | None = None) -> Path:
    """A site configuration with these clusters (never contacted: serve refuses or registers
    before any run)."""
    sections = [
        f'[clusters.{name}]\nservers = ["127.0.0.1:1"]\nbucket = "{BUCKET}"\n'
        f'recipients = ["age1unused"]\nlocal_dir = "{path.parent / "local"}"\n'
        for name in clusters
    ]
    if watchdog:
        sections.append(f'[watchdog]\nname = "{watchdog}"\n')
    path.parent.mkdir(exist_ok=True)
    path.write_text("\n".join(sections))
    return path


def _watched(name: str) -> set[str]:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        params = client.read_deployment_by_name(f"watchdog/{name}").parameters
    return {c["cluster"] for c in params["params"]["clusters"]}


def _serve_until_registered(config: Path, env: dict[str, str], watchdog: str) -> None:
    serving = subprocess.Popen(
        [sys.executable, "-m", "deployments.serve", "--config", str(config)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wanted = set(tomllib.loads(config.read_text())["clusters"])
        wait_for(lambda: serving.poll() is not None or _watched(watchdog) == wanted, 120, "serve")
        assert serving.poll() is None, serving.communicate()[1].decode()[-2000:]
    finally:
        serving.terminate()
        serving.wait(30)


def test_serve_refuses_to_take_over_another_site_s_watchdog(prefect: str, tmp_path: Path) -> None:
    """Two sites on one Prefect server under the same watchdog name: served over the first,
    the second would watch only its own clusters, and the first site's would go unwatched."""
    env = {**os.environ, "PREFECT_API_URL": prefect}
    first = _site(tmp_path / "a" / "clusters.toml", ["site-a-one", "site-a-two"], "wd-test")
    _serve_until_registered(first, env, "wd-test")
    second = _site(tmp_path / "b" / "clusters.toml", ["site-b-one"], "wd-test")
    refused = subprocess.run(
        [sys.executable, "-m", "deployments.serve", "--config", str(second)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert refused.stderr == (
        "error: watchdog/wd-test is already watching clusters this site configuration does not "
        "have (site-a-one, site-a-two: another site's? give each site its own [watchdog] name); "
        "run with --replace to take them over (their scheduled runs are deleted and made "
        "again), or stop the other way first\n"
    )
    assert _watched("wd-test") == {"site-a-one", "site-a-two"}  # nothing changed
    # The first site with a cluster added is the same site: no refusal.
    grown = _site(first, ["site-a-one", "site-a-two", "site-a-three"], "wd-test")
    _serve_until_registered(grown, env, "wd-test")
    # The second site under a watchdog name of its own: both watched.
    _serve_until_registered(_site(second, ["site-b-one"], "wd-test-b"), env, "wd-test-b")
    assert _watched("wd-test") == {"site-a-one", "site-a-two", "site-a-three"}
    assert _watched("wd-test-b") == {"site-b-one"}
