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
import random
from typing import Any

import pytest
from aetcd import rpc

from jaco.model.etcd import MAX_MESSAGE, MAX_PAGE, Etcd
from jaco.model.etcd_errors import TooLarge


class _Recording(Etcd):
    """An Etcd whose calls are answered from a list of keys, recording each request and how
    many keys etcd 3.4 would have counted for it (every key of the range it names)."""

    def __init__(self, keys: list[bytes]) -> None:  # no channel: nothing is sent
        self.keys = keys
        self.max_message = MAX_MESSAGE
        self.requests: list[Any] = []
        self.counted = 0
        self._kv = type("KV", (), {"Range": None})()  # named by iter_prefix, never called

    def value(self, key: bytes) -> bytes:
        return b"v"

    async def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        self.requests.append(request)
        chosen = [k for k in self.keys if request.key <= k < request.range_end]
        self.counted += len(chosen)
        page = chosen[: request.limit or None]
        return rpc.RangeResponse(
            kvs=[rpc.KeyValue(key=k, value=self.value(k), mod_revision=1) for k in page],
            more=len(chosen) > len(page),
            count=len(chosen),
        )


def test_pages_ask_for_no_sort_and_resume_after_the_last_key() -> None:
    keys = sorted(f"/jaco/v1/t/{i:05d}".encode() for i in range(2500))
    etcd = _Recording(keys)

    async def read() -> list[str]:
        return [kv.key async for kv in etcd.iter_prefix("/jaco/v1/", 7, page=1000)]

    assert asyncio.run(read()) == [k.decode() for k in keys]
    assert len(etcd.requests) == 2  # the second page sized to the first one's bytes
    for request in etcd.requests:
        assert request.sort_order == rpc.RangeRequest.NONE
        assert request.revision == 7
    assert etcd.requests[0].limit == 1000
    assert etcd.requests[1].key == keys[999] + b"\0"


class _Bounded(_Recording):
    """Answers as etcd does, refusing (as the gRPC client does) any answer larger than
    `max_bytes`, and records the size of every answer given."""

    def __init__(self, records: dict[bytes, bytes], max_bytes: int) -> None:
        super().__init__(sorted(records))
        self.records, self.max_bytes = records, max_bytes
        self.max_message = max_bytes
        self.answered: list[int] = []

    def value(self, key: bytes) -> bytes:
        return self.records[key]

    async def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        resp = await super()._call(method, request, timeout)
        resp.header.revision = 9
        if resp.ByteSize() > self.max_bytes:
            raise TooLarge(
                f"Received message larger than max ({resp.ByteSize()} vs. {self.max_bytes})"
            )
        self.answered.append(resp.ByteSize())
        return resp


def _read(etcd: Etcd, prefix: str = "/jaco/v1/", revision: int = 7) -> list[str]:
    async def read() -> list[str]:
        return [kv.key async for kv in etcd.iter_prefix(prefix, revision, page=1000)]

    return asyncio.run(read())


def test_pages_grow_to_a_byte_budget_so_a_long_range_takes_few_reads() -> None:
    """etcd 3.4 counts the whole rest of the range for every page: with 1000-record pages,
    10⁶ records took 100 s to read (the drill's state digest check at 10⁶ keys ran out of
    time). Small records are read in pages sized to PAGE_BYTES instead."""
    records = {f"/jaco/v1/t/{i:05d}".encode(): b"x" * 200 for i in range(20_000)}
    etcd = _Bounded(records, MAX_MESSAGE)
    assert _read(etcd) == [k.decode() for k in sorted(records)]
    # was 20; 9 now: a page's part of the range stops at the next leading digit
    assert len(etcd.requests) <= 10, [r.limit for r in etcd.requests]
    assert etcd.requests[0].limit == 1000
    assert all(r.limit <= MAX_PAGE for r in etcd.requests)
    assert all(r.revision == 7 for r in etcd.requests)
    # etcd builds a whole answer before the client can refuse it: a page grows by 4x at most
    limits = [r.limit for r in etcd.requests]
    assert all(b <= 4 * a for a, b in zip(limits, limits[1:], strict=False)), limits


def test_pages_shrink_when_an_answer_would_be_too_large() -> None:
    """Large records: a page asked for by count would pass the size the client accepts; it
    is asked again smaller, and nothing is skipped or read twice."""
    records = {f"/jaco/v1/b/{i:04d}".encode(): bytes([i % 251]) * 100_000 for i in range(300)}
    etcd = _Bounded(records, 2 * 1024 * 1024)
    assert _read(etcd) == [k.decode() for k in sorted(records)]
    assert max(etcd.answered) <= 2 * 1024 * 1024


def test_a_latest_read_holds_the_revision_of_its_first_page() -> None:
    """Asked for the latest state (revision 0), every later page reads the revision the
    first one was read at: a listing is one consistent state, whatever is written meanwhile."""
    records = {f"/jaco/v1/t/{i:05d}".encode(): b"x" * 200 for i in range(3000)}
    etcd = _Bounded(records, 300_000)  # the first page fits, the rest takes several
    assert _read(etcd, revision=0) == [k.decode() for k in sorted(records)]
    assert len(etcd.requests) > 2
    assert [r.revision for r in etcd.requests] == [0] + [9] * (len(etcd.requests) - 1)


def test_a_record_larger_than_an_answer_can_be_is_refused_in_one_line() -> None:
    records = {b"/jaco/v1/b/0": b"x" * 10, b"/jaco/v1/b/1": b"y" * 300_000}
    etcd = _Bounded(records, 100_000)
    with pytest.raises(TooLarge) as refused:
        _read(etcd)
    assert str(refused.value) == (
        "the record after '/jaco/v1/b/0' is larger than the 0.0954 MiB this node's etcd "
        "client accepts"
    )
    assert len(etcd.requests) < 30  # it gives up, it does not ask forever


def test_a_read_of_at_most_n_records_never_asks_for_more() -> None:
    """A page of the deployment listing needs 5001 records at most (one more tells whether
    another page follows): the reads that make it ask for no record past that, a fifth of it
    first, then the rest sized from the first records' bytes."""
    records = {f"/jaco/v1/deployments/d{i:05d}".encode(): b"x" * 200 for i in range(20_000)}
    etcd = _Bounded(records, MAX_MESSAGE)

    async def read() -> list[str]:
        listed = etcd.iter_range("/jaco/v1/deployments/", b"/jaco/v1/deployments0", 7, 1001, 5001)
        return [kv.key async for kv in listed]

    assert asyncio.run(read()) == [k.decode() for k in sorted(records)[:5001]]
    assert [r.limit for r in etcd.requests] == [1001, 4000]


def _store_keys() -> list[bytes]:
    """Keys shaped like a jaco store's: an audit log of zero-padded sequence numbers, tokens
    named by hashes, deployments by names, and keys at the edges of the byte range."""
    rng = random.Random(16)
    keys = [f"/jaco/v1/audit/events/{i:020d}" for i in range(30_000)]
    keys += [f"/jaco/v1/tokens/{rng.getrandbits(128):032x}" for _ in range(3_000)]
    keys += [f"/jaco/v1/deployments/app-{rng.choice('abcxyz')}{i}" for i in range(2_000)]
    keys += ["/jaco/v1/\U0010ffff", "/jaco/v1/\U0010ffff\U0010ffff/x"]  # the last bytes UTF-8 has
    return sorted({k.encode() for k in keys})


@pytest.mark.parametrize("page_bytes", [20_000, 200_000])  # pages of about 350 and 3500 keys
def test_each_page_asks_etcd_to_count_about_what_it_sends(
    page_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """etcd 3.4 counts every key of the range a page asks for: pages that each asked for the
    whole rest of the range made etcd count N²/2P keys for N read in pages of P (the drill's
    state digest took 430 s at 10⁷ keys). Each page asks for a part of the rest, deepened
    and widened by etcd's count: every key is read once, in order, and what etcd counted
    stays within a few times what it sent."""
    monkeypatch.setattr("jaco.model.etcd.PAGE_BYTES", page_bytes)
    keys = _store_keys()
    etcd = _Recording(keys)

    async def read() -> list[bytes]:
        return [kv.key.encode() async for kv in etcd.iter_prefix("/jaco/v1/", 7, page=100)]

    assert asyncio.run(read()) == keys
    pages = len(etcd.requests)
    assert pages < len(keys) / 50, pages  # pages, not a key at a time
    assert etcd.counted < 4 * len(keys), (etcd.counted, pages)
    assert all(r.revision == 7 for r in etcd.requests)
