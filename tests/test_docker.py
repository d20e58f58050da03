"""Restore drills in real Docker containers of the image `make image` builds.

Skipped only when no Docker engine answers (and then for that reason alone, which the last
test checks); where an engine answers, a missing image is a failure, not a skip.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from flows.drill_flow import drill_restore
from flows.params import DrillParams
from flows.sandbox import LABEL, SCOPE_ENV, DockerSandbox, sweep_sandboxes
from infra.localcluster import wait_for
from tests.docker_engine import skipped_without_an_engine
from tests.pipeline import BUCKET, SANDBOX_FULL
from tests.processes import own_drill_containers


def _volumes() -> set[str]:
    listed = subprocess.run(["docker", "volume", "ls", "-q"], capture_output=True, text=True)
    return set(listed.stdout.split())


def test_a_drill_in_a_container_passes_and_leaves_nothing(
    image: str, stored1: dict[str, Any], tmp_path: Path
) -> None:
    volumes = _volumes()
    params = DrillParams(
        cluster="prod", bucket=BUCKET, workdir=str(tmp_path / "work"), driver="auto",
        key=stored1["key"],
    )  # fmt: skip
    state = drill_restore(params, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result["driver"] == "docker" and result["image"] == image  # auto chose docker here
    assert all(c["ok"] for c in result["checks"]), result["checks"]
    assert own_drill_containers() == []
    assert _volumes() - volumes == set()  # none created (others may come and go)
    assert list((tmp_path / "work").iterdir()) == []


def test_a_drill_bigger_than_the_containers_tmpfs_fails_and_leaves_nothing(
    image: str, stored1: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JACO_DRILL_TMPFS", "64k")  # as tests/test_drill_flow.py's bwrap drill
    params = DrillParams(
        cluster="prod", bucket=BUCKET, workdir=str(tmp_path / "work"), driver="docker",
        key=stored1["key"],
    )  # fmt: skip
    state = drill_restore(params, return_state=True)
    assert state.is_failed()
    found = SANDBOX_FULL.search(str(state.message))
    assert found and int(found[2]) <= 64 * 1024 < int(found[1]), state.message
    assert own_drill_containers() == []
    assert list((tmp_path / "work").iterdir()) == []


def test_the_container_reaches_nothing_but_its_own_loopback(
    image: str, stored1: dict[str, Any]
) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    host_port = f"127.0.0.1:{listener.getsockname()[1]}"
    production = stored1["cluster"].nodes["node-1"].server
    try:
        result = DockerSandbox().run_agent(["--probe", host_port, "--probe", production], 60)
    finally:
        listener.close()
    probes = {p["address"]: p["reachable"] for p in result.report["probes"]}
    assert probes[host_port] is False and probes[production] is False
    own = [a for a in probes if a not in (host_port, production)]
    assert len(own) == 1 and probes[own[0]] is True
    assert result.report["uid"] == 10001  # the image's user, not root
    assert result.report["hostname"].startswith("drill-")
    assert own_drill_containers() == []


def test_a_container_left_by_a_killed_run_is_swept_by_the_next(
    image: str, stored1: dict[str, Any], tmp_path: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    params = DrillParams(
        cluster="prod", bucket=BUCKET, workdir=str(tmp_path / "work"), driver="docker",
        key=stored1["key"], rejoin=True,
    )  # fmt: skip
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    with open(tmp_path / "drill.log", "wb") as log:
        run = subprocess.Popen(
            [sys.executable, "-m", "tests.run_flow", "drill", params.model_dump_json()],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_for(own_drill_containers, 120, "the drill container to start")
    run.kill()  # kill -9 of the flow: the container outlives the docker client
    run.wait()
    time.sleep(1)
    left = own_drill_containers()
    assert left, "the dead run's container"
    again = drill_restore(params.model_copy(update={"rejoin": False}), return_state=True)
    assert again.is_completed(), again.message
    swept = again.result()["swept"]
    assert any("drill container" in s and "run died" in s for s in swept), swept
    assert not set(left) & set(own_drill_containers())
    assert own_drill_containers() == []


def test_without_an_engine_the_docker_tests_are_skipped_for_that_reason_alone(
    image: str, tmp_path: Path
) -> None:
    skipped = skipped_without_an_engine("tests/test_docker.py", tmp_path / "bt")
    assert len(skipped) == 5 and all("no Docker engine answers" in s for s in skipped), skipped


def test_a_drill_sweeps_the_dead_runs_containers_of_its_own_scope_only(image: str) -> None:
    """Two sites' workers (or two test workers) on one Docker host: a drill removes the
    container a dead run of its own scope left, and leaves another scope's to that scope."""
    dead = subprocess.Popen(["true"])  # noqa: S607
    dead.wait()
    made = {}
    for scope in (os.environ[SCOPE_ENV], "another-site"):
        labels = {"": "left", ".host": socket.gethostname(), ".pid": str(dead.pid),
                  ".deadline": str(int(time.time()) + 3600), ".scope": scope}  # fmt: skip
        flags = [f for k, v in labels.items() for f in ("--label", f"{LABEL}{k}={v}")]
        created = subprocess.run(
            ["docker", "create", *flags, image, "true"], capture_output=True, text=True, check=True
        )
        made[scope] = created.stdout.strip()
    # each has an anonymous volume (the image's VOLUME, no drill tmpfs over it)
    volume = {scope: _volume_of(container) for scope, container in made.items()}
    try:
        swept = sweep_sandboxes()
        assert len(swept) == 1 and "run died" in swept[0], swept
        left = _listed_all()
        assert made[os.environ[SCOPE_ENV]] not in left and made["another-site"] in left
        assert volume[os.environ[SCOPE_ENV]] not in _volumes()  # swept with its container
        assert volume["another-site"] in _volumes()
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", *made.values()], capture_output=True)
    assert not set(volume.values()) & _volumes()


def _volume_of(container: str) -> str:
    shown = subprocess.run(
        ["docker", "inspect", "--format", "{{range .Mounts}}{{.Name}} {{end}}", container],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    names = shown.stdout.split()
    assert len(names) == 1, names
    return names[0]


def _listed_all() -> str:
    return subprocess.run(
        ["docker", "ps", "-a", "--no-trunc", "-q"], capture_output=True, text=True, check=True
    ).stdout
