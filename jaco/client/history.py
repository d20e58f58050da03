"""The live cluster's history, as a point-in-time drill compares with it: which cluster
answers, and its state digest at a past revision that etcd still holds."""

from __future__ import annotations

import random

from jaco.client.connection import WHOLE_STORE_TIMEOUT, Client
from jaco.errors import Compacted, JacoError
from jaco.v1 import jaco_pb2 as pb


def cluster_id(client: Client) -> str:
    return str(client.call("Status", pb.StatusRequest(limit=1)).cluster_id)


def state_at(client: Client, revision: int, version: int = 1) -> pb.StateDigestResponse:
    """The state digest of `version` (`jaco.model.digest`) at `revision` (0: the latest), read
    from etcd's history (`Compacted` if it is gone). A server that answers with another
    version than asked (an older jacod answers 0 to anything: it knows only 1) is refused:
    digests of two versions never match, and a drill comparing them would fail for no fault
    of the backup."""
    request = pb.StateDigestRequest(revision=revision, digest_version=version)
    state = client.call("StateDigest", request, timeout=WHOLE_STORE_TIMEOUT)
    answered = state.digest_version or 1
    if answered != version:
        raise JacoError(
            f"the cluster's jacod computed state digest version {answered}, not {version}: "
            "it is older than this jaco; upgrade it"
        )
    return state


def digest_at(client: Client, revision: int, version: int = 1) -> str:
    """The state digest of `version` at `revision` (`Compacted` if it is gone)."""
    return str(state_at(client, revision, version).state_digest)


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
