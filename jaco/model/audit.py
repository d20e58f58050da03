"""The audit log's hash chain.

Each event carries the hash of the one before it and its own hash over a canonical JSON
encoding, so altering, removing or reordering any stored event breaks the chain.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import AsyncIterable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from jaco.errors import InvalidArgument

GENESIS_HASH = "0" * 64
# Every event type the cluster records (tests/unit/test_rules.py reads the code for the
# types it writes and compares: a new type cannot be left out of this list).
EVENT_TYPES = (
    "BACKUP_TAKEN",
    "CERT_ISSUED",
    "CLUSTER_INITIALIZED",
    "DEPLOYMENT_CREATED",
    "DEPLOYMENT_REMOVED",
    "DEPLOYMENT_SCALED",
    "JOIN_TOKEN_ISSUED",
    "NODE_JOINING",
    "NODE_PROMOTED",
    "NODE_REMOVED",
    "RESTORE_COMPLETED",
    "ROUTE_ADDED",
    "ROUTE_REMOVED",
    "TOKEN_CREATED",
    "TOKEN_REVOKED",
)
DAMAGED = "DAMAGED"  # how a stored event that is not a well-formed event is listed


def check_types(types: Iterable[str]) -> set[str]:
    """Event types to filter on (any case), each one the cluster records."""
    wanted = {t.upper() for t in types}
    for unknown in sorted(wanted - set(EVENT_TYPES)):
        raise InvalidArgument(f"invalid --type {unknown!r}: use one of {', '.join(EVENT_TYPES)}")
    return wanted


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


READ_PAGE = 5000  # events per read when a stored chain is verified (about 1.5 MB)
MAX_FOUND = 1000  # event numbers a verification gives of the types asked for, at most


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    events: int
    first_bad_seq: int = 0
    reason: str = ""
    anchors_checked: int = 0
    chain_ok: bool = False  # the chain itself holds, whatever the anchors say
    found: tuple[int, ...] = ()  # numbers of the events of the types asked for


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


def listed_event(number: str, raw: bytes) -> dict[str, Any]:
    """A stored event as a listing shows it: a damaged one (not JSON, or not shaped like an
    event: tampering, or damage) is listed as DAMAGED under the number in its key, neither
    hidden nor allowed to break the listing. `jaco audit verify` says what is wrong."""
    event = parse_event(raw)
    if event is not None and _well_formed(event):
        return event
    seq = int(number) if number.isdigit() and len(number) < 19 else 0
    reason = "the stored event is not a valid JSON event"
    return {"seq": seq, "type": DAMAGED, "at": "", "actor": "", "detail": {"reason": reason}}


def _well_formed(event: dict[str, Any]) -> bool:
    seq = event.get("seq")
    if type(seq) is not int or not 0 < seq < 2**63 or not isinstance(event.get("detail"), dict):
        return False
    if not all(isinstance(event.get(k), str) for k in ("type", "at", "actor", "prev_hash", "hash")):
        return False
    try:
        return dt.datetime.fromisoformat(event["at"]).tzinfo is not None
    except ValueError:
        return False


class ChainWalk:
    """`verify_chain` one event at a time, for a log read a page at a time: it keeps the last
    hash and the hashes of the anchors' events, not one per event (a whole log held in memory
    cost jacod about 200 bytes per event, over 100 MiB at 6·10⁵ events)."""

    def __init__(self, anchors: Iterable[Anchor] = (), find_types: Iterable[str] = ()) -> None:
        self.anchors = list(anchors)
        self._wanted = {a.seq for a in self.anchors}
        self._find = set(find_types)
        self.found: list[int] = []
        self._hashes: dict[int, str] = {}
        self.prev_hash, self.expected_seq, self.count = GENESIS_HASH, 1, 0
        self.broken: ChainCheck | None = None

    def add(self, event: dict[str, Any] | None) -> bool:
        """Check the next event; False once the chain is broken (the rest need not be read)."""
        if self.broken is None:
            self.broken = self._check(event)
        return self.broken is None

    def _check(self, event: dict[str, Any] | None) -> ChainCheck | None:
        count, seq = self.count, self.expected_seq
        if event is None:
            return ChainCheck(False, count, seq, "it is not a valid JSON event")
        if event.get("seq") != seq:
            return ChainCheck(False, count, seq, f"event {seq} is missing")
        if event.get("prev_hash") != self.prev_hash:
            return ChainCheck(False, count, seq, "does not link to the previous event")
        if event_hash(event) != event.get("hash"):
            return ChainCheck(False, count, seq, "its content does not match its hash")
        self.prev_hash, self.expected_seq, self.count = event["hash"], seq + 1, count + 1
        found = self._find and event.get("type")
        if isinstance(found, str) and found in self._find and len(self.found) < MAX_FOUND:
            self.found.append(seq)
        if seq in self._wanted:
            self._hashes[seq] = self.prev_hash
        return None

    def result(self, head: dict[str, Any] | None) -> ChainCheck:
        """The verdict once every event was added: the chain up to the head, then every
        anchor; with the numbers of the events of the types asked for."""
        found = tuple(self.found)
        broken = self._chain_broken(head)
        if broken is not None:
            return replace(broken, found=found)
        return replace(self._anchors_verdict(), chain_ok=True, found=found)

    def _chain_broken(self, head: dict[str, Any] | None) -> ChainCheck | None:
        if self.broken is not None:
            return self.broken
        count = self.count
        if head is None and count:
            # every write moves the head with its event: its end is unproven without it
            gone = "the audit head is missing: the log's last events may have gone with it"
            return ChainCheck(False, count, count + 1, gone)
        if head is not None and (head.get("seq") != count or head.get("hash") != self.prev_hash):
            cut = "the log was cut short (head points further)"
            return ChainCheck(False, count, count + 1, cut)
        return None

    def _anchors_verdict(self) -> ChainCheck:
        count, checked = self.count, 0
        for anchor in self.anchors:
            checked += 1
            where = f" (recorded in {anchor.source})" if anchor.source else ""
            if anchor.seq > count:
                return ChainCheck(
                    False,
                    count,
                    count + 1,
                    f"the log ends at event {count}, before event {anchor.seq} of an anchor"
                    f"{where}: history was removed",
                    checked,
                )
            if anchor.seq and self._hashes.get(anchor.seq) != anchor.hash:
                return ChainCheck(
                    False,
                    count,
                    anchor.seq,
                    f"its hash is not the one an anchor recorded{where}: history was rewritten",
                    checked,
                )
        return ChainCheck(True, count, anchors_checked=checked)


async def verify_stored(
    values: AsyncIterable[bytes],
    head: dict[str, Any] | None,
    anchors: Iterable[Anchor] = (),
    find_types: Iterable[str] = (),
) -> ChainCheck:
    """`verify_chain` over the stored events' values as they are read, page by page."""
    walk = ChainWalk(anchors, find_types)
    async for value in values:
        if not walk.add(parse_event(value)):
            break
    return walk.result(head)


def verify_chain(
    events: Iterable[dict[str, Any] | None],
    head: dict[str, Any] | None,
    anchors: Iterable[Anchor] = (),
) -> ChainCheck:
    """Check every event's hash, its link to the previous one, numbering and the head; then
    that the chain still passes through every anchor (same event number, same hash), so a
    history rewritten or cut short after an anchor was recorded is caught even when every
    hash in the cluster was recomputed to match."""
    walk = ChainWalk(anchors)
    for event in events:
        if not walk.add(event):
            break
    return walk.result(head)


def time_of(changes: Iterable[Any]) -> str:
    """When a revision happened, by the audit event it wrote (every mutation writes one);
    "" for a revision that wrote none. `changes` are etcd WatchEvents."""
    from jaco.model.keys import P_EVENTS

    for change in changes:
        if change.kind == "put" and change.kv.key.startswith(P_EVENTS):
            event = parse_event(change.kv.value)
            if event is not None and isinstance(event.get("at"), str):
                return str(event["at"])
    return ""
