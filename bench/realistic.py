"""The realistic data set: many small JSON records, as a long-lived jaco cluster holds them.

A real cluster's state is not 48 KiB random blobs but small JSON records: deployments,
replicas, routes, tokens, issued certificates and, above all, the audit log. `fill` writes such
records straight into etcd as jaco records (the API would take hours for 10⁶ keys), in
transactions of about a thousand puts:

- 60 % audit events, a real hash chain continuing from the cluster's head (and the head moved
  to its end, so `jaco audit verify` passes);
- 15 % deployments, 15 % routes, 7 % tokens, 3 % issued certificates, about 250 bytes each;
- history as a live store has it: 5 % of the records overwritten once, 1 % deleted, and
  heartbeats under alive/ (left out of the state digest) rewritten many times.

Values are deterministic (seeded), JSON, compressing about tenfold like real state.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

from infra.localcluster import Node

PER_TXN = 1000
TABLES = (("deployments", 15), ("routes", 15), ("tokens", 7), ("certs/issued", 3))
IMAGES = ("registry.local/team-{}/api", "registry.local/team-{}/worker", "nginx", "redis")


def _name(table: str, i: int) -> str:
    return f"{table.split('/')[-1][:3]}-{i:08d}"


def _key(table: str, i: int) -> str:
    """Where jaco keeps the record: deployments and routes under their names (`Status` pages
    by the name), tokens and certificates under a number standing for their id."""
    from jaco.model.keys import ROOT

    return f"{ROOT}{table}/{_name(table, i) if table in ('deployments', 'routes') else f'{i:08d}'}"


def _record(table: str, i: int, rng: random.Random, version: int = 1) -> dict[str, Any]:
    name = _name(table, i)
    at = f"2026-{1 + i % 12:02d}-{1 + i % 28:02d}T{i % 24:02d}:{i % 60:02d}:{i % 59:02d}.000+00:00"
    if table == "deployments":
        return {
            "schema": 1,
            "name": name,
            "image": IMAGES[i % 4].format(i % 97) + f":1.{version}.{i % 31}",
            "replicas": 1 + i % 5,
            "env": {"LOG_LEVEL": rng.choice(("info", "debug")), "REGION": f"r{i % 7}"},
            "created_at": at,
            "updated_at": at,
        }
    if table == "routes":
        return {
            "schema": 1,
            "name": name,
            "host": f"svc-{i % 5000}.apps.example.internal",
            "path": f"/api/v{version}/{name}",
            "deployment": f"dep-{i:08d}",
            "port": 8000 + i % 100,
            "created_at": at,
        }
    if table == "tokens":
        return {
            "schema": 1,
            "id": f"{rng.getrandbits(64):016x}",
            "role": ("viewer", "operator", "admin")[i % 3],
            "description": f"ci pipeline {i % 300} of team {i % 97}",
            "hash": f"{rng.getrandbits(256):064x}",
            "created_at": at,
            "revoked": version > 1,
        }
    return {
        "schema": 1,
        "serial": f"{rng.getrandbits(128):032x}",
        "common_name": f"{name}.svc.cluster.internal",
        "dns_names": [f"{name}.svc", f"{name}.svc.cluster.internal"],
        "not_after": "2027-06-01T00:00:00+00:00",
        "issued_at": at,
    }


def plan(keys: int) -> dict[str, int]:
    """How many live records of each kind `keys` small records make."""
    tables = {t: keys * share // 100 for t, share in TABLES}
    tables["audit/events"] = keys - sum(tables.values())
    return tables


async def fill(node: Node, keys: int, seed: int = 16) -> dict[str, Any]:
    """Write `keys` live small records (plus history) into the node's etcd as jaco records."""
    from jaco.model import audit
    from jaco.model.etcd import Etcd, op_delete, op_put
    from jaco.model.keys import K_HEAD, ROOT, decode, encode, event_key, now
    from jaco.node.config import DataDir

    rng = random.Random(seed)
    etcd = Etcd(DataDir(node.data_dir).etcd_socket, timeout=120)
    gate = asyncio.Semaphore(4)
    pending: list[Any] = []
    tasks: list[asyncio.Task[Any]] = []
    puts = deletes = 0

    async def send(ops: list[Any]) -> None:
        async with gate:
            await etcd.txn([], ops)

    def put(key: str, value: bytes) -> None:
        nonlocal puts
        puts += 1
        pending.append(op_put(key, value))
        flush()

    def flush(force: bool = False) -> None:
        if pending and (force or len(pending) >= PER_TXN):
            tasks.append(asyncio.ensure_future(send(list(pending))))
            pending.clear()

    async def drain() -> None:
        flush(force=True)
        await asyncio.gather(*tasks)
        tasks.clear()

    try:
        counts = plan(keys)
        head_kv, _ = await etcd.get(K_HEAD)
        head = decode(head_kv) if head_kv else {"seq": 0, "hash": audit.GENESIS_HASH}
        seq, prev = int(head["seq"]), str(head["hash"])
        for table, n in counts.items():
            if table == "audit/events":
                at = now()
                for i in range(n):
                    seq += 1
                    detail = {"name": f"dep-{i % 50000:08d}", "replicas": 1 + i % 5}
                    kind = ("DEPLOYMENT_CREATED", "DEPLOYMENT_SCALED", "ROUTE_ADDED")[i % 3]
                    event = audit.make_event(seq, prev, kind, f"token:{i % 300:04x}", at, detail)
                    prev = event["hash"]
                    put(event_key(seq), json.dumps(event, sort_keys=True).encode())
                    if len(tasks) > 16:
                        await drain()
                continue
            for i in range(n):
                put(_key(table, i), encode(_record(table, i, rng)))
                if len(tasks) > 16:
                    await drain()
        await drain()
        # History: overwrites and deletes of records written above, heartbeats rewritten.
        for table, n in counts.items():
            if table == "audit/events":
                continue
            for i in range(0, n, 20):
                put(_key(table, i), encode(_record(table, i, rng, version=2)))
            for i in range(7, n, 100):
                deletes += 1
                pending.append(op_delete(_key(table, i)))
                flush()
            await drain()
        for beat in range(max(1, keys // 1000)):  # a key appears once per transaction
            for node_no in range(5):
                put(f"{ROOT}alive/node-{node_no}", encode({"at": now(), "beat": beat}))
            flush(force=True)
            if len(tasks) > 16:
                await drain()
        await drain()
        await etcd.txn([], [op_put(K_HEAD, encode({"seq": seq, "hash": prev}))])
    finally:
        await etcd.close()
    live = sum(counts.values()) - deletes
    return {"small_keys": live, "puts": puts, "deletes": deletes, "audit_events": seq}
