from __future__ import annotations

import os

# Retries in the flow tests: the same policy, shorter waits (read when flows.tasks is imported).
os.environ.setdefault("JACO_RETRY_BACKOFF", "1")

from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.localcluster import Cluster, cluster_of


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


@pytest.fixture(scope="session")
def prefect() -> Iterator[None]:
    """A real Prefect server (temporary database) for the flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
