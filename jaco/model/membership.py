"""The cluster's nodes, its creation, joins, restores, and the audit log's reads."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from jaco.errors import AlreadyExists, Conflict, NotFound
from jaco.model import audit, pki, scheduler, tokens
from jaco.model.access import Access, name_taken, token_record
from jaco.model.digest import digest_for
from jaco.model.engine import Change, View
from jaco.model.etcd_types import Revision
from jaco.model.keys import (
    K_CA,
    K_CLUSTER,
    K_HEAD,
    P_ALIVE,
    P_EVENTS,
    P_JOIN,
    P_NODES,
    P_SCHEDULER,
    P_TOKENS,
    ROOT,
    decode,
    now,
)


@dataclass(frozen=True)
class StateAt:
    """What the store held at one revision, in the terms of a backup's meta.json."""

    revision: int
    counts: dict[str, int]
    state_digest: str
    audit_head: dict[str, Any] | None
    digest_version: int = 1


class Membership(Access):
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
            change.put(P_TOKENS + first_token.id, token_record(first_token, "admin", "initial"))
            change.audit("CLUSTER_INITIALIZED", cluster_id=cluster_id, node=node["name"])
            change.audit("TOKEN_CREATED", id=first_token.id, role="admin")

        await self.mutate(f"node:{node['name']}", fn)

    async def finish_join(self, text: str, node: dict[str, Any]) -> None:
        """Consume the join token and record the node, atomically: a token admits one node."""
        token = tokens.parse_token(text, tokens.JOIN)

        async def fn(view: View, change: Change) -> None:
            await self._join_token_record(view, token)
            if await view.get(P_NODES + node["name"]) is not None:
                raise name_taken(node["name"])
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

    async def remove_node(
        self, actor: str, name: str, member_removed: bool, member_id: str = ""
    ) -> int:
        """Forget a node whose etcd member is gone: its record and liveness key, and the
        replicas placed on it placed again on the voters still alive (the least loaded
        first), in one transaction. Returns how many replicas moved. A name with no record
        but replicas still placed on it is a node of the cluster before a restore that has not
        rejoined under its name (the restore keeps placements as they were): its replicas move
        the same way. `member_id` is the one the caller found on the record before it removed
        the member ("": no record): a record that changed since (a join under that name
        finishing) is not removed, lest its new member be left without one."""
        alive = await self.alive()

        async def fn(view: View, change: Change) -> int:
            record = await view.get(P_NODES + name) or {}
            placements = await view.list(P_SCHEDULER)
            orphans = [p for p in placements if p.get("node") == name]
            if not record and not orphans:
                raise NotFound(f"no node named {name}")
            if record.get("member_id", "") != member_id:
                raise Conflict(
                    f"node {name} changed while it was being removed (a join under its name "
                    "finished): run the removal again"
                )
            ready = scheduler.ready_nodes(await view.list(P_NODES), set(alive), leaving=name)
            if orphans:
                load = Counter(p["node"] for p in placements if p.get("node") != name)
                for placement, target in zip(
                    orphans, scheduler.place(ready, load, len(orphans)), strict=True
                ):
                    placement.pop("schema", None)
                    moved = {**placement, "node": target, "placed_at": now()}
                    change.put(P_SCHEDULER + placement["replica"], moved)
            change.delete(P_NODES + name)
            change.delete(P_ALIVE + name)
            change.audit(
                "NODE_REMOVED",
                name=name,
                member_id=record.get("member_id"),
                member_removed=member_removed,
                replicas_moved=len(orphans),
            )
            return len(orphans)

        return await self.mutate(actor, fn)

    async def nodes(self) -> list[dict[str, Any]]:
        return await (await self.view()).list(P_NODES)

    async def alive(self) -> dict[str, dict[str, Any]]:
        kvs = await self.etcd.get_prefix(P_ALIVE)
        return {kv.key[len(P_ALIVE) :]: decode(kv) for kv in kvs}

    # -- audit ---------------------------------------------------------------------------

    async def audit_events(self) -> tuple[AsyncIterator[dict[str, Any]], int]:
        """Every stored event as a listing shows it, read a page at a time at one revision, and
        that revision. (The log grows to millions of events: read in one response, 6·10⁵ of
        them passed the 64 MiB the etcd client accepts.)"""
        _, revision = await self.etcd.get(K_HEAD)

        async def events() -> AsyncIterator[dict[str, Any]]:
            async for kv in self.etcd.iter_prefix(P_EVENTS, revision, page=audit.READ_PAGE):
                yield audit.listed_event(kv.key[len(P_EVENTS) :], kv.value)

        return events(), revision

    async def follow_audit(self, after_revision: int) -> AsyncIterator[dict[str, Any]]:
        async for event in self.etcd.watch_prefix(P_EVENTS, after_revision + 1):
            if event.kind == "put":
                yield audit.listed_event(event.kv.key[len(P_EVENTS) :], event.kv.value)

    async def changes(self, from_revision: int) -> AsyncGenerator[Revision, None]:
        """Every change to the state from `from_revision` on, revision by revision, and
        progress; liveness keys (heartbeats, not state) are left out."""
        async for rev in self.etcd.watch_revisions(ROOT, from_revision):
            kept = tuple(c for c in rev.changes if not c.kv.key.startswith(P_ALIVE))
            if kept or not rev.changes:
                yield Revision(rev.revision, kept)

    async def verify_audit(
        self, anchors: Iterable[audit.Anchor] = (), find_types: Iterable[str] = ()
    ) -> audit.ChainCheck:
        view = await self.view()
        head = await view.get(K_HEAD)
        stored = self.etcd.iter_prefix(P_EVENTS, view.revision, page=audit.READ_PAGE)
        values = (kv.value async for kv in stored)
        return await audit.verify_stored(values, head, anchors, find_types)

    async def state_digest(self, revision: int = 0, version: int = 1) -> StateAt:
        """Per-table record counts, a SHA-256 over every record and the audit head, at one
        revision (0: the latest), the digest of `version` (`jaco.model.digest`).

        Liveness keys are left out: they are heartbeats, not state. Computed the same way on
        the backed-up cluster and on the restored store, it proves the restore is exact.
        """
        digest = digest_for(version)
        head_kv, read_at = await self.etcd.get(K_HEAD, revision=revision)
        revision = revision or read_at
        async for page in self.etcd.record_pages(ROOT, revision):
            digest.add_page(page)
        counts, state_digest = digest.result()
        head = decode(head_kv) if head_kv else None
        return StateAt(revision, counts, state_digest, head, digest.version)

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
                **{k: marker[k] for k in ("target_revision", "target_at") if k in marker},
            )
            return True

        return await self.mutate(f"node:{node['name']}", fn)
