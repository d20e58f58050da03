"""Prefect-native ephemeral containers: a drill deployment on a Docker work pool, run by a real
Prefect worker as a container of the jaco image on a private Docker network.

The container reaches only what that network offers — here the Prefect API and S3, forwarded
to the network's gateway — and never the production cluster (on the host's loopback). The
drill runs inside the container itself (driver `inline`: the container is the sandbox), with
its secrets read from Prefect Secret blocks, never from the container's environment.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deployments.register import container_drill
from flows.catalog import Catalog
from flows.params import DrillParams
from flows.sandbox import IMAGE, docker_available, image_present
from flows.secrets import ClusterSecrets
from flows.storage import open_store
from infra.localcluster import BIN, wait_for
from tests.netfaults import FaultyProxy
from tests.pipeline import BUCKET


@pytest.fixture(scope="module")
def network() -> Iterator[str]:
    why = docker_available()
    if why:
        pytest.skip(why)
    if not image_present(IMAGE):
        pytest.fail(f"a Docker engine answers but the image {IMAGE} is missing: run `make image`")
    name = f"jaco-drills-{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["docker", "network", "create", "--label", "jaco.test=1", name],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield name
    finally:
        subprocess.run(["docker", "network", "rm", name], capture_output=True)


def _gateway(network: str) -> str:
    return subprocess.run(
        ["docker", "network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", network],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def _prefect(*args: str) -> str:
    done = subprocess.run([str(BIN / "prefect"), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.timeout(900)  # the drill's run (up to 600 s) and the removal after it (180 s)
def test_a_drill_runs_as_an_ephemeral_container_of_a_docker_work_pool(
    network: str, stored1: dict[str, Any], prefect: str, tmp_path: Path
) -> None:
    from prefect import get_client
    from prefect.blocks.system import Secret

    from flows.drill_flow import drill_restore

    gateway = _gateway(network)
    api_port = int(prefect.rsplit(":", 1)[1].split("/")[0])
    api = FaultyProxy(api_port, listen_host=gateway)
    s3 = FaultyProxy(stored1["s3"].s3_port, listen_host=gateway)
    worker = None
    try:
        Secret(value=stored1["cluster"].token).save("drill-pool-token", overwrite=True)
        identity = Path(stored1["keys"]["identity"]).read_text()
        Secret(value=identity).save("drill-pool-identity", overwrite=True)
        _prefect("work-pool", "create", "jaco-drill-containers", "--type", "docker", "--overwrite")
        params = DrillParams(
            cluster="prod", bucket=BUCKET, key=stored1["key"],
            secrets=ClusterSecrets(
                token="prefect:drill-pool-token", verify_identity="prefect:drill-pool-identity"
            ),
        )  # fmt: skip
        # Built the way `python -m deployments.register --drill-pool` builds it, plus where the
        # API and S3 are from inside the network (production: the worker's own API URL).
        options = container_drill(
            {
                "name": "drill-prod-container",
                "parameters": {"params": params.model_dump(mode="json")},
            },
            network,
        )
        aws = {k: v for k, v in stored1["s3"].env().items() if k != "AWS_ENDPOINT_URL_S3"}
        options["job_variables"]["env"].update(
            {**aws, "PREFECT_API_URL": f"http://{api.address}/api",
             "AWS_ENDPOINT_URL_S3": f"http://{s3.address}"}
        )  # fmt: skip
        deployment = drill_restore.deploy(
            work_pool_name="jaco-drill-containers", image=IMAGE, build=False, push=False,
            print_next_steps=False, **options,
        )  # fmt: skip
        log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
        worker = subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", "jaco-drill-containers",
             "--type", "docker"],
            env={**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "2"},
            stdout=log, stderr=log,
        )  # fmt: skip
        with get_client(sync_client=True) as client:
            run = client.create_flow_run_from_deployment(deployment)

            def final() -> Any:
                state = client.read_flow_run(run.id).state
                return state if state is not None and state.is_final() else None

            state = wait_for(final, 600, "the drill container's run")
        assert state.is_completed(), (state.message, (tmp_path / "worker.log").read_text()[-3000:])
        # The run's result stays in its container; its record is in the catalog.
        record = Catalog(open_store(f"s3://{BUCKET}"), "jaco", "prod").backup(stored1["key"])
        assert record is not None
        drill = next(d for d in record.drills if d.run and d.run.id == str(run.id))
        assert drill.passed and drill.driver == "inline" and drill.image == IMAGE

        def gone() -> bool:  # the state is final a moment before the container exits
            left = subprocess.run(
                ["docker", "ps", "-aq", "--filter", f"label=io.prefect.flow-run-id={run.id}"],
                capture_output=True, text=True,
            ).stdout.split()  # fmt: skip
            return not left

        # An eventual removal, not a speed: 86 s once on a loaded machine (docs/testing.md)
        wait_for(gone, 180, "the run's container to be removed (auto_remove)")
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()  # no worker outlives its test, even one that fails it
                worker.wait()
                raise
        api.close()
        s3.close()


def test_the_inline_driver_refuses_to_run_outside_a_drill_container(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flows.errors import PipelineError
    from flows.sandbox import open_sandbox

    monkeypatch.delenv("JACO_DRILL_IN_CONTAINER", raising=False)
    with pytest.raises(PipelineError, match="runs only inside an ephemeral drill container"):
        open_sandbox("inline")
