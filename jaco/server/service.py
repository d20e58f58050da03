"""The jaco.v1.Jaco gRPC service: authentication, validation and translation to the model.

Who may call what is one table (`ACCESS`, one row per RPC of the service descriptor): most
RPCs need `authorization: Bearer <operator token>`, writes need an admin token, and Join is
authenticated by the single-use join token it carries, checked before anything else in the
request is read. Expected failures become gRPC status codes with the operator-facing message
as details.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import Message

from jaco.archive.meta import BackupMeta
from jaco.errors import (
    ERROR_METADATA,
    InvalidArgument,
    JacoError,
    NotFound,
    PermissionDenied,
    Unavailable,
    grpc_code_name,
)
from jaco.model import audit
from jaco.model.engine import Principal
from jaco.model.keys import now
from jaco.model.names import parse_time
from jaco.model.store import Store
from jaco.server.convert import audit_event, deployment, message
from jaco.server.join import admit, remove
from jaco.server.node import Node
from jaco.server.snapshot import Announce, stream_snapshot
from jaco.v1 import jaco_pb2 as pb
from jaco.v1 import jaco_pb2_grpc as pb_grpc

log = logging.getLogger("jacod.api")
READ, WRITE, JOIN = "read", "write", "join"
M = TypeVar("M", bound=Message)

# Who may call each RPC: READ (any operator token), WRITE (admin tokens), JOIN (a join token
# in the request). tests/test_authorization.py runs every row against every kind of token and
# fails for an RPC without one; it keeps a reviewed copy of this table, to be changed with it.
ACCESS: dict[str, str] = {
    "Status": READ,
    "ClusterStatus": READ,
    "Deploy": WRITE,
    "Scale": WRITE,
    "RemoveDeployment": WRITE,
    "AddRoute": WRITE,
    "ListRoutes": READ,
    "RemoveRoute": WRITE,
    "IssueCert": WRITE,
    "ListCerts": READ,
    "CreateToken": WRITE,
    "ListTokens": READ,
    "RevokeToken": WRITE,
    "Audit": READ,
    "VerifyAudit": READ,
    "StateDigest": READ,
    "IssueJoinToken": WRITE,
    "Join": JOIN,
    "RemoveNode": WRITE,
    "Backup": WRITE,  # the snapshot holds the CA key
    "Changes": WRITE,  # the changes carry the CA key and token hashes, as the snapshot does
}


def _bearer(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return ""


async def abort(context: grpc.aio.ServicerContext, exc: JacoError) -> NoReturn:
    """End the call with the error's status code, its message, and its name (for the client)."""
    name = ((ERROR_METADATA, type(exc).__name__),)
    await context.abort(grpc.StatusCode[grpc_code_name(exc)], exc.message, trailing_metadata=name)


Unary = Callable[[Any, Any, Any, Principal], Awaitable[Any]]


def rpc(method: Unary) -> Any:
    """Authenticate, authorise (by the RPC's row in ACCESS) and map JacoErrors to status
    codes for one unary RPC."""

    async def handler(self: JacoService, request: Any, context: Any) -> Any:
        try:
            principal = await self.authorize(context, ACCESS[method.__name__])
            return await method(self, request, context, principal)
        except JacoError as exc:
            await abort(context, exc)

    handler.__name__ = method.__name__
    handler.__doc__ = method.__doc__
    return handler


class JacoService(pb_grpc.JacoServicer):
    def __init__(self, node: Node) -> None:
        self.node = node

    @property
    def store(self) -> Store:
        return self.node.store

    async def authorize(self, context: grpc.aio.ServicerContext, access: str) -> Principal:
        if self.node.is_learner:
            raise Unavailable(
                f"node {self.node.config.name} is still joining the cluster; ask another node"
            )
        principal = await self.store.authenticate(_bearer(context))
        if access == WRITE and principal.role != "admin":
            raise PermissionDenied(f"token {principal.token_id} is read-only ({principal.role})")
        return principal

    @rpc
    async def Status(self, request: Any, context: Any, who: Principal) -> pb.StatusResponse:
        cluster = await self.store.cluster()
        if not request.limit:  # a client from before paging: everything in one answer
            deps = await self.store.deployments()
            return pb.StatusResponse(
                cluster_id=cluster["cluster_id"], deployments=[deployment(d) for d in deps]
            )
        page = await self.store.deployment_page(request.after, request.limit, request.revision)
        return pb.StatusResponse(
            cluster_id=cluster["cluster_id"],
            deployments=[deployment(d) for d in page.deployments],
            next_after=page.next_after,
            revision=page.revision,
        )

    @rpc
    async def ClusterStatus(self, request: Any, context: Any, who: Principal) -> Any:
        cluster = await self.store.cluster()
        nodes = await self.store.nodes()
        alive = await self.store.alive()
        leader = (await self.node.etcd.status()).leader_id
        out = []
        for n in sorted(nodes, key=lambda n: n["name"]):
            beat = alive.get(n["name"])
            member_id = int(n["member_id"], 16) if n.get("member_id") else 0
            if not n.get("voter"):
                state = "JOINING"
            else:
                state = "READY" if beat else "DOWN"
            out.append(
                pb.Node(
                    name=n["name"],
                    address=n["api_address"],
                    state=state,
                    leader=bool(member_id) and member_id == leader,
                    raft_index=beat["raft_index"] if beat else 0,
                    raft_term=beat["raft_term"] if beat else 0,
                    member_id=n.get("member_id", ""),
                    voter=bool(n.get("voter")),
                )
            )
        return pb.ClusterStatusResponse(
            cluster_id=cluster["cluster_id"],
            ca_fingerprint=await self.store.ca_fingerprint(),
            nodes=out,
            served_by=self.node.config.name,
        )

    @rpc
    async def Deploy(self, request: Any, context: Any, who: Principal) -> pb.Deployment:
        await self.store.deploy(
            who.actor, request.name, request.image, request.replicas, dict(request.env)
        )
        return await self._one_deployment(request.name)

    @rpc
    async def Scale(self, request: Any, context: Any, who: Principal) -> pb.Deployment:
        await self.store.scale(who.actor, request.name, request.replicas)
        return await self._one_deployment(request.name)

    async def _one_deployment(self, name: str) -> pb.Deployment:
        d = await self.store.deployment(name)
        if d is None:
            raise NotFound(f"deployment {name} vanished (removed concurrently)")
        return deployment(d)

    @rpc
    async def RemoveDeployment(self, request: Any, context: Any, who: Principal) -> pb.Empty:
        await self.store.remove_deployment(who.actor, request.name)
        return pb.Empty()

    @rpc
    async def AddRoute(self, request: Any, context: Any, who: Principal) -> pb.Route:
        route = await self.store.add_route(
            who.actor,
            request.name,
            request.host,
            request.path or "/",
            request.deployment,
            request.port,
        )
        return message(pb.Route, route)

    @rpc
    async def ListRoutes(self, request: Any, context: Any, who: Principal) -> pb.RouteList:
        return message(pb.RouteList, {"routes": await self.store.routes()})

    @rpc
    async def RemoveRoute(self, request: Any, context: Any, who: Principal) -> pb.Empty:
        await self.store.remove_route(who.actor, request.name)
        return pb.Empty()

    @rpc
    async def IssueCert(self, request: Any, context: Any, who: Principal) -> pb.IssuedCert:
        info, pair = await self.store.issue_cert(
            who.actor, request.common_name, list(request.dns_names), request.valid_days or 90
        )
        ca = await self.store.ca()
        return pb.IssuedCert(
            info=message(pb.CertInfo, info),
            cert_pem=pair.cert_pem.decode(),
            key_pem=pair.key_pem.decode(),
            ca_pem=ca.cert_pem.decode(),
        )

    @rpc
    async def ListCerts(self, request: Any, context: Any, who: Principal) -> pb.CertList:
        return message(pb.CertList, {"certs": await self.store.certs()})

    @rpc
    async def CreateToken(self, request: Any, context: Any, who: Principal) -> pb.CreatedToken:
        token, record = await self.store.create_token(
            who.actor, request.role or "admin", request.description
        )
        return pb.CreatedToken(info=message(pb.TokenInfo, record), token=str(token))

    @rpc
    async def ListTokens(self, request: Any, context: Any, who: Principal) -> pb.TokenList:
        return message(pb.TokenList, {"tokens": await self.store.token_list()})

    @rpc
    async def RevokeToken(self, request: Any, context: Any, who: Principal) -> pb.Empty:
        await self.store.revoke_token(who.actor, request.id)
        return pb.Empty()

    @rpc
    async def VerifyAudit(self, request: Any, context: Any, who: Principal) -> Any:
        anchors = [audit.Anchor(a.seq, a.hash, a.source) for a in request.anchors]
        check = await self.store.verify_audit(anchors, audit.check_types(request.find_types))
        return pb.AuditVerification(
            ok=check.ok,
            events=check.events,
            first_bad_seq=check.first_bad_seq,
            reason=check.reason,
            anchors_checked=check.anchors_checked,
            chain_ok=check.chain_ok,
            found_seqs=check.found,
        )

    @rpc
    async def StateDigest(self, request: Any, context: Any, who: Principal) -> Any:
        # 0 is a client older than versions: it means 1. An unknown one is InvalidArgument.
        state = await self.store.state_digest(request.revision, request.digest_version or 1)
        head = state.audit_head or {}
        return pb.StateDigestResponse(
            digest_version=state.digest_version,
            revision=state.revision,
            counts=state.counts,
            state_digest=state.state_digest,
            audit_head_seq=head.get("seq", 0),
            audit_head_hash=head.get("hash", ""),
        )

    async def Audit(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.AuditEvent]:
        try:
            await self.authorize(context, ACCESS["Audit"])
            since = parse_time(request.since, "--since")
            until = parse_time(request.until, "--until")
            types = audit.check_types(request.types)

            def wanted(e: dict[str, Any]) -> bool:
                if e["type"] == audit.DAMAGED:
                    return True  # what it was cannot be told: no filter may hide it
                at = dt.datetime.fromisoformat(e["at"])
                return (
                    (not types or e["type"] in types)
                    and (since is None or at >= since)
                    and (until is None or at < until)
                )

            events, revision = await self.store.audit_events()
            async for event in events:
                if wanted(event):
                    yield audit_event(event)
            if request.follow:
                async for event in self.store.follow_audit(revision):
                    if wanted(event):
                        yield audit_event(event)
        except JacoError as exc:
            await abort(context, exc)

    @rpc
    async def IssueJoinToken(self, request: Any, context: Any, who: Principal) -> pb.JoinToken:
        token, expires = await self.store.issue_join_token(who.actor, request.ttl_seconds or 3600)
        return pb.JoinToken(token=str(token), expires_at=expires)

    @rpc
    async def RemoveNode(self, request: Any, context: Any, who: Principal) -> pb.RemovedNode:
        return await remove(self.node, who.actor, request.name)

    async def Join(self, request: Any, context: grpc.aio.ServicerContext) -> pb.JoinResponse:
        try:
            return await admit(self.node, request)
        except JacoError as exc:
            log.info("join of %r refused: %s", request.name, exc.message)
            await abort(context, exc)

    async def Changes(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ChangeBatch]:
        try:
            await self.authorize(context, ACCESS["Changes"])
            start = request.from_revision
            if start < 1:
                raise InvalidArgument("the change stream starts at revision 1 or later")
            changes = self.store.changes(start)
            # Nothing is sent yet, so progress stands just before the first revision asked:
            # a caller learns at once that it is let through and where it stands.
            yield pb.ChangeBatch(revision=max(start - 1, 0), progress=True, at=now())
            async with aclosing(changes):
                async for rev in changes:
                    yield pb.ChangeBatch(
                        revision=rev.revision,
                        progress=not rev.changes,
                        at=audit.time_of(rev.changes) or now(),
                        changes=[
                            pb.Change(
                                key=c.kv.key,
                                value=c.kv.value,
                                mod_revision=c.kv.mod_revision,
                                delete=c.kind == "delete",
                            )
                            for c in rev.changes
                        ],
                    )
        except JacoError as exc:
            await abort(context, exc)

    async def Backup(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.BackupChunk | bytes]:
        try:
            who = await self.authorize(context, ACCESS["Backup"])
            meta: BackupMeta | None = None
            async with (
                self.node.backup_lock,
                aclosing(stream_snapshot(self.store, self.node.data.backup_dir)) as parts,
            ):
                async for part in parts:
                    if isinstance(part, bytes):  # a data message, serialized already
                        yield part
                    elif isinstance(part, Announce):
                        yield pb.BackupChunk(snapshot_size=part.size)
                    else:
                        meta = part
                        yield pb.BackupChunk(meta_json=meta.to_json().decode())
                assert meta is not None  # stream_snapshot ends with the meta or raises
                await self.store.record(
                    who.actor,
                    "BACKUP_TAKEN",
                    snapshot_index=meta.snapshot_index,
                    snapshot_sha256=meta.snapshot_sha256,
                    snapshot_size=meta.snapshot_size,
                    served_by=self.node.config.name,
                )
                log.info("backup at index %s sent", meta.snapshot_index)
        except JacoError as exc:
            await abort(context, exc)
