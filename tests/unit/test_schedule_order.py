"""The order `make test` hands modules to its two workers (tests/conftest.py): the longest
first, so that no long one starts last while the other worker idles."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from tests.conftest import GROUPS, SECONDS

ROOT = Path(__file__).resolve().parents[2]


def test_every_module_timed_or_grouped_exists() -> None:
    """A module renamed or removed would drop out of the order silently."""
    assert [p for p in {*SECONDS, *GROUPS} if not (ROOT / p).is_file()] == []


def _modules_collected(seed: int) -> list[str]:
    """The test modules in the order `pytest` collects them with pytest-randomly's `seed`, one
    entry per run of adjacent tests of a module."""
    listed = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "randomly",
         "-p", "no:cacheprovider", f"--randomly-seed={seed}", "tests"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr[-2000:]
    modules: list[str] = []
    for line in listed.stdout.splitlines():
        path = line.split("::", 1)[0]
        if "::" in line and (not modules or modules[-1] != path):
            modules.append(path)
    return modules


def test_the_longest_modules_are_collected_first_and_the_rest_keep_their_random_order() -> None:
    modules = _modules_collected(7)
    assert len(modules) == len(set(modules)), "a module's tests were split apart"
    timed = [m for m in modules if m in SECONDS]
    assert modules[: len(timed)] == timed, "a module SECONDS names came after one it does not"
    docker = [modules.index(m) for m in GROUPS]
    assert max(docker) - min(docker) == len(GROUPS) - 1, "the Docker group's modules apart"
    assert modules[0] in GROUPS, "the Docker group, the longest scope, first"
    untimed = [m for m in _modules_collected(8) if m not in SECONDS]
    assert untimed != [m for m in modules if m not in SECONDS], "the rest not in random order"


class _Worker:
    """What xdist's scheduler asks of a worker: which tests to run next."""

    shutting_down = False

    def __init__(self, name: str) -> None:
        self.gateway = SimpleNamespace(id=name)
        self.sent: list[int] = []

    def send_runtest_some(self, indexes: list[int]) -> None:
        self.sent += indexes

    def shutdown(self) -> None:
        self.shutting_down = True


def test_the_scheduler_hands_out_scopes_in_collected_order_not_by_number_of_tests() -> None:
    """xdist re-sorts scopes by their number of tests unless told not to, which would hand a
    module of two long tests out after every module of many short ones."""
    from tests.conftest import pytest_xdist_make_scheduler

    option = SimpleNamespace(loadscopereorder=True)
    config = SimpleNamespace(option=option, getvalue=lambda name: ["2*popen"])
    scheduler = pytest_xdist_make_scheduler(config, None)  # type: ignore[arg-type]
    collection = [
        "tests/test_demo.py::a", "tests/test_demo.py::b",
        *[f"tests/test_many.py::t{i}" for i in range(20)],
        *[f"tests/test_more.py::t{i}" for i in range(10)],
    ]  # fmt: skip
    workers = [_Worker("gw0"), _Worker("gw1")]
    for worker in workers:
        scheduler.add_node(worker)
        scheduler.add_node_collection(worker, collection)
    scheduler.schedule()
    assert workers[0].sent[:2] == [0, 1], "the first scope collected went first"
