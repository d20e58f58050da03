"""The Join RPC's work: admit a node as an etcd learner with the single-use join token it sent;
and RemoveNode's: forget a node the cluster has lost for good.

The token is checked before anything else in the request is read. etcd (3.4) admits one
learner at a time and refuses membership changes for 5 s after one (strict reconfiguration),
so nodes joining back to back or at once queue up: a join waits here for a short while, then
is answered `LearnerPending` naming the learner it waits for, and the client sends the same
request again. The token is consumed only in the transaction that records the node, after
its member was added, so a join that waited has lost nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

from jaco.errors import InvalidArgument, JacoError, LearnerPending, Unavailable
from jaco.model import pki
from jaco.model.etcd_errors import MembershipSettling, TooManyLearners
from jaco.model.etcd_types import Member
from jaco.model.keys import now
from jaco.model.names import check_name
from jaco.server.convert import host_port
from jaco.server.node import Node
from jaco.v1 import jaco_pb2 as pb

log = logging.getLogger("jacod.join")
SETTLE_WAIT = 30.0  # a promotion's 5 s, a slow member, with room to spare
LEARNER_HOLD = 5.0  # then the client is told whom it waits for, and asks again
RETRY_PAUSE = 0.5
NAME_TRIES = 6
# etcd's strict reconfiguration check refusing a removal (3.4: "unhealthy cluster")
QUORUM_REFUSALS = ("unhealthy cluster", "not enough started members")


async def admit(node: Node, request: Any) -> pb.JoinResponse:
    if node.is_learner:
        raise Unavailable("this node is still joining; join through a ready node")
    store = node.store
    # The token first: nothing else a caller sends is parsed (nor a CSR signed) for
    # someone who does not hold a valid join token.
    await store.check_join_token(request.token)
    name = check_name("node", request.name)
    peer = urlsplit(request.peer_url)
    if peer.scheme != "https":
        raise InvalidArgument(f"invalid peer URL {request.peer_url!r}: use https://HOST:PORT")
    peer_host = host_port(peer.netloc, "peer URL")
    api_host = host_port(request.api_address, "API address")
    await store.check_node_name_free(name)
    ca = await store.ca()
    cert_pem = pki.sign_csr(
        ca, request.csr_pem.encode(), name, pki.node_hosts(name, api_host, peer_host)
    )
    member_id, members = await _add_learner(node, request.peer_url)
    record = {
        "name": name,
        "api_address": request.api_address,
        "peer_url": request.peer_url,
        "member_id": f"{member_id:x}",
        "voter": False,
        "joined_at": now(),
    }
    try:
        await store.finish_join(request.token, record)
    except JacoError:
        # The token was used concurrently (or expired meanwhile): undo the member, or it would
        # hold etcd's only learner place for good.
        await node.etcd.remove_member(member_id)
        raise
    names = {int(n["member_id"], 16): n["name"] for n in await store.nodes() if n.get("member_id")}
    initial = ",".join(f"{m.name or names.get(m.id, name)}={m.peer_urls[0]}" for m in members)
    cluster = await store.cluster()
    log.info("node %s joins as etcd learner %x", name, member_id)
    return pb.JoinResponse(
        cluster_id=cluster["cluster_id"],
        ca_pem=ca.cert_pem.decode(),
        cert_pem=cert_pem.decode(),
        initial_cluster=initial,
        member_id=f"{member_id:x}",
    )


async def remove(node: Node, actor: str, name: str) -> pb.RemovedNode:
    """Remove `name`'s etcd member (if etcd still has it), then its records. In that order, so
    that a retry after a crash between the two finds the member gone and finishes the job."""
    name = check_name("node", name)
    if name == node.config.name:
        raise InvalidArgument(
            f"node {name} is the node you are talking to: remove it through another node"
        )
    # No record: perhaps a node of the cluster before a restore, with replicas still placed
    # on it (no etcd member either); the store says whether there is anything to remove.
    record = next((n for n in await node.store.nodes() if n["name"] == name), {})
    member_removed = False
    if record.get("member_id"):
        member_id = int(record["member_id"], 16)
        async with node.membership_lock:
            if any(m.id == member_id for m in await node.etcd.members()):
                try:
                    await node.etcd.remove_member(member_id)
                except JacoError as exc:  # etcd says it in words only, with varying codes
                    if not any(w in exc.message for w in QUORUM_REFUSALS):
                        raise
                    raise MembershipSettling(
                        f"removing node {name} now would leave fewer started voters than a "
                        "quorum: start the stopped nodes first (`jaco cluster status`)"
                    ) from None
                member_removed = True
    moved = await node.store.remove_node(actor, name, member_removed, record.get("member_id", ""))
    log.info("node %s removed (etcd member removed: %s, %d replicas moved)",
             name, member_removed, moved)  # fmt: skip
    return pb.RemovedNode(name=name, member_removed=member_removed, replicas_moved=moved)


async def _add_learner(node: Node, peer_url: str) -> tuple[int, list[Member]]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        try:
            async with node.membership_lock:
                return await node.etcd.add_learner(peer_url)
        except MembershipSettling:
            if loop.time() - started > SETTLE_WAIT:
                raise
        except TooManyLearners:
            if loop.time() - started > LEARNER_HOLD:
                learner = await _pending_learner(node)
                raise LearnerPending(f"{learner} is still catching up as a learner") from None
        await asyncio.sleep(RETRY_PAUSE)


async def _pending_learner(node: Node) -> str:
    """The learner a join waits for, by its node name. A learner just added is recorded a
    moment later (finish_join): give that moment before naming it by its peer URL."""
    learner = "an earlier node"
    for _ in range(NAME_TRIES):
        try:
            members = await node.etcd.members()
            names = {n.get("member_id"): n["name"] for n in await node.store.nodes()}
        except JacoError:
            return learner
        pending = [m for m in members if m.is_learner]
        if not pending:
            return learner  # promoted meanwhile: the next attempt goes through
        name = names.get(f"{pending[0].id:x}")
        if name:
            return f"node {name}"
        learner = f"the learner at {', '.join(pending[0].peer_urls)}"
        await asyncio.sleep(RETRY_PAUSE)
    return learner
