"""The live cluster's history, as a point-in-time drill compares with it: which cluster
answers, and its state digest at a past revision that etcd still holds."""

from __future__ import annotations

import random

from jaco.client.connection import WHOLE_STORE_TIMEOUT, Client
from jaco.errors import Compacted
from jaco.v1 import jaco_pb2 as pb


def cluster_id(client: Client) -> str:
    return str(client.call("Status", pb.StatusRequest(limit=1)).cluster_id)


def digest_at(client: Client, revision: int) -> str:
    """The state digest at `revision`, read from etcd's history (`Compacted` if it is gone)."""
    request = pb.StateDigestRequest(revision=revision)
    return str(client.call("StateDigest", request, timeout=WHOLE_STORE_TIMEOUT).state_digest)


def random_point(client: Client, low: int, high: int, rng: random.Random) -> tuple[int, str] | None:
    """A revision from `low` to `high` that etcd still holds, at random, and the digest there;
    None if compaction took them all. Compaction removes a prefix of the history: a revision
    found compacted moves the low end past it."""
    while low <= high:
        revision = rng.randint(low, high)
        try:
            return revision, digest_at(client, revision)
        except Compacted:
            low = revision + 1
    return None
