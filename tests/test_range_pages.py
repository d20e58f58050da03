"""Whole-prefix reads against a real etcd: a listing longer than one etcd answer can hold.

jacod read each listing (deployments, routes, tokens, nodes, liveness) in one etcd response,
which its client accepts up to 64 MiB: the issue's realistic state (10⁶ deployments of about
250 bytes) would not fit, and the audit log's 6·10⁵ events did not (stop 25). Here the
client's bound is made small so that a few MiB show the same thing."""

from __future__ import annotations

import asyncio
import random

import pytest

from infra.localcluster import Cluster
from jaco.client.connection import open_client
from jaco.model.engine import View
from jaco.model.etcd import PAGE_BYTES, Etcd, op_put
from jaco.model.etcd_errors import TooLarge
from jaco.model.keys import ROOT
from jaco.model.names import PAGE_DEPLOYMENTS
from jaco.node.config import DataDir
from jaco.v1 import jaco_pb2 as pb
from tests.conftest import fill

BOUND = 1024 * 1024  # the answer size the client accepts, for this test
PREFIX = ROOT + "bulk/"


def _etcd(cluster: Cluster) -> Etcd:
    node = cluster.nodes["node-1"]
    return Etcd(DataDir(node.data_dir).etcd_socket, max_message=BOUND)


def test_a_listing_larger_than_one_answer_is_read_whole_at_one_revision(single: Cluster) -> None:
    rng = random.Random(3)
    written = {f"{PREFIX}{i:03d}": rng.randbytes(60_000) for i in range(50)}  # 3 MB

    async def run() -> tuple[list[tuple[str, bytes]], list[str], list[str]]:
        etcd = _etcd(single)
        try:
            keys = sorted(written)
            for i in range(0, 50, 10):
                await etcd.txn([], [op_put(k, written[k]) for k in keys[i : i + 10]])
            _, revision = await etcd.get(PREFIX)
            # written after the revision read: not in a listing at that revision
            await etcd.txn([], [op_put(f"{PREFIX}999-later", b"{}")])
            listed = [(kv.key, kv.value) for kv in await etcd.get_prefix(PREFIX)]
            at = [kv.key for kv in await etcd.get_prefix(PREFIX, revision=revision)]
            await etcd.txn([], [op_put(f"{ROOT}deployments/a", b'{"name": "a"}')])
            view = [d["name"] for d in await View(etcd, 0).list(f"{ROOT}deployments/")]
            return listed, at, view
        finally:
            await etcd.close()

    listed, at, view = asyncio.run(run())
    assert listed[:50] == sorted(written.items())
    assert [k for k, _ in listed[50:]] == [f"{PREFIX}999-later"]
    assert at == sorted(written)
    assert view == ["a"]


def test_a_record_larger_than_an_answer_is_refused_in_one_line(single: Cluster) -> None:
    async def run() -> None:
        etcd = _etcd(single)
        try:
            await etcd.txn([], [op_put(f"{PREFIX}huge", random.randbytes(BOUND + 1000))])
            await etcd.get_prefix(PREFIX)
        finally:
            await etcd.close()

    with pytest.raises(TooLarge) as refused:
        asyncio.run(run())
    message = str(refused.value)
    assert PREFIX in message and "\n" not in message and "MiB" in message


def test_status_lists_more_deployments_than_one_answer_holds(single: Cluster) -> None:
    """`jaco status` once sent every deployment in one answer, and gRPC sends at most 64 MiB:
    about 10⁶ deployments would not fit. Here 52 deployments of 1.3 MB each (69 MB) are
    listed, a few MiB a page."""
    fill(single, 52, blob_bytes=1_000_000)
    listed = single.ok("status", "--json").json()["deployments"]
    assert [d["name"] for d in listed] == sorted(f"bulk{i}" for i in range(52))
    assert all(len(d["env"]["BLOB"]) == 1_333_336 for d in listed)
    with open_client(single.nodes["node-1"].server, single.token) as client:
        page = client.call("Status", pb.StatusRequest(limit=PAGE_DEPLOYMENTS))
    assert page.next_after and page.ByteSize() <= PAGE_BYTES + 1_400_000
