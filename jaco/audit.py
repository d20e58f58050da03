"""The audit log's hash chain.

Each event carries the hash of the one before it and its own hash over a canonical JSON
encoding, so altering, removing or reordering any stored event breaks the chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

GENESIS_HASH = "0" * 64


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def event_hash(event: dict[str, Any]) -> str:
    body = {k: v for k, v in event.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


def make_event(
    seq: int, prev_hash: str, type_: str, actor: str, at: str, detail: dict[str, Any]
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "schema": 1,
        "seq": seq,
        "type": type_,
        "at": at,
        "actor": actor,
        "detail": detail,
        "prev_hash": prev_hash,
    }
    event["hash"] = event_hash(event)
    return event


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    events: int
    first_bad_seq: int = 0
    reason: str = ""


def verify_chain(events: Iterable[dict[str, Any]], head: dict[str, Any] | None) -> ChainCheck:
    """Check every event's hash, its link to the previous one, numbering and the head."""
    prev_hash, expected_seq, count = GENESIS_HASH, 1, 0
    for event in events:
        seq = event.get("seq")
        if seq != expected_seq:
            return ChainCheck(False, count, expected_seq, f"event {expected_seq} is missing")
        if event.get("prev_hash") != prev_hash:
            return ChainCheck(False, count, seq, "does not link to the previous event")
        if event_hash(event) != event.get("hash"):
            return ChainCheck(False, count, seq, "its content does not match its hash")
        prev_hash, expected_seq, count = event["hash"], expected_seq + 1, count + 1
    if head is not None and (head.get("seq") != count or head.get("hash") != prev_hash):
        return ChainCheck(False, count, count + 1, "the log was cut short (head points further)")
    return ChainCheck(True, count)
