"""What jacod's etcd client does when a request outlives its deadline.

It asks the member's own status: a member that answers but knows no leader is cut off from
its quorum, and the one line says so (stop 48). After a Status call's own deadline it asks
nothing more: the same question again could only add its wait, to readiness polls above all
(EtcdMember.answers polls Status while etcd starts). A real gRPC server speaks etcd's
Maintenance and KV services on a unix socket and counts what it is asked: a member that holds
back one answer and not another cannot be made of a real etcd.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aetcd import rpc

from jaco.errors import Unavailable
from jaco.model.etcd import Etcd


class Member:
    """Range never answers; Status answers with `leader` (None: never answers). With
    `says_why`, Range answers at once as etcd 3.4 does when its own copy of the deadline passes
    first: gRPC's UNKNOWN, in Go's words (etcd hands the context's error to gRPC as it is)."""

    def __init__(self, leader: int | None, says_why: bool = False) -> None:
        self.leader = leader
        self.says_why = says_why
        self.added: list[str] = []
        self.asked: Counter[str] = Counter()

    async def status(self, request: Any, context: Any) -> Any:
        self.asked["Status"] += 1
        if self.leader is None:
            await asyncio.sleep(60)
        return rpc.StatusResponse(leader=self.leader or 0)

    async def range(self, request: Any, context: Any) -> Any:
        self.asked["Range"] += 1
        if self.says_why:
            await context.abort(grpc.StatusCode.UNKNOWN, "context deadline exceeded")
        await asyncio.sleep(60)
        return rpc.RangeResponse()

    async def member_add(self, request: Any, context: Any) -> Any:
        """The learner is added, but the answer comes after the member's copy of the deadline."""
        self.asked["MemberAdd"] += 1
        self.added = list(request.peerURLs)
        await context.abort(grpc.StatusCode.UNKNOWN, "context deadline exceeded")

    async def member_list(self, request: Any, context: Any) -> Any:
        self.asked["MemberList"] += 1
        voter = rpc.Member(ID=7, name="node-1", peerURLs=["https://10.0.0.1:2380"])
        learner = rpc.Member(ID=42, name="", peerURLs=self.added, isLearner=True)
        return rpc.MemberListResponse(members=[voter, learner])

    def handlers(self) -> list[Any]:
        def unary(fn: Any, request: Any, response: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=request.FromString,
                response_serializer=response.SerializeToString,
            )

        return [
            grpc.method_handlers_generic_handler(
                "etcdserverpb.Cluster",
                {
                    "MemberAdd": unary(
                        self.member_add, rpc.MemberAddRequest, rpc.MemberAddResponse
                    ),
                    "MemberList": unary(
                        self.member_list, rpc.MemberListRequest, rpc.MemberListResponse
                    ),
                },
            ),
            grpc.method_handlers_generic_handler(
                "etcdserverpb.Maintenance",
                {"Status": unary(self.status, rpc.StatusRequest, rpc.StatusResponse)},
            ),
            grpc.method_handlers_generic_handler(
                "etcdserverpb.KV",
                {"Range": unary(self.range, rpc.RangeRequest, rpc.RangeResponse)},
            ),
        ]


@contextlib.asynccontextmanager
async def _client_of(tmp_path: Path, member: Member) -> AsyncIterator[Etcd]:
    """jacod's etcd client, connected to `member` served on a unix socket."""
    socket = tmp_path / "etcd.sock"
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(member.handlers())
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    etcd = Etcd(socket, timeout=1.0)
    try:
        await etcd._channel.channel_ready()  # the deadline is the request's, not the connect's
        yield etcd
    finally:
        await etcd.close()
        await server.stop(None)


async def _asking(tmp_path: Path, member: Member, ask: Any) -> str:
    async with _client_of(tmp_path, member) as etcd:
        with pytest.raises(Unavailable) as refused:
            await ask(etcd)
        return str(refused.value)


def test_a_read_past_its_deadline_on_a_member_without_a_leader_says_no_quorum(
    tmp_path: Path,
) -> None:
    member = Member(leader=0)
    said = asyncio.run(_asking(tmp_path, member, lambda etcd: etcd.get("/jaco/v1/x")))
    assert said.startswith("this node's etcd member reaches no quorum (it knows no leader)"), said
    assert member.asked == Counter(Range=1, Status=1)


def test_a_read_past_its_deadline_on_a_member_with_a_leader_is_not_called_no_quorum(
    tmp_path: Path,
) -> None:
    member = Member(leader=7)
    said = asyncio.run(_asking(tmp_path, member, lambda etcd: etcd.get("/jaco/v1/x")))
    assert "quorum" not in said, said
    assert member.asked == Counter(Range=1, Status=1)


@pytest.mark.parametrize("leader", [0, 7])
def test_etcds_own_word_for_a_passed_deadline_is_a_deadline_too(
    tmp_path: Path, leader: int
) -> None:
    """The member's copy of the deadline (gRPC sends it along) may pass before the client's:
    etcd 3.4 then answers UNKNOWN "context deadline exceeded". That is the same deadline, and
    the same probe follows (a CI run said "etcd: context deadline exceeded" of a member with
    no quorum, exit 9)."""
    member = Member(leader=leader, says_why=True)
    said = asyncio.run(_asking(tmp_path, member, lambda etcd: etcd.get("/jaco/v1/x")))
    if leader == 0:
        assert said.startswith("this node's etcd member reaches no quorum (it knows no leader)")
    else:
        assert said == "the local etcd member is not answering: context deadline exceeded", said
    assert member.asked == Counter(Range=1, Status=1)


def test_a_learner_added_past_the_members_deadline_is_found_added(tmp_path: Path) -> None:
    """A MemberAdd answered UNKNOWN "context deadline exceeded" may have added the learner: it is
    looked for among the members, as after the client's own deadline, not refused."""
    member = Member(leader=7)

    async def add() -> tuple[int, list[Any]]:
        async with _client_of(tmp_path, member) as etcd:
            return await etcd.add_learner("https://10.0.0.9:2380")

    added, members = asyncio.run(add())
    assert added == 42 and [m.id for m in members] == [7, 42]
    assert member.asked == Counter(MemberAdd=1, MemberList=1)


def test_a_status_past_its_deadline_is_not_asked_again(tmp_path: Path) -> None:
    member = Member(leader=None)
    said = asyncio.run(_asking(tmp_path, member, lambda etcd: etcd.status()))
    assert "quorum" not in said, said
    assert member.asked == Counter(Status=1)
