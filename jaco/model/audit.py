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
    anchors_checked: int = 0


@dataclass(frozen=True)
class Anchor:
    """An audit head recorded outside the cluster (a backup's meta.json, the catalog)."""

    seq: int
    hash: str
    source: str = ""


def parse_event(raw: bytes) -> dict[str, Any] | None:
    """A stored event, or None if it is not a JSON object (damage, or tampering)."""
    try:
        event = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return event if isinstance(event, dict) else None


def verify_chain(
    events: Iterable[dict[str, Any] | None],
    head: dict[str, Any] | None,
    anchors: Iterable[Anchor] = (),
) -> ChainCheck:
    """Check every event's hash, its link to the previous one, numbering and the head; then
    that the chain still passes through every anchor (same event number, same hash), so a
    history rewritten or cut short after an anchor was recorded is caught even when every
    hash in the cluster was recomputed to match."""
    prev_hash, expected_seq, count = GENESIS_HASH, 1, 0
    hashes: dict[int, str] = {}
    for event in events:
        if event is None:
            return ChainCheck(False, count, expected_seq, "it is not a valid JSON event")
        seq = event.get("seq")
        if seq != expected_seq:
            return ChainCheck(False, count, expected_seq, f"event {expected_seq} is missing")
        if event.get("prev_hash") != prev_hash:
            return ChainCheck(False, count, seq, "does not link to the previous event")
        if event_hash(event) != event.get("hash"):
            return ChainCheck(False, count, seq, "its content does not match its hash")
        prev_hash, expected_seq, count = event["hash"], expected_seq + 1, count + 1
        hashes[seq] = prev_hash
    if head is not None and (head.get("seq") != count or head.get("hash") != prev_hash):
        return ChainCheck(False, count, count + 1, "the log was cut short (head points further)")
    checked = 0
    for anchor in anchors:
        checked += 1
        where = f" (recorded in {anchor.source})" if anchor.source else ""
        if anchor.seq > count:
            return ChainCheck(
                False,
                count,
                count + 1,
                f"the log ends at event {count}, before event {anchor.seq} of an anchor{where}: "
                "history was removed",
                checked,
            )
        if anchor.seq and hashes.get(anchor.seq) != anchor.hash:
            return ChainCheck(
                False,
                count,
                anchor.seq,
                f"its hash is not the one an anchor recorded{where}: history was rewritten",
                checked,
            )
    return ChainCheck(True, count, anchors_checked=checked)
