"""Etcd.iter_prefix pages through a range without asking etcd to sort it.

etcd 3.4 answers a range that names any sort order by reading the whole rest of the range,
sorting it and only then applying the limit: each page of the state digest (the drill's
"state digest" check, point-in-time replay) cost as much as every page after it, quadratic in
the number of records (11 s for 10⁵ records; docs/benchmarks.md, round three). etcd returns a
range in key order without being asked; that the pages come out in key order is proved
against a real etcd by tests/test_snapshot_file.py (the live store's digest equals the
snapshot's, over several pages). Here: what is asked, page after page."""

from __future__ import annotations

import asyncio
from typing import Any

from aetcd import rpc

from jaco.model.etcd import Etcd


class _Recording(Etcd):
    """An Etcd whose calls are answered from a list of keys, recording each request."""

    def __init__(self, keys: list[bytes]) -> None:  # no channel: nothing is sent
        self.keys = keys
        self.requests: list[Any] = []
        self._kv = type("KV", (), {"Range": None})()  # named by iter_prefix, never called

    async def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        self.requests.append(request)
        chosen = [k for k in self.keys if request.key <= k < request.range_end]
        page = chosen[: request.limit]
        return rpc.RangeResponse(
            kvs=[rpc.KeyValue(key=k, value=b"v", mod_revision=1) for k in page],
            more=len(chosen) > len(page),
        )


def test_pages_ask_for_no_sort_and_resume_after_the_last_key() -> None:
    keys = sorted(f"/jaco/v1/t/{i:05d}".encode() for i in range(2500))
    etcd = _Recording(keys)

    async def read() -> list[str]:
        return [kv.key async for kv in etcd.iter_prefix("/jaco/v1/", 7, page=1000)]

    assert asyncio.run(read()) == [k.decode() for k in keys]
    assert len(etcd.requests) == 3
    for request in etcd.requests:
        assert request.sort_order == rpc.RangeRequest.NONE
        assert (request.limit, request.revision) == (1000, 7)
    assert [r.key for r in etcd.requests[1:]] == [keys[999] + b"\0", keys[1999] + b"\0"]
