"""What the etcd adapter (jaco.model.etcd) hands to the rest of jaco: plain records, no gRPC."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple


class KV(NamedTuple):
    """One key as etcd stores it. A tuple: a listing or a digest of 10⁶ records makes a
    million, and a frozen dataclass costs 0.7 s more."""

    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int


@dataclass(frozen=True)
class MemberStatus:
    member_id: int
    leader_id: int
    raft_index: int
    raft_term: int
    is_learner: bool
    db_size: int
    revision: int


@dataclass(frozen=True)
class Member:
    id: int
    name: str
    peer_urls: tuple[str, ...]
    is_learner: bool


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # "put" or "delete"
    kv: KV


@dataclass(frozen=True)
class Revision:
    """What a watch has delivered: the changes of one revision (`changes`), or progress
    (`changes` empty: every change up to `revision` has been delivered)."""

    revision: int
    changes: tuple[WatchEvent, ...]


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    cert: Path
    key: Path
