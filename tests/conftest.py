from __future__ import annotations

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
