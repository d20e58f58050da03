"""The transaction engine under every mutation of the cluster state.

A mutation reads a consistent view at one revision, computes its writes and its audit
events, and commits them in one etcd transaction guarded by the audit head's revision: since
every mutation moves the head, concurrent mutations serialise (the loser retries on fresh
state) and the audit log can never disagree with the state it describes.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from jaco.errors import Conflict, NotFound
from jaco.model import audit, pki
from jaco.model.etcd import Etcd, cmp_mod_revision, op_delete, op_put
from jaco.model.keys import K_CA, K_CLUSTER, K_HEAD, decode, encode, event_key, now

MAX_ATTEMPTS = 60

T = TypeVar("T")


class View:
    """Reads of the whole state at one store revision."""

    def __init__(self, etcd: Etcd, revision: int) -> None:
        self.etcd = etcd
        self.revision = revision

    async def get(self, key: str) -> dict[str, Any] | None:
        kv, _ = await self.etcd.get(key, revision=self.revision)
        return decode(kv) if kv else None

    async def keys(self, prefix: str) -> list[str]:
        """The keys under `prefix`, without reading their records."""
        return await self.etcd.keys(prefix, self.revision)

    async def list(self, prefix: str) -> list[dict[str, Any]]:
        kvs = await self.etcd.get_prefix(prefix, revision=self.revision)
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
        if type_ not in audit.EVENT_TYPES:  # a programming error: list it there
            raise ValueError(f"{type_} is not in jaco.model.audit.EVENT_TYPES")
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


class Engine:
    """The state model over one etcd client: views, mutations, the cluster's identity."""

    def __init__(self, etcd: Etcd) -> None:
        self.etcd = etcd
        self._ca: pki.KeyPair | None = None
        self._ca_fingerprint: str | None = None

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

    async def record(self, actor: str, type_: str, **detail: Any) -> None:
        """An audit event with no other change (a backup taken, a restore completed)."""

        async def fn(view: View, change: Change) -> None:
            change.audit(type_, **detail)

        await self.mutate(actor, fn)
