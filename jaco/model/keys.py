"""Where each record lives in etcd, and how records are encoded.

All state lives under /jaco/v1/, one key per record, JSON values with a schema version.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jaco.model.etcd_types import KV

ROOT = "/jaco/v1/"
SCHEMA = 1

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


def new_cluster_id() -> str:
    return uuid.uuid4().hex[:16]
