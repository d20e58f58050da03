"""The jaco.v1.Jaco gRPC service: authentication, validation and translation to the model.

Every RPC but Join needs `authorization: Bearer <operator token>`; viewers may only read.
Expected failures become gRPC status codes with the operator-facing message as details.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import grpc

from jaco import pki
from jaco.config import check_name
from jaco.errors import (
    InvalidArgument,
    JacoError,
    NotFound,
    PermissionDenied,
    Unavailable,
    grpc_code_name,
)
from jaco.snapshot import Announce, stream_snapshot
from jaco.state import Principal, Store, now
from jaco.v1 import jaco_pb2 as pb
from jaco.v1 import jaco_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from jaco.daemon import Node

log = logging.getLogger("jacod.api")
READ, WRITE = "read", "write"
JOIN_WAIT = 30.0


def _bearer(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :]
    return ""


def rpc(access: str) -> Callable[[Callable[..., Any]], Any]:
    """Authenticate, authorise and map JacoErrors to status codes for one unary RPC."""

    def wrap(method: Callable[..., Any]) -> Any:
        @functools.wraps(method)
        async def handler(self: JacoService, request: Any, context: Any) -> Any:
            try:
                principal = await self.authorize(context, access)
                return await method(self, request, context, principal)
            except JacoError as exc:
                await context.abort(grpc.StatusCode[grpc_code_name(exc)], exc.message)

        return handler

    return wrap


def _deployment(d: dict[str, Any]) -> pb.Deployment:
    return pb.Deployment(
        name=d["name"],
        image=d["image"],
        replicas=d["replicas"],
        env=d.get("env", {}),
        created_at=d["created_at"],
        updated_at=d["updated_at"],
        placed=[
            pb.Replica(id=r["id"], index=r["index"], ip=r["ip"], node=r["node"])
            for r in sorted(d.get("placed", []), key=lambda r: r["index"])
        ],
    )


def _route(r: dict[str, Any]) -> pb.Route:
    return pb.Route(
        name=r["name"],
        host=r["host"],
        path=r["path"],
        deployment=r["deployment"],
        port=r["port"],
        created_at=r["created_at"],
    )


def _token_info(t: dict[str, Any]) -> pb.TokenInfo:
    return pb.TokenInfo(
        id=t["id"],
        role=t["role"],
        description=t.get("description", ""),
        created_at=t["created_at"],
        revoked=bool(t.get("revoked")),
    )


def _cert_info(c: dict[str, Any]) -> pb.CertInfo:
    return pb.CertInfo(
        serial=c["serial"],
        common_name=c["common_name"],
        dns_names=c["dns_names"],
        not_after=c["not_after"],
        issued_at=c["issued_at"],
    )


def audit_event(e: dict[str, Any]) -> pb.AuditEvent:
    return pb.AuditEvent(
        seq=e["seq"],
        type=e["type"],
        at=e["at"],
        actor=e["actor"],
        detail_json=json.dumps(e["detail"], sort_keys=True),
        prev_hash=e["prev_hash"],
        hash=e["hash"],
    )


def _parse_time(text: str, what: str) -> dt.datetime | None:
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(f"invalid {what} time {text!r}: use RFC 3339") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _host(address: str) -> str:
    return urlsplit(f"//{address}").hostname or ""


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

    @rpc(READ)
    async def Status(self, request: Any, context: Any, who: Principal) -> pb.StatusResponse:
        cluster = await self.store.cluster()
        deps = await self.store.deployments()
        return pb.StatusResponse(
            cluster_id=cluster["cluster_id"], deployments=[_deployment(d) for d in deps]
        )

    @rpc(READ)
    async def ClusterStatus(self, request: Any, context: Any, who: Principal) -> Any:
        cluster = await self.store.cluster()
        nodes = await self.store.nodes()
        alive = await self.store.alive()
        local = await self.node.etcd.status()
        leader = local.leader_id
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

    @rpc(WRITE)
    async def Deploy(self, request: Any, context: Any, who: Principal) -> pb.Deployment:
        await self.store.deploy(
            who.actor, request.name, request.image, request.replicas, dict(request.env)
        )
        return await self._one_deployment(request.name)

    @rpc(WRITE)
    async def Scale(self, request: Any, context: Any, who: Principal) -> pb.Deployment:
        await self.store.scale(who.actor, request.name, request.replicas)
        return await self._one_deployment(request.name)

    async def _one_deployment(self, name: str) -> pb.Deployment:
        for d in await self.store.deployments():
            if d["name"] == name:
                return _deployment(d)
        raise NotFound(f"deployment {name} vanished (removed concurrently)")

    @rpc(WRITE)
    async def RemoveDeployment(self, request: Any, context: Any, who: Principal) -> pb.Empty:
        await self.store.remove_deployment(who.actor, request.name)
        return pb.Empty()

    @rpc(WRITE)
    async def AddRoute(self, request: Any, context: Any, who: Principal) -> pb.Route:
        route = await self.store.add_route(
            who.actor,
            request.name,
            request.host,
            request.path or "/",
            request.deployment,
            request.port,
        )
        return _route(route)

    @rpc(READ)
    async def ListRoutes(self, request: Any, context: Any, who: Principal) -> pb.RouteList:
        return pb.RouteList(routes=[_route(r) for r in await self.store.routes()])

    @rpc(WRITE)
    async def RemoveRoute(self, request: Any, context: Any, who: Principal) -> pb.Empty:
        await self.store.remove_route(who.actor, request.name)
        return pb.Empty()

    @rpc(WRITE)
    async def IssueCert(self, request: Any, context: Any, who: Principal) -> pb.IssuedCert:
        info, pair = await self.store.issue_cert(
            who.actor, request.common_name, list(request.dns_names), request.valid_days or 90
        )
        ca = await self.store.ca()
        return pb.IssuedCert(
            info=_cert_info(info),
            cert_pem=pair.cert_pem.decode(),
            key_pem=pair.key_pem.decode(),
            ca_pem=ca.cert_pem.decode(),
        )

    @rpc(READ)
    async def ListCerts(self, request: Any, context: Any, who: Principal) -> pb.CertList:
        return pb.CertList(certs=[_cert_info(c) for c in await self.store.certs()])

    @rpc(WRITE)
    async def CreateToken(self, request: Any, context: Any, who: Principal) -> pb.CreatedToken:
        token, record = await self.store.create_token(
            who.actor, request.role or "admin", request.description
        )
        return pb.CreatedToken(info=_token_info(record), token=str(token))

    @rpc(READ)
    async def ListTokens(self, request: Any, context: Any, who: Principal) -> pb.TokenList:
        return pb.TokenList(tokens=[_token_info(t) for t in await self.store.token_list()])

    @rpc(WRITE)
    async def RevokeToken(self, request: Any, context: Any, who: Principal) -> pb.Empty:
        await self.store.revoke_token(who.actor, request.id)
        return pb.Empty()

    @rpc(READ)
    async def VerifyAudit(self, request: Any, context: Any, who: Principal) -> Any:
        check = await self.store.verify_audit()
        return pb.AuditVerification(
            ok=check.ok, events=check.events, first_bad_seq=check.first_bad_seq, reason=check.reason
        )

    async def Audit(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.AuditEvent]:
        try:
            await self.authorize(context, READ)
            since = _parse_time(request.since, "--since")
            until = _parse_time(request.until, "--until")
            types = {t.upper() for t in request.types}

            def wanted(e: dict[str, Any]) -> bool:
                at = dt.datetime.fromisoformat(e["at"])
                return (
                    (not types or e["type"] in types)
                    and (since is None or at >= since)
                    and (until is None or at < until)
                )

            events, revision = await self.store.audit_events()
            for event in events:
                if wanted(event):
                    yield audit_event(event)
            if request.follow:
                async for event in self.store.follow_audit(revision):
                    if wanted(event):
                        yield audit_event(event)
        except JacoError as exc:
            await context.abort(grpc.StatusCode[grpc_code_name(exc)], exc.message)

    @rpc(WRITE)
    async def IssueJoinToken(self, request: Any, context: Any, who: Principal) -> pb.JoinToken:
        token, expires = await self.store.issue_join_token(who.actor, request.ttl_seconds or 3600)
        return pb.JoinToken(token=str(token), expires_at=expires)

    async def Join(self, request: Any, context: grpc.aio.ServicerContext) -> pb.JoinResponse:
        try:
            return await self._join(request)
        except JacoError as exc:
            await context.abort(grpc.StatusCode[grpc_code_name(exc)], exc.message)
            raise  # unreachable: abort raises

    async def Backup(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.BackupChunk]:
        try:
            who = await self.authorize(context, WRITE)
            meta: dict[str, Any] = {}
            async with (
                self.node.backup_lock,
                aclosing(stream_snapshot(self.store, self.node.data.path / "backup-tmp")) as parts,
            ):
                async for part in parts:
                    if isinstance(part, bytes):
                        yield pb.BackupChunk(data=part)
                    elif isinstance(part, Announce):
                        yield pb.BackupChunk(snapshot_size=part.size)
                    else:
                        meta = part
                        yield pb.BackupChunk(meta_json=json.dumps(meta, sort_keys=True))
                await self.store.record(
                    who.actor,
                    "BACKUP_TAKEN",
                    snapshot_index=meta["snapshot_index"],
                    snapshot_sha256=meta["snapshot_sha256"],
                    snapshot_size=meta["snapshot_size"],
                    served_by=self.node.config.name,
                )
                log.info("backup at index %s sent", meta["snapshot_index"])
        except JacoError as exc:
            await context.abort(grpc.StatusCode[grpc_code_name(exc)], exc.message)

    async def _add_learner(self, peer_url: str) -> tuple[int, list[Any]]:
        """etcd refuses membership changes until every voter has been connected for 5 s
        (strict reconfig check), e.g. right after a promotion: wait that out."""
        deadline = asyncio.get_running_loop().time() + JOIN_WAIT
        while True:
            try:
                return await self.node.etcd.add_learner(peer_url)
            except JacoError as exc:
                transient = "unhealthy cluster" in exc.message or "not enough" in exc.message
                if not transient or asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(0.5)

    async def _join(self, request: Any) -> pb.JoinResponse:
        if self.node.is_learner:
            raise Unavailable("this node is still joining; join through a ready node")
        name = check_name("node", request.name)
        peer = urlsplit(request.peer_url)
        if peer.scheme != "https" or not peer.hostname or not peer.port:
            raise InvalidArgument(f"invalid peer URL {request.peer_url!r}: use https://HOST:PORT")
        api_host = _host(request.api_address)
        if not api_host:
            raise InvalidArgument(f"invalid API address {request.api_address!r}: use HOST:PORT")
        hosts = pki.node_hosts(name, api_host, peer.hostname)
        ca = await self.store.ca()
        cert_pem = pki.sign_csr(ca, request.csr_pem.encode(), name, hosts)
        await self.store.check_join(request.token, name)
        member_id, members = await self._add_learner(request.peer_url)
        node = {
            "name": name,
            "api_address": request.api_address,
            "peer_url": request.peer_url,
            "member_id": f"{member_id:x}",
            "voter": False,
            "joined_at": now(),
        }
        try:
            await self.store.finish_join(request.token, node)
        except JacoError:
            # The token was used concurrently (or expired meanwhile): undo the member.
            await self.node.etcd.remove_member(member_id)
            raise
        names = {
            int(n["member_id"], 16): n["name"]
            for n in await self.store.nodes()
            if n.get("member_id")
        }
        initial = ",".join(f"{m.name or names.get(m.id, name)}={m.peer_urls[0]}" for m in members)
        cluster = await self.store.cluster()
        log.info("node %s joins as etcd learner %x", name, member_id)
        return pb.JoinResponse(
            cluster_id=cluster["cluster_id"],
            ca_pem=ca.cert_pem.decode(),
            cert_pem=cert_pem.decode(),
            initial_cluster=initial,
            member_id=f"{member_id:x}",
        )
