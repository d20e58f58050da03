"""The cluster state model (the "raft FSM"): every record jaco keeps, and every mutation.

All state lives in etcd under /jaco/v1/, one key per record, JSON values with a schema
version. A mutation reads a consistent view at one revision, computes its writes and its
audit event, and commits them in one etcd transaction guarded by the audit head's
revision: since every mutation moves the head, concurrent mutations serialise (the loser
retries on fresh state) and the audit log can never disagree with the state it describes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from jaco import audit, ipam, pki, scheduler, tokens
from jaco.config import check_name
from jaco.errors import (
    AlreadyExists,
    Conflict,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from jaco.etcd import KV, Etcd, cmp_mod_revision, op_delete, op_put

ROOT = "/jaco/v1/"
SCHEMA = 1
MAX_REPLICAS = 100
MAX_ATTEMPTS = 60
ROLES = ("admin", "viewer")
DEFAULT_SUBNET = "10.42.0.0/16"

K_CLUSTER = ROOT + "cluster"
K_CA = ROOT + "certs/ca"
K_HEAD = ROOT + "audit/head"
P_EVENTS = ROOT + "audit/events/"
P_NODES = ROOT + "nodes/"
P_ALIVE = ROOT + "alive/"
P_DEPLOYMENTS = ROOT + "deployments/"
P_REPLICAS = ROOT + "replicas/"
P_SCHEDULER = ROOT + "scheduler/"
P_IPAM = ROOT + "ipam/"
P_ROUTES = ROOT + "routes/"
P_ISSUED = ROOT + "certs/issued/"
P_TOKENS = ROOT + "tokens/"
P_JOIN = ROOT + "join_tokens/"
B_ROOT, B_ALIVE = ROOT.encode(), P_ALIVE.encode()

T = TypeVar("T")


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def encode(record: dict[str, Any]) -> bytes:
    return json.dumps({"schema": SCHEMA, **record}, sort_keys=True).encode()


def decode(kv: KV) -> dict[str, Any]:
    return dict(json.loads(kv.value))


def event_key(seq: int) -> str:
    return f"{P_EVENTS}{seq:012d}"


def replica_id(deployment: str, index: int) -> str:
    return f"{deployment}-{index}"


def table_of(key: str) -> str:
    """The table a key belongs to (first path element under the root)."""
    return key[len(ROOT) :].split("/", 1)[0]


class StateDigest:
    """Per-table counts and a SHA-256 over records fed in key order, liveness keys left out.

    The one definition of the state digest: the live store (`Store.state_digest`) and a
    snapshot file (`jaco.snapshot.read_snapshot_state`) both feed it.
    """

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._counts: Counter[str] = Counter()

    def add(self, key: bytes, value: bytes) -> None:
        if not key.startswith(B_ROOT) or key.startswith(B_ALIVE):
            return
        self._sha.update(len(key).to_bytes(4, "big") + key)
        self._sha.update(len(value).to_bytes(8, "big"))
        self._sha.update(value)
        self._counts[table_of(key.decode())] += 1

    def result(self) -> tuple[dict[str, int], str]:
        return dict(sorted(self._counts.items())), self._sha.hexdigest()


class View:
    """Reads of the whole state at one store revision."""

    def __init__(self, etcd: Etcd, revision: int) -> None:
        self.etcd = etcd
        self.revision = revision

    async def get(self, key: str) -> dict[str, Any] | None:
        kv, _ = await self.etcd.get(key, revision=self.revision)
        return decode(kv) if kv else None

    async def list(self, prefix: str) -> list[dict[str, Any]]:
        kvs, _ = await self.etcd.get_prefix(prefix, revision=self.revision)
        return [decode(kv) for kv in kvs]


@dataclass
class Change:
    """The writes and audit events of one mutation."""

    puts: dict[str, tuple[dict[str, Any], int]] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def put(self, key: str, record: dict[str, Any], lease: int = 0) -> None:
        self.puts[key] = (record, lease)

    def delete(self, key: str) -> None:
        self.deletes.append(key)

    def audit(self, type_: str, **detail: Any) -> None:
        self.events.append((type_, detail))


Mutation = Callable[[View, Change], Awaitable[T]]


@dataclass(frozen=True)
class Principal:
    """Who is calling: an operator token's id and role."""

    token_id: str
    role: str

    @property
    def actor(self) -> str:
        return f"token:{self.token_id}"


class Store:
    """The state model over one etcd client."""

    def __init__(self, etcd: Etcd) -> None:
        self.etcd = etcd
        self._ca: pki.KeyPair | None = None
        self._ca_fingerprint: str | None = None

    # -- the mutation engine -------------------------------------------------------------

    async def view(self) -> View:
        _, revision = await self.etcd.get(K_HEAD)
        return View(self.etcd, revision)

    async def mutate(self, actor: str, fn: Mutation[T]) -> T:
        for attempt in range(MAX_ATTEMPTS):
            head_kv, revision = await self.etcd.get(K_HEAD)
            head: dict[str, Any] = (
                decode(head_kv) if head_kv else {"seq": 0, "hash": audit.GENESIS_HASH}
            )
            change = Change()
            result = await fn(View(self.etcd, revision), change)
            ops = [op_put(k, encode(rec), lease) for k, (rec, lease) in change.puts.items()]
            ops += [op_delete(k) for k in change.deletes]
            seq: int = head["seq"]
            prev: str = head["hash"]
            at = now()
            for type_, detail in change.events:
                seq += 1
                event = audit.make_event(seq, prev, type_, actor, at, detail)
                prev = event["hash"]
                ops.append(op_put(event_key(seq), json.dumps(event, sort_keys=True).encode()))
            if change.events:
                ops.append(op_put(K_HEAD, encode({"seq": seq, "hash": prev})))
            guard = cmp_mod_revision(K_HEAD, head_kv.mod_revision if head_kv else 0)
            ok, _ = await self.etcd.txn([guard], ops)
            if ok:
                return result
            await asyncio.sleep(min(0.5, 0.005 * 2 ** min(attempt, 7)) * random.random())
        raise Conflict("the cluster state kept changing under this operation; try again")

    # -- identity ------------------------------------------------------------------------

    async def ca(self) -> pki.KeyPair:
        if self._ca is None:
            kv, _ = await self.etcd.get(K_CA)
            if kv is None:
                raise NotFound("the cluster CA is missing from the store")
            record = decode(kv)
            self._ca = pki.KeyPair(record["cert_pem"].encode(), record["key_pem"].encode())
        return self._ca

    async def ca_fingerprint(self) -> str:
        if self._ca_fingerprint is None:
            self._ca_fingerprint = pki.fingerprint((await self.ca()).cert_pem)
        return self._ca_fingerprint

    async def cluster(self) -> dict[str, Any]:
        kv, _ = await self.etcd.get(K_CLUSTER)
        if kv is None:
            raise NotFound("this store holds no cluster identity")
        return decode(kv)

    # -- bootstrap -----------------------------------------------------------------------

    async def bootstrap(
        self,
        cluster_id: str,
        ca: pki.KeyPair,
        node: dict[str, Any],
        first_token: tokens.Token,
        subnet: str,
    ) -> None:
        async def fn(view: View, change: Change) -> None:
            if await view.get(K_CLUSTER) is not None:
                raise AlreadyExists("this store already holds a cluster")
            change.put(K_CLUSTER, {"cluster_id": cluster_id, "created_at": now(), "subnet": subnet})
            change.put(
                K_CA,
                {
                    "cert_pem": ca.cert_pem.decode(),
                    "key_pem": ca.key_pem.decode(),
                    "fingerprint": pki.fingerprint(ca.cert_pem),
                },
            )
            change.put(P_NODES + node["name"], node)
            change.put(P_TOKENS + first_token.id, _token_record(first_token, "admin", "initial"))
            change.audit("CLUSTER_INITIALIZED", cluster_id=cluster_id, node=node["name"])
            change.audit("TOKEN_CREATED", id=first_token.id, role="admin")

        await self.mutate(f"node:{node['name']}", fn)

    # -- auth ----------------------------------------------------------------------------

    async def authenticate(self, text: str) -> Principal:
        token = tokens.parse_token(text, tokens.OPERATOR)
        if token.ca_fingerprint != await self.ca_fingerprint():
            raise Unauthenticated("the token belongs to another cluster (its CA does not match)")
        kv, _ = await self.etcd.get(P_TOKENS + token.id)
        record = decode(kv) if kv else None
        if not tokens.matches(token, record["sha256"] if record else None) or record is None:
            raise Unauthenticated("the token is not valid for this cluster")
        if record.get("revoked"):
            raise Unauthenticated(f"the token {token.id} has been revoked")
        return Principal(token.id, record["role"])

    # -- deployments ---------------------------------------------------------------------

    async def _ready_nodes(self, view: View) -> list[str]:
        nodes = [n for n in await view.list(P_NODES) if n.get("voter")]
        alive_kvs, _ = await self.etcd.get_prefix(P_ALIVE)
        alive = {kv.key[len(P_ALIVE) :] for kv in alive_kvs}
        ready = [n["name"] for n in nodes if n["name"] in alive]
        return ready or [n["name"] for n in nodes]

    async def _add_replicas(
        self, view: View, change: Change, deployment: str, first: int, count: int
    ) -> list[dict[str, Any]]:
        cluster = await view.get(K_CLUSTER)
        assert cluster is not None
        taken = [a["ip"] for a in await view.list(P_IPAM)]
        ips = ipam.allocate(cluster["subnet"], taken, count)
        load = Counter(p["node"] for p in await view.list(P_SCHEDULER))
        nodes = scheduler.place(await self._ready_nodes(view), load, count)
        added = []
        for offset, (ip, node) in enumerate(zip(ips, nodes, strict=True)):
            index = first + offset
            rid = replica_id(deployment, index)
            replica = {"id": rid, "deployment": deployment, "index": index, "ip": ip}
            change.put(f"{P_REPLICAS}{deployment}/{index:04d}", replica)
            change.put(P_SCHEDULER + rid, {"replica": rid, "node": node, "placed_at": now()})
            change.put(P_IPAM + ip, {"ip": ip, "replica": rid})
            added.append({**replica, "node": node})
        return added

    async def _drop_replicas(
        self, view: View, change: Change, deployment: str, keep: int
    ) -> list[str]:
        dropped = []
        for replica in await view.list(f"{P_REPLICAS}{deployment}/"):
            if replica["index"] >= keep:
                change.delete(f"{P_REPLICAS}{deployment}/{replica['index']:04d}")
                change.delete(P_SCHEDULER + replica["id"])
                change.delete(P_IPAM + replica["ip"])
                dropped.append(replica["ip"])
        return dropped

    async def deploy(
        self, actor: str, name: str, image: str, replicas: int, env: dict[str, str]
    ) -> None:
        check_name("deployment", name)
        _check_image(image)
        _check_replicas(replicas)

        async def fn(view: View, change: Change) -> None:
            if await view.get(P_DEPLOYMENTS + name) is not None:
                raise AlreadyExists(
                    f"deployment {name} already exists (use `jaco scale` or `jaco rm`)"
                )
            at = now()
            change.put(
                P_DEPLOYMENTS + name,
                {
                    "name": name,
                    "image": image,
                    "replicas": replicas,
                    "env": env,
                    "created_at": at,
                    "updated_at": at,
                },
            )
            placed = await self._add_replicas(view, change, name, 0, replicas)
            change.audit(
                "DEPLOYMENT_CREATED",
                name=name,
                image=image,
                replicas=replicas,
                ips=[r["ip"] for r in placed],
            )

        await self.mutate(actor, fn)

    async def scale(self, actor: str, name: str, replicas: int) -> None:
        _check_replicas(replicas)

        async def fn(view: View, change: Change) -> None:
            dep = await view.get(P_DEPLOYMENTS + name)
            if dep is None:
                raise NotFound(f"no deployment named {name}")
            old = dep["replicas"]
            if replicas > old:
                await self._add_replicas(view, change, name, old, replicas - old)
            elif replicas < old:
                await self._drop_replicas(view, change, name, replicas)
            dep.pop("schema", None)
            change.put(P_DEPLOYMENTS + name, {**dep, "replicas": replicas, "updated_at": now()})
            change.audit("DEPLOYMENT_SCALED", name=name, replicas_from=old, replicas_to=replicas)

        await self.mutate(actor, fn)

    async def remove_deployment(self, actor: str, name: str) -> None:
        async def fn(view: View, change: Change) -> None:
            if await view.get(P_DEPLOYMENTS + name) is None:
                raise NotFound(f"no deployment named {name}")
            routed = [r["name"] for r in await view.list(P_ROUTES) if r["deployment"] == name]
            if routed:
                raise Conflict(
                    f"deployment {name} is the target of route(s) {', '.join(routed)}; "
                    "remove them first (`jaco route rm`)"
                )
            released = await self._drop_replicas(view, change, name, 0)
            change.delete(P_DEPLOYMENTS + name)
            change.audit("DEPLOYMENT_REMOVED", name=name, released_ips=released)

        await self.mutate(actor, fn)

    async def deployments(self, view: View | None = None) -> list[dict[str, Any]]:
        view = view or await self.view()
        placements = {p["replica"]: p["node"] for p in await view.list(P_SCHEDULER)}
        by_dep: dict[str, list[dict[str, Any]]] = {}
        for replica in await view.list(P_REPLICAS):
            node = placements.get(replica["id"], "")
            by_dep.setdefault(replica["deployment"], []).append({**replica, "node": node})
        deps = await view.list(P_DEPLOYMENTS)
        return [{**d, "placed": by_dep.get(d["name"], [])} for d in deps]

    # -- routes --------------------------------------------------------------------------

    async def add_route(
        self, actor: str, name: str, host: str, path: str, deployment: str, port: int
    ) -> dict[str, Any]:
        check_name("route", name)
        if not host or any(c.isspace() for c in host) or len(host) > 253:
            raise InvalidArgument(f"invalid route host {host!r}")
        if not path.startswith("/"):
            raise InvalidArgument(f"invalid route path {path!r}: it must start with '/'")
        if not 1 <= port <= 65535:
            raise InvalidArgument(f"invalid port {port}: use 1-65535")
        route = {
            "name": name,
            "host": host,
            "path": path,
            "deployment": deployment,
            "port": port,
            "created_at": now(),
        }

        async def fn(view: View, change: Change) -> dict[str, Any]:
            if await view.get(P_DEPLOYMENTS + deployment) is None:
                raise NotFound(f"no deployment named {deployment}")
            if await view.get(P_ROUTES + name) is not None:
                raise AlreadyExists(f"route {name} already exists")
            for other in await view.list(P_ROUTES):
                if (other["host"], other["path"]) == (host, path):
                    raise AlreadyExists(f"route {other['name']} already serves {host}{path}")
            change.put(P_ROUTES + name, route)
            change.audit("ROUTE_ADDED", name=name, host=host, path=path, deployment=deployment)
            return route

        return await self.mutate(actor, fn)

    async def remove_route(self, actor: str, name: str) -> None:
        async def fn(view: View, change: Change) -> None:
            if await view.get(P_ROUTES + name) is None:
                raise NotFound(f"no route named {name}")
            change.delete(P_ROUTES + name)
            change.audit("ROUTE_REMOVED", name=name)

        await self.mutate(actor, fn)

    async def routes(self) -> list[dict[str, Any]]:
        return await (await self.view()).list(P_ROUTES)

    # -- certificates --------------------------------------------------------------------

    async def issue_cert(
        self, actor: str, common_name: str, dns_names: list[str], valid_days: int
    ) -> tuple[dict[str, Any], pki.KeyPair]:
        if not common_name or len(common_name) > 64:
            raise InvalidArgument("a certificate needs a common name of 1-64 characters")
        if not 1 <= valid_days <= pki.NODE_VALID_DAYS:
            raise InvalidArgument(f"valid days must be 1-{pki.NODE_VALID_DAYS}")
        pair = pki.issue(await self.ca(), common_name, dns_names or [common_name], valid_days)
        info: dict[str, Any] = {
            **pki.cert_summary(pair.cert_pem),
            "issued_at": now(),
            "cert_pem": pair.cert_pem.decode(),
        }

        async def fn(view: View, change: Change) -> None:
            change.put(P_ISSUED + info["serial"], info)
            change.audit("CERT_ISSUED", serial=info["serial"], common_name=common_name)

        await self.mutate(actor, fn)
        return info, pair

    async def certs(self) -> list[dict[str, Any]]:
        return await (await self.view()).list(P_ISSUED)

    # -- operator tokens -----------------------------------------------------------------

    async def create_token(
        self, actor: str, role: str, description: str
    ) -> tuple[tokens.Token, dict[str, Any]]:
        if role not in ROLES:
            raise InvalidArgument(f"invalid role {role!r}: use one of {', '.join(ROLES)}")
        token = tokens.new_token(tokens.OPERATOR, await self.ca_fingerprint())
        record = _token_record(token, role, description)

        async def fn(view: View, change: Change) -> None:
            change.put(P_TOKENS + token.id, record)
            change.audit("TOKEN_CREATED", id=token.id, role=role)

        await self.mutate(actor, fn)
        return token, record

    async def revoke_token(self, actor: str, token_id: str) -> None:
        async def fn(view: View, change: Change) -> None:
            record = await view.get(P_TOKENS + token_id)
            if record is None:
                raise NotFound(f"no token with id {token_id}")
            if record.get("revoked"):
                raise Conflict(f"token {token_id} is already revoked")
            active_admins = [
                t
                for t in await view.list(P_TOKENS)
                if t["role"] == "admin" and not t.get("revoked")
            ]
            if record["role"] == "admin" and len(active_admins) == 1:
                raise PermissionDenied(
                    "refusing to revoke the last active admin token: create another first"
                )
            record.pop("schema", None)
            change.put(P_TOKENS + token_id, {**record, "revoked": True, "revoked_at": now()})
            change.audit("TOKEN_REVOKED", id=token_id)

        await self.mutate(actor, fn)

    async def token_list(self) -> list[dict[str, Any]]:
        return await (await self.view()).list(P_TOKENS)

    # -- join tokens and nodes -----------------------------------------------------------

    async def issue_join_token(self, actor: str, ttl: int) -> tuple[tokens.Token, str]:
        if not 1 <= ttl <= 7 * 86400:
            raise InvalidArgument("a join token's time to live must be 1 s to 7 days")
        token = tokens.new_token(tokens.JOIN, await self.ca_fingerprint())
        lease = await self.etcd.lease_grant(ttl)
        expires = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=ttl)).isoformat(
            timespec="seconds"
        )

        async def fn(view: View, change: Change) -> None:
            record = {
                "id": token.id,
                "sha256": token.sha256,
                "created_at": now(),
                "expires_at": expires,
            }
            change.put(P_JOIN + token.id, record, lease=lease)
            change.audit("JOIN_TOKEN_ISSUED", id=token.id, expires_at=expires)

        await self.mutate(actor, fn)
        return token, expires

    async def _join_token_record(self, view: View, token: tokens.Token) -> dict[str, Any]:
        if token.ca_fingerprint != await self.ca_fingerprint():
            raise Unauthenticated("the join token belongs to another cluster")
        record = await view.get(P_JOIN + token.id)
        if not tokens.matches(token, record["sha256"] if record else None) or not record:
            raise Unauthenticated("the join token is unknown, already used or expired")
        if dt.datetime.fromisoformat(record["expires_at"]) <= dt.datetime.now(dt.UTC):
            raise Unauthenticated("the join token has expired")
        return record

    async def check_join(self, text: str, name: str) -> None:
        """Refuse early (before etcd is touched) a bad token or a taken node name."""
        token = tokens.parse_token(text, tokens.JOIN)
        view = await self.view()
        await self._join_token_record(view, token)
        if await view.get(P_NODES + name) is not None:
            raise AlreadyExists(f"a node named {name} is already in the cluster")

    async def finish_join(self, text: str, node: dict[str, Any]) -> None:
        """Consume the join token and record the node, atomically: a token admits one node."""
        token = tokens.parse_token(text, tokens.JOIN)

        async def fn(view: View, change: Change) -> None:
            await self._join_token_record(view, token)
            if await view.get(P_NODES + node["name"]) is not None:
                raise AlreadyExists(f"a node named {node['name']} is already in the cluster")
            change.delete(P_JOIN + token.id)
            change.put(P_NODES + node["name"], node)
            change.audit(
                "NODE_JOINING",
                name=node["name"],
                join_token=token.id,
                address=node["api_address"],
                member_id=node["member_id"],
            )

        await self.mutate(f"node:{node['name']}", fn)

    async def update_node(self, actor: str, name: str, event: str, **fields: Any) -> None:
        async def fn(view: View, change: Change) -> None:
            node = await view.get(P_NODES + name)
            if node is None:
                raise NotFound(f"no node named {name}")
            node.pop("schema", None)
            change.put(P_NODES + name, {**node, **fields})
            change.audit(event, name=name, **fields)

        await self.mutate(actor, fn)

    async def nodes(self) -> list[dict[str, Any]]:
        return await (await self.view()).list(P_NODES)

    async def alive(self) -> dict[str, dict[str, Any]]:
        kvs, _ = await self.etcd.get_prefix(P_ALIVE)
        return {kv.key[len(P_ALIVE) :]: decode(kv) for kv in kvs}

    # -- audit ---------------------------------------------------------------------------

    async def audit_events(self) -> tuple[list[dict[str, Any]], int]:
        kvs, revision = await self.etcd.get_prefix(P_EVENTS)
        return [decode(kv) for kv in kvs], revision

    async def follow_audit(self, after_revision: int) -> AsyncIterator[dict[str, Any]]:
        async for event in self.etcd.watch_prefix(P_EVENTS, after_revision + 1):
            if event.kind == "put":
                yield decode(event.kv)

    async def verify_audit(self) -> audit.ChainCheck:
        view = await self.view()
        head = await view.get(K_HEAD)
        return audit.verify_chain(await view.list(P_EVENTS), head)

    async def state_digest(self, revision: int) -> tuple[dict[str, int], str]:
        """Per-table record counts and a SHA-256 over every record, at one revision.

        Liveness keys are left out: they are heartbeats, not state. Computed the same way on
        the backed-up cluster and on the restored store, it proves the restore is exact.
        """
        digest = StateDigest()
        async for kv in self.etcd.iter_prefix(ROOT, revision):
            digest.add(kv.key.encode(), kv.value)
        return digest.result()

    async def complete_restore(self, node: dict[str, Any], marker: dict[str, Any]) -> bool:
        """First boot after `jaco restore`: this node becomes the only member; once only."""

        async def fn(view: View, change: Change) -> bool:
            cluster = await view.get(K_CLUSTER)
            assert cluster is not None
            if cluster.get("restored_from") == marker["restore_id"]:
                return False
            old = [n["name"] for n in await view.list(P_NODES)]
            for name in old:
                if name != node["name"]:
                    change.delete(P_NODES + name)
            change.put(P_NODES + node["name"], node)
            cluster.pop("schema", None)
            change.put(K_CLUSTER, {**cluster, "restored_from": marker["restore_id"]})
            change.audit(
                "RESTORE_COMPLETED",
                snapshot_index=marker["snapshot_index"],
                taken_at=marker["taken_at"],
                restored_as=node["name"],
                nodes_before=old,
            )
            return True

        return await self.mutate(f"node:{node['name']}", fn)

    async def record(self, actor: str, type_: str, **detail: Any) -> None:
        """An audit event with no other change (a backup taken, a restore completed)."""

        async def fn(view: View, change: Change) -> None:
            change.audit(type_, **detail)

        await self.mutate(actor, fn)


def _token_record(token: tokens.Token, role: str, description: str) -> dict[str, Any]:
    return {
        "id": token.id,
        "sha256": token.sha256,
        "role": role,
        "description": description,
        "created_at": now(),
        "revoked": False,
    }


def _check_image(image: str) -> None:
    if not image or len(image) > 255 or any(c.isspace() for c in image):
        raise InvalidArgument(f"invalid image {image!r}")


def _check_replicas(replicas: int) -> None:
    if not 0 <= replicas <= MAX_REPLICAS:
        raise InvalidArgument(f"replicas must be between 0 and {MAX_REPLICAS}, not {replicas}")


def new_cluster_id() -> str:
    return uuid.uuid4().hex[:16]
