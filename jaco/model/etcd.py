"""The etcd adapter: the only module that speaks etcd's API.

It uses the etcd v3 gRPC stubs that ship with `aetcd` over a `grpc.aio` channel to the local
member's unix socket (aetcd's own client has no learner support). Everything above this module sees
plain dataclasses and jaco exceptions, so a newer etcd only changes this file and
`etcd_member.py`. It is longer than usual for that reason: every call jaco makes to etcd (reads
paged to bounded memory, transactions, watches, leases, membership, status, the no-quorum
probe) is here and nowhere else.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from aetcd import rpc

from jaco.errors import Compacted
from jaco.model.etcd_errors import (
    EtcdError,
    MembershipSettling,
    TooLarge,
    member_add_error,
    no_quorum,
    past_deadline,
    translate,
)
from jaco.model.etcd_keys import part_end, prefix_end, shared_prefix
from jaco.model.etcd_types import KV, Member, MemberStatus, Revision, WatchEvent


def _which(prefix: str, start: bytes) -> str:
    """The record a range read of `prefix` would have read next from `start`, in words."""
    if start == prefix.encode():
        return f"the first record under {prefix}"
    last = start.removesuffix(b"\0").decode(errors="replace")
    return f"the record after {last!r}"


def _kv(kv: Any) -> KV:
    return KV(kv.key.decode(), kv.value, kv.mod_revision, kv.create_revision, kv.lease)


MAX_MESSAGE = 64 * 1024 * 1024  # the largest answer from etcd the client accepts
PAGE_BYTES = 4 * 1024 * 1024  # what one page of a range read aims at (docs/benchmarks.md)
MAX_PAGE = 100_000  # records in one page, at most
FIRST_PAGE = 1000  # records in a range read's first page, before its records' size is known
PART_PAGES = 8  # a part of a range holding more pages than this is split (Etcd._pages)
TXN_READS = 1000  # reads in one transaction (jacod starts etcd with --max-txn-ops=2048)
PROBE_TIMEOUT = 2.0  # the member's own status, asked after a deadline passed: local, quick
SUN_PATH = 108  # the bytes a unix socket's address holds (sockaddr_un.sun_path), its NUL included


def channel_options(max_message: int = MAX_MESSAGE) -> list[tuple[str, Any]]:
    """Each channel gets a connection of its own: gRPC shares one among channels of the same
    arguments (with TLS, each client's credentials kept them apart), and a refused one's
    backoff with it, which failed a start's next ask at once (tests/test_etcd_start.py)."""
    return [
        ("grpc.max_receive_message_length", max_message),
        ("grpc.use_local_subchannel_pool", 1),
    ]


def socket_target(socket: Path) -> tuple[str, int | None]:
    """gRPC's address of the unix socket `socket`, and the descriptor it needs held open.

    A socket's address holds at most 107 bytes of path; a longer one (a data dir deep in a
    tree) is reached through a descriptor of its directory, /proc/self/fd/N/NAME, which the
    caller closes once done with the address."""
    socket = socket.absolute()
    if len(os.fsencode(socket)) < SUN_PATH:
        return f"unix:{socket}", None
    fd = os.open(socket.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    return f"unix:/proc/self/fd/{fd}/{socket.name}", fd


def op_put(key: str, value: bytes, lease: int = 0) -> Any:
    return rpc.RequestOp(request_put=rpc.PutRequest(key=key.encode(), value=value, lease=lease))


def op_delete(key: str) -> Any:
    return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=key.encode()))


def cmp_mod_revision(key: str, revision: int) -> Any:
    """True while `key` was last modified at `revision` (0: while it does not exist)."""
    return rpc.Compare(
        result=rpc.Compare.EQUAL,
        target=rpc.Compare.MOD,
        key=key.encode(),
        mod_revision=revision,
    )


class Etcd:
    """An async client of the local etcd member, over its unix socket.

    The socket lies in a directory of the data dir that only jacod's user may enter
    (jaco.node.etcd_member), so it needs no TLS: the member's TLS listener on 127.0.0.1 stays
    for etcd's own tools. TLS cost the member and jacod about 0.8 s of CPU per 512 MiB of a
    backup's snapshot stream (docs/benchmarks.md, stop 43)."""

    def __init__(self, socket: Path, timeout: float = 10.0, max_message: int = MAX_MESSAGE) -> None:
        self.target, self._socket_dir = socket_target(socket)
        self.timeout = timeout
        self.max_message = max_message
        self._channel = grpc.aio.insecure_channel(self.target, options=channel_options(max_message))
        self._kv = rpc.KVStub(self._channel)
        self._lease = rpc.LeaseStub(self._channel)
        self._watch = rpc.WatchStub(self._channel)
        self._cluster = rpc.ClusterStub(self._channel)
        self._maintenance = rpc.MaintenanceStub(self._channel)

    async def close(self) -> None:
        """Close the channel, then the socket directory's descriptor, if any. A channel made
        from `target` elsewhere (the snapshot stream's) must be done before: the descriptor's
        number may then name another file."""
        try:
            await self._channel.close(None)
        finally:
            if self._socket_dir is not None:
                os.close(self._socket_dir)
                self._socket_dir = None

    async def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return await method(request, timeout=timeout or self.timeout)
        except grpc.aio.AioRpcError as exc:
            # A request that outlived its deadline: etcd did not say why (it answers "request
            # timed out" only to some). A member that still answers but knows no leader is
            # cut off from its quorum; say that, not "not answering". (Not after a Status of
            # its own: asking the same again could only add its wait, as in readiness polls.)
            asked_status = method is self._maintenance.Status
            if past_deadline(exc) and not asked_status and await self._leaderless():
                raise no_quorum("it knows no leader") from None
            raise translate(exc) from None

    async def _leaderless(self) -> bool:
        """Whether the member answers its own status, and knows no leader."""
        try:
            status = await self._maintenance.Status(rpc.StatusRequest(), timeout=PROBE_TIMEOUT)
        except grpc.aio.AioRpcError:
            return False
        return status.leader == 0

    async def get(self, key: str, revision: int = 0) -> tuple[KV | None, int]:
        """One key (at `revision`, or the latest), and the store revision read."""
        request = rpc.RangeRequest(key=key.encode(), revision=revision)
        resp = await self._call(self._kv.Range, request)
        return (_kv(resp.kvs[0]) if resp.kvs else None), resp.header.revision

    async def get_prefix(self, prefix: str, revision: int = 0) -> list[KV]:
        """All keys under `prefix` at `revision` (0: the latest), in key order, read a page at
        a time (a listing of any length) at one revision."""
        return [
            _kv(kv) async for resp in self._pages(prefix, revision, FIRST_PAGE) for kv in resp.kvs
        ]

    async def keys(self, prefix: str, revision: int) -> list[str]:
        """The keys under `prefix` at `revision`, without their values, in key order."""
        pages = self._pages(prefix, revision, FIRST_PAGE, keys_only=True)
        return [kv.key.decode() async for resp in pages for kv in resp.kvs]

    async def iter_prefix(
        self, prefix: str, revision: int, page: int = FIRST_PAGE
    ) -> AsyncIterator[KV]:
        """All keys under `prefix` at `revision`, in key order, fetched a page at a time
        (bounded memory); the first page holds `page` records."""
        async for resp in self._pages(prefix, revision, page):
            for kv in resp.kvs:
                yield _kv(kv)

    async def record_pages(
        self, prefix: str, revision: int
    ) -> AsyncIterator[list[tuple[bytes, bytes]]]:
        """The (key, value) of every key under `prefix` at `revision` (0: the latest), as
        bytes, in key order, a page at a time: a digest's read, without a KV per record."""
        async for resp in self._pages(prefix, revision, FIRST_PAGE):
            yield [(kv.key, kv.value) for kv in resp.kvs]

    async def iter_range(
        self, start: str, end: bytes, revision: int, page: int = FIRST_PAGE, most: int = 0
    ) -> AsyncGenerator[KV, None]:
        """The keys from `start` up to (not including) `end` at `revision` (0: the first
        page's), in key order, a page at a time; the first page holds `page` records, and no
        page asks past `most` records in all (0: no bound). A reader that stops early has read
        only the pages it used."""
        async for resp in self._pages(start, revision, page, end, most):
            for kv in resp.kvs:
                yield _kv(kv)

    async def _pages(
        self,
        prefix: str,
        revision: int,
        limit: int,
        end: bytes | None = None,
        most: int = 0,
        keys_only: bool = False,
    ) -> AsyncIterator[Any]:
        """etcd's answers for the range under `prefix` (or from `prefix` up to `end`), page
        after page, at `revision` (0: the revision the first page was read at).

        No sort is asked for: etcd returns a range in key order already, and etcd 3.4 answers a
        range with any sort order by reading the whole rest of the range, sorting it and only
        then applying the limit (docs/benchmarks.md, round three). Even unsorted, etcd 3.4
        counts the whole rest of the range for each page: 1000-record pages read 10⁶ records
        in 100 s, and 4 MiB pages 10⁷ records in 430 s. So each page after the first is sized
        from the previous page's bytes per record to about PAGE_BYTES (at most MAX_PAGE
        records, and at most four times the previous page: etcd builds a whole answer before
        the client can refuse it), a page larger than this client accepts is asked for again,
        a quarter as long, and each page asks for a part of the rest only: the keys that
        share their first `depth` bytes with the page's first key (etcd_keys.part_end).
        etcd's count of that part says how deep the next page goes: deeper while the part
        holds far more than a page, one byte shallower once a whole part held far less; what
        etcd counts stays near what it sends, linear in the range, whatever its size."""
        start, final = prefix.encode(), end or prefix_end(prefix)
        depth = 0  # 0: the whole rest of the range
        left = most or -1
        while True:
            limit = min(limit, left) if left > 0 else limit
            end = part_end(start, final, depth)
            request = rpc.RangeRequest(
                key=start, range_end=end, revision=revision, limit=limit, keys_only=keys_only
            )
            try:
                resp = await self._call(self._kv.Range, request)
            except TooLarge:
                if limit == 1:
                    raise TooLarge(
                        f"{_which(prefix, start)} is larger than the "
                        f"{self.max_message / 2**20:.3g} MiB this node's etcd client accepts"
                    ) from None
                limit = max(1, limit // 4)
                continue
            yield resp
            left -= len(resp.kvs)
            revision = revision or resp.header.revision
            if left == 0 or (not resp.more and end == final):
                return
            if resp.more:  # the part holds more: the next page goes on in it
                start = resp.kvs[-1].key + b"\0"
                if resp.count > PART_PAGES * len(resp.kvs):  # deeper: a byte at least, and
                    # as deep as the keys of this page go alike
                    alike = shared_prefix(resp.kvs[0].key, resp.kvs[-1].key)
                    depth = max(depth + 1, shared_prefix(start, final) + 1, alike)
            else:  # the part is read: the next page begins where it ends
                start = end
                if depth and resp.count * PART_PAGES < limit:
                    depth = depth - 1 if depth - 1 > shared_prefix(start, final) else 0
            if resp.kvs:
                per_record = resp.ByteSize() / len(resp.kvs)
                limit = max(1, min(MAX_PAGE, 4 * limit, int(PAGE_BYTES / per_record)))

    async def read_many(self, ranges: Sequence[tuple[str, str]], revision: int) -> list[list[KV]]:
        """The keys of each (start, end) range at `revision` (end "": the one key `start`),
        read TXN_READS ranges to a transaction: many small reads in a few round trips."""
        found: list[list[KV]] = []
        for i in range(0, len(ranges), TXN_READS):
            reads = [
                rpc.RequestOp(
                    request_range=rpc.RangeRequest(
                        key=start.encode(), range_end=end.encode(), revision=revision
                    )
                )
                for start, end in ranges[i : i + TXN_READS]
            ]
            resp = await self._call(self._kv.Txn, rpc.TxnRequest(success=reads))
            found += [[_kv(kv) for kv in r.response_range.kvs] for r in resp.responses]
        return found

    async def txn(
        self, compares: Sequence[Any], success: Sequence[Any], failure: Sequence[Any] = ()
    ) -> tuple[bool, int]:
        """Run a transaction; returns (succeeded, revision after it)."""
        request = rpc.TxnRequest(compare=compares, success=success, failure=failure)
        resp = await self._call(self._kv.Txn, request)
        return resp.succeeded, resp.header.revision

    async def lease_grant(self, ttl: int) -> int:
        resp = await self._call(self._lease.LeaseGrant, rpc.LeaseGrantRequest(TTL=ttl))
        return int(resp.ID)

    async def lease_keepalive(self, lease_id: int) -> bool:
        """Refresh a lease once; False when it has already expired."""
        try:
            call = self._lease.LeaseKeepAlive(
                iter([rpc.LeaseKeepAliveRequest(ID=lease_id)]), timeout=self.timeout
            )
            async for reply in call:
                return bool(reply.TTL > 0)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from None
        return False

    async def lease_revoke(self, lease_id: int) -> None:
        await self._call(self._lease.LeaseRevoke, rpc.LeaseRevokeRequest(ID=lease_id))

    def _open_watch(self, prefix: str, start_revision: int) -> tuple[Any, asyncio.Queue[Any]]:
        """A watch of `prefix` from `start_revision`: the call, and the queue that feeds its
        request stream (the create request is already in it)."""
        queue: asyncio.Queue[Any] = asyncio.Queue()
        queue.put_nowait(
            rpc.WatchRequest(
                create_request=rpc.WatchCreateRequest(
                    key=prefix.encode(), range_end=prefix_end(prefix), start_revision=start_revision
                )
            )
        )

        async def requests() -> AsyncIterator[Any]:
            while True:
                yield await queue.get()

        return self._watch.Watch(requests()), queue

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[WatchEvent]:
        call, _ = self._open_watch(prefix, start_revision)
        try:
            async for resp in call:
                if resp.canceled:
                    raise EtcdError(f"etcd cancelled the watch: {resp.cancel_reason}")
                for event in resp.events:
                    kind = "delete" if event.type == rpc.Event.DELETE else "put"
                    yield WatchEvent(kind, _kv(event.kv))
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from None
        finally:
            call.cancel()

    async def watch_revisions(
        self, prefix: str, start_revision: int, progress_every: float = 1.0
    ) -> AsyncIterator[Revision]:
        """Every change under `prefix` from `start_revision` on, one `Revision` per store
        revision, and progress about every `progress_every` seconds (etcd answers a progress
        request once it has sent every event up to the revision it names). Compacted if etcd
        no longer holds `start_revision`."""
        call, queue = self._open_watch(prefix, start_revision)

        async def ask_progress() -> None:
            while True:
                await asyncio.sleep(progress_every)
                await queue.put(rpc.WatchRequest(progress_request=rpc.WatchProgressRequest()))

        asker = asyncio.create_task(ask_progress())
        try:
            async for resp in call:
                if resp.compact_revision:
                    raise Compacted(
                        f"revision {start_revision} is compacted (etcd keeps history from "
                        f"revision {resp.compact_revision})"
                    )
                if resp.canceled:
                    raise EtcdError(f"etcd cancelled the watch: {resp.cancel_reason}")
                if resp.created:
                    continue
                if not resp.events:
                    yield Revision(resp.header.revision, ())
                    continue
                group: list[WatchEvent] = []
                for event in resp.events:
                    if group and event.kv.mod_revision != group[0].kv.mod_revision:
                        yield Revision(group[0].kv.mod_revision, tuple(group))
                        group = []
                    kind = "delete" if event.type == rpc.Event.DELETE else "put"
                    group.append(WatchEvent(kind, _kv(event.kv)))
                yield Revision(group[0].kv.mod_revision, tuple(group))
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from None
        finally:
            asker.cancel()
            call.cancel()

    async def status(self, timeout: float | None = None) -> MemberStatus:
        resp = await self._call(self._maintenance.Status, rpc.StatusRequest(), timeout)
        return MemberStatus(
            member_id=resp.header.member_id,
            leader_id=resp.leader,
            raft_index=resp.raftIndex,
            raft_term=resp.raftTerm,
            is_learner=resp.isLearner,
            db_size=resp.dbSize,
            revision=resp.header.revision,
        )

    async def members(self) -> list[Member]:
        resp = await self._call(self._cluster.MemberList, rpc.MemberListRequest())
        return [Member(m.ID, m.name, tuple(m.peerURLs), m.isLearner) for m in resp.members]

    async def add_learner(self, peer_url: str) -> tuple[int, list[Member]]:
        """Add a non-voting member (a join must never cost the cluster its quorum)."""
        request = rpc.MemberAddRequest(peerURLs=[peer_url], isLearner=True)
        try:
            resp = await self._cluster.MemberAdd(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if not past_deadline(exc):
                raise member_add_error(exc, peer_url) from None
            # raft drops a conf change proposed while another one is pending (a promotion, a
            # join through another node) and etcd waits for it until the deadline; or it was
            # only slow, and the member is there.
            members = await self.members()
            added = [m.id for m in members if peer_url in m.peer_urls]
            if not added:
                raise MembershipSettling(
                    "the cluster admits no new member now: another membership change is "
                    "under way; run this join again"
                ) from None
            return added[0], members
        members = [Member(m.ID, m.name, tuple(m.peerURLs), m.isLearner) for m in resp.members]
        return resp.member.ID, members

    async def promote(self, member_id: int) -> None:
        await self._call(self._cluster.MemberPromote, rpc.MemberPromoteRequest(ID=member_id))

    async def remove_member(self, member_id: int) -> None:
        await self._call(self._cluster.MemberRemove, rpc.MemberRemoveRequest(ID=member_id))
