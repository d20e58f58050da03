"""etcd's refusals in jaco's terms: the error types the etcd adapter raises and the translation
of etcd's gRPC answers (which it gives only in words) into them."""

from __future__ import annotations

from typing import Any

import grpc

from jaco.errors import AlreadyExists, Compacted, JacoError, Unavailable


class EtcdError(JacoError):
    """etcd refused an operation for a reason that retrying will not fix."""


class TooLarge(EtcdError):
    """etcd's answer was larger than the client accepts (its max_receive_message_length)."""


class TooManyLearners(EtcdError):
    """etcd (3.4) admits one learner at a time: the next member waits for its promotion."""


class MembershipSettling(Unavailable):
    """etcd refuses membership changes until every voter has been connected for 5 s (its
    strict reconfiguration check), e.g. right after a promotion or while a voter is down."""


# etcd's own answers when a request cannot be committed or read linearizably in time.
NO_QUORUM = ("request timed out", "no leader")


def no_quorum(detail: str) -> Unavailable:
    """The member answered: it is the cluster it cannot reach (a partition, peers down)."""
    return Unavailable(
        f"this node's etcd member reaches no quorum ({detail}): the node is cut off from "
        "the other nodes, or too many of them are down; use another node, and check "
        "`jaco cluster status` there"
    )


def past_deadline(exc: Any) -> bool:
    """Whether a call ended because its deadline passed: the client's, or the member's copy of
    it (gRPC sends the deadline along). When the member's passes first, etcd 3.4 hands Go's
    context error to gRPC as it is, which sends it in Go's words, as UNKNOWN: the words, not
    the code, tell."""
    return exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED or (
        exc.details() == "context deadline exceeded"
    )


def translate(exc: Any) -> JacoError:  # an RpcError that is also a grpc.Call
    code = exc.code()
    detail = exc.details() or code.name
    if detail.startswith("etcdserver: ") and any(w in detail for w in NO_QUORUM):
        return no_quorum(detail)
    if "required revision has been compacted" in detail:
        return Compacted(
            "that revision is compacted: etcd no longer holds that point of the history "
            "(jacod has it compact history older than one hour)"
        )
    # gRPC's client says "Received…"; etcd's server, of a request too large, "received…"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "Received message larger than max" in detail:
        return TooLarge(f"etcd's answer is larger than this client accepts: {detail}")
    if code == grpc.StatusCode.UNAVAILABLE or past_deadline(exc):
        return Unavailable(f"the local etcd member is not answering: {detail}")
    return EtcdError(f"etcd: {detail}")


def member_add_error(exc: Any, peer_url: str) -> JacoError:
    """etcd's refusals of a new member, in jaco's terms (etcd says them only in words)."""
    detail = exc.details() or ""
    if "too many learner members" in detail:
        return TooManyLearners("another member is still catching up as a learner")
    if "unhealthy cluster" in detail or "not enough started members" in detail:
        return MembershipSettling(
            "the cluster admits no new member now: a member is down or was added less than "
            "5 s ago; check `jaco cluster status`, then run this join again"
        )
    if "Peer URLs already exists" in detail:
        return AlreadyExists(
            f"another member of the cluster already has the peer URL {peer_url}: "
            "give this node its own --advertise-host or --etcd-peer-port"
        )
    return translate(exc)
