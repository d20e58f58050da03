from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.sandbox import IMAGE, SCOPE_ENV, docker_available, image_present
from infra import prefect_server
from infra.localcluster import Cluster, cluster_of
from infra.ports import REGISTRY_ENV
from infra.seaweed import running_seaweed
from jaco.client.connection import open_client
from jaco.v1 import jaco_pb2 as pb
from tests.pipeline import BUCKET, age_keygen, params

# Prefect's servers in the tests (and every process the tests start) send no usage reports.
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
# A run started in the background of a non-interactive shell (`make test &`, nohup) inherits
# SIGINT ignored, and so would every process the tests start: the Ctrl-C tests would reach no
# one. A handler (unlike "ignored") is not inherited: the children start with the default.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# `make test` runs the suite on two workers (pytest-xdist, docs/testing.md). A module runs whole
# on one worker (its module-scoped cluster is started once); these modules share one group, run
# one after another: each counts Docker's volumes machine-wide, and the Docker work pool's
# containers make (and remove) anonymous ones.
GROUPS = {
    "tests/test_docker.py": "docker",
    "tests/test_docker_pool.py": "docker",
    "tests/test_multihost.py": "docker",
}

# Seconds the longest modules take in a full run (rounded: only their order matters; see
# docs/testing.md, "Two workers"). Their scopes are handed out longest first, the rest after
# them in random order, so that no long scope starts last while the other worker idles.
SECONDS = {
    "tests/test_pitr.py": 170,
    "tests/test_multihost.py": 140,
    "tests/test_join.py": 140,
    "tests/test_pipeline.py": 130,
    "tests/test_crash_recovery.py": 100,
    "tests/test_cluster.py": 90,
    "tests/test_demo.py": 90,
    "tests/test_drill_flow.py": 80,
    "tests/test_drill.py": 70,
    "tests/test_docker_pool.py": 65,
    "tests/test_fleet.py": 60,
    "tests/test_docker.py": 60,
    "tests/test_drill_checks.py": 55,
    "tests/test_work_pool.py": 55,
    "tests/test_cli.py": 50,
    "tests/test_stream_start.py": 50,
    "tests/test_deployments.py": 45,
    "tests/test_restore_seeded.py": 45,
    "tests/test_watchdog.py": 45,
    "tests/test_snapshot_file.py": 40,
    "tests/test_restore_bad_input.py": 40,
}


def _scope(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return GROUPS.get(path, path)


def _scope_seconds() -> dict[str, int]:
    seconds: dict[str, int] = {}
    for path, took in SECONDS.items():
        seconds[_scope(path)] = seconds.get(_scope(path), 0) + took
    return seconds


def pytest_configure(config: pytest.Config) -> None:
    """Each pytest process (each worker) a drill scope of its own: its drills sweep, and its
    tests count, only their own drill containers (flows/sandbox.py, tests/processes.py). One
    port registry for the whole run, workers and every process they start included
    (infra/ports.py): made by the controlling process, inherited through the environment."""
    os.environ[SCOPE_ENV] = f"pytest-{socket.gethostname()}-{os.getpid()}"
    if hasattr(config, "workerinput") or os.environ.get(REGISTRY_ENV):
        return
    registry = tempfile.mkdtemp(prefix="jaco-ports-")
    os.environ[REGISTRY_ENV] = registry
    config.add_cleanup(lambda: shutil.rmtree(registry, ignore_errors=True))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Whole modules (and GROUPS) to a worker, in the order collected (longest first, see
    SECONDS), not re-sorted by number of tests. xdist's own `loadgroup` would do it by marker,
    but it renames items through an attribute pytest 9 no longer reads (every test then goes
    its own way, module fixtures started on both workers)."""
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _scope(nodeid)

    config.option.loadscopereorder = False
    return ByModule(config, log)


@pytest.hookimpl(trylast=True)  # after pytest-randomly has shuffled the order
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest scopes first (SECONDS), each scope's modules together; then a test marked
    last_in_module moves behind the last test of its module. Any other order stays as it was
    (random or not): within a module, and among the modules SECONDS does not name."""
    seconds = _scope_seconds()

    def longest_first(item: pytest.Item) -> tuple[int, str]:
        scope = _scope(item.nodeid)
        return (-seconds[scope], scope) if scope in seconds else (0, "")

    items.sort(key=longest_first)  # stable: the rest keep their order
    for item in [i for i in items if i.get_closest_marker("last_in_module")]:
        items.remove(item)
        same = [n for n, other in enumerate(items) if other.module is item.module]
        items.insert(same[-1] + 1 if same else len(items), item)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """The random order's seed at the end of every run, -q included (pytest-randomly prints
    it only in the header, which -q leaves out): a failure's order can be repeated."""
    seed = getattr(config.option, "randomly_seed", None)
    if config.pluginmanager.has_plugin("randomly") and isinstance(seed, int):
        terminalreporter.write_line(
            f"random order: repeat it with -p randomly --randomly-seed={seed}"
        )


@pytest.fixture(autouse=True, scope="session")
def shorter_retry_waits() -> Iterator[None]:
    """Retries in the flow tests: the same policy, shorter waits (read when a flow runs)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JACO_RETRY_BACKOFF", "1")
        yield


@pytest.fixture(scope="module")
def image() -> str:
    """The jaco image `make image` builds. The docker tests skip only when no Docker engine
    answers (saying so); where one answers, a missing image is a failure, not a skip."""
    why = docker_available()
    if why:
        pytest.skip(why)
    if not image_present(IMAGE):
        pytest.fail(f"a Docker engine answers but the image {IMAGE} is missing: run `make image`")
    return IMAGE


@pytest.fixture(scope="module")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 3-node cluster (init + two joins) shared by one test module."""
    with cluster_of(tmp_path_factory.mktemp("cluster3"), 3) as cluster:
        yield cluster


@pytest.fixture
def single(tmp_path: Path) -> Iterator[Cluster]:
    """A fresh 1-node cluster for one test."""
    with cluster_of(tmp_path, 1) as cluster:
        yield cluster


def fill(cluster: Cluster, deployments: int, blob_bytes: int = 600_000) -> None:
    """Incompressible state: deployments `bulk0`… each holding a random env blob."""
    with open_client(cluster.nodes["node-1"].server, cluster.token) as client:
        for i in range(deployments):
            blob = base64.b64encode(os.urandom(blob_bytes)).decode()
            client.call(
                "Deploy", pb.DeployRequest(name=f"bulk{i}", image="x:1", env={"BLOB": blob})
            )


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One node holding ~2 MiB of incompressible state, so a backup takes several chunks."""
    with cluster_of(tmp_path_factory.mktemp("big"), 1) as cluster:
        fill(cluster, 3)
        yield cluster


@pytest.fixture
def silent_server() -> Iterator[socket.socket]:
    """A listening TCP socket standing in for the server: a refusal made before contacting
    the server leaves it with no connection to accept (tests.refusal.untouched)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    yield listener
    listener.close()


@pytest.fixture(scope="session")
def prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prefect server, started as production starts one (`prefect server start`, its
    background services included: the lease sweeper above all), with a database of its own.
    Its URL is the API of this process and of every process the tests start. Its scheduler
    is off: the tests trigger the runs of the deployments they register."""
    server = prefect_server.start(tmp_path_factory.mktemp("prefect-server"), scheduler=False)
    try:
        with prefect_server.using(server):
            yield server.url
    finally:
        server.stop()


@contextlib.contextmanager
def _stored(root: Path, cluster: Cluster) -> Iterator[dict[str, Any]]:
    keys = {"identity": root / "ops.key", "recipient": age_keygen(root / "ops.key")}
    with running_seaweed(root / "s3") as s3, pytest.MonkeyPatch.context() as mp:
        s3.create_bucket(BUCKET)
        for name, value in s3.env().items():
            mp.setenv(name, value)
        mp.setenv("JACO_TOKEN", cluster.token)
        mp.setenv("JACO_AGE_IDENTITY_FILE", str(keys["identity"]))
        cluster.ok("deploy", "web", "--image", "nginx:1", "--replicas", "3")
        cluster.ok("route", "add", "www", "--host", "www.example.com", "--deployment", "web")
        from flows.backup_flow import backup_cluster

        state = backup_cluster(params(cluster, keys, root / "local"), return_state=True)
        assert state.is_completed(), state.message
        yield {
            "s3": s3,
            "keys": keys,
            "cluster": cluster,
            "key": state.result()["key"],
            "root": root,
        }


@pytest.fixture(scope="module")
def stored(
    tmp_path_factory: pytest.TempPathFactory, cluster3: Cluster, prefect: str
) -> Iterator[dict[str, Any]]:
    """A 3-node cluster with state, SeaweedFS and one backup of it taken through the
    pipeline; the pipeline's environment (token, S3 credentials, age identity) is set
    meanwhile."""
    with _stored(tmp_path_factory.mktemp("drill"), cluster3) as found:
        yield found


@pytest.fixture(scope="module")
def stored1(tmp_path_factory: pytest.TempPathFactory, prefect: str) -> Iterator[dict[str, Any]]:
    """The same as `stored` with a 1-node cluster (cheaper, for the pipeline's own tests)."""
    root = tmp_path_factory.mktemp("stored1")
    with cluster_of(root / "cluster", 1) as cluster, _stored(root, cluster) as found:
        yield found
