"""What an etcd snapshot file of a jaco store holds, read from the file alone.

Revision, per-table counts, the state digest, the cluster's identity and its CA, read from the
bolt file (no etcd started, nothing executed), so the server can describe the very bytes it
sent and restore can check them before trusting them.

The pass over every stored revision is compiled (jaco._native, native/src): it is the per-key
cost of every backup, restore and drill (issue 16). `read_snapshot_state_reference` is the
same pass in Python (jaco.archive.bolt, jaco.archive.key_order), kept as the definition the
compiled one is tested against (tests/test_snapshot_file.py), not used by the product.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from jaco.archive.bolt import BoltFile, SnapshotFileError
from jaco.archive.key_order import latest_in_key_order
from jaco.archive.tree_walk import key_records
from jaco.errors import InstallationError, JacoError
from jaco.files import disk_full
from jaco.model import pki
from jaco.model.digest import StateDigest, StateDigestV2
from jaco.model.keys import B_ALIVE, B_ROOT, K_CA, K_CLUSTER, K_HEAD

try:
    from jaco import _native
except ImportError:  # an installation without its compiled part: refused when it is needed
    _native = None  # type: ignore[assignment]
MISSING = (
    "this installation of jaco lacks its compiled snapshot reader (jaco._native): reinstall "
    "jaco (its wheel, or `pip install` of its sources, which builds native/ with cargo)"
)

_WANTED = (K_CLUSTER.encode(), K_CA.encode(), K_HEAD.encode())
# What the compiled sort holds: two runs (keys, values, entries). 16 MiB keeps the pass's
# peak at about 22 MiB above its process from 10⁶ to 10⁷ keys (64 MiB: 69 MiB), at the same
# speed (docs/benchmarks.md, stop 29).
RUN_BYTES = 16 * 1024 * 1024

T = TypeVar("T")  # a reference's record, as `_digested` takes it


@dataclass(frozen=True)
class SnapshotState:
    """What a snapshot file holds, read from the file alone."""

    revision: int
    counts: dict[str, int]
    state_digest: str
    cluster: dict[str, Any]
    ca: pki.KeyPair
    audit_head: dict[str, Any] | None


def read_snapshot_state(
    path: Path, scratch: Path | None = None, run_bytes: int | None = None, *, version: int = 1
) -> SnapshotState:
    """Revision, counts, digest, cluster identity, CA and audit head of an etcd snapshot file,
    the state digest of `version` (`jaco.model.digest`).

    One pass over the file's records, then a merge in key order: memory stays bounded
    whatever the number of keys; a store too large for one run (half of `run_bytes`, 8 MiB:
    one run fills while the one before is sorted and written on a second thread) spills
    sorted runs to unnamed files in `scratch` (default: the snapshot's own directory).
    Version 1 walks the file's page tree; version 2 reads it once from start to end, as a
    stream of its bytes would be read (`StatePass`). Raises SnapshotFileError if the file is
    not a readable etcd snapshot of a jaco store.
    """
    if version == 2:
        with StatePass(scratch or path.parent, run_bytes) as state_pass, path.open("rb") as f:
            while piece := f.read(FEED_BYTES):
                state_pass.feed(piece)
            return state_pass.finish()
    if _native is None:
        raise InstallationError(MISSING)
    scratch = scratch or path.parent
    where = (path, scratch, B_ROOT, B_ALIVE, list(_WANTED))
    with _refusals(scratch):
        revision, counts, digest, found = _native.snapshot_state(*where, run_bytes or RUN_BYTES)
    return _state(revision, dict(counts), digest, dict(found))


# What one feed of a file's pass hands over: the pieces a backup's stream comes in.
FEED_BYTES = 1024 * 1024


@contextmanager
def _refusals(scratch: Path) -> Iterator[None]:
    """The compiled pass's refusals in jaco's terms: SnapshotFileError, or the scratch disk
    full named as such."""
    try:
        yield
    except _native.SnapshotError as exc:
        raise SnapshotFileError(str(exc)) from None
    except OSError as exc:
        if disk_full(exc):
            raise JacoError(
                f"the disk holding {scratch} is full: the snapshot's records, sorted in runs "
                "spilled there, did not fit (they need up to the snapshot's size)"
            ) from None
        raise


class StatePass:
    """State digest version 2 of a snapshot, its bytes fed in order as they come (from a file,
    or from etcd's stream): no copy of them is kept, only the sort's runs, spilled to unnamed
    files in `scratch` when the store is larger than one run. `finish()` gives the
    SnapshotState, or raises SnapshotFileError for what the file's page tree would refuse."""

    def __init__(self, scratch: Path, run_bytes: int | None = None) -> None:
        if _native is None:
            raise InstallationError(MISSING)
        self.scratch = scratch
        wanted = list(_WANTED)
        self._pass = _native.StreamPass(scratch, B_ROOT, B_ALIVE, wanted, run_bytes or RUN_BYTES)

    def __enter__(self) -> StatePass:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    @property
    def ended(self) -> bool:
        """Whether a finish or an abort has taken the pass (and ends it) or a failure dropped
        it: nobody else need end it. False while a feed holds the pass, without waiting."""
        return self._pass.ended

    def abort(self) -> None:
        """End the pass where it is, from any thread: its runs' files closed (unnamed: gone),
        its thread joined. Nothing after a finish."""
        self._pass.abort()

    def feed(self, piece: bytes) -> None:
        with _refusals(self.scratch):
            self._pass.feed(piece)

    def finish(self) -> SnapshotState:
        with _refusals(self.scratch):
            revision, counts, digest, found = self._pass.finish()
        return _state(revision, dict(counts), digest, dict(found))


def read_snapshot_state_reference(
    path: Path, scratch: Path | None = None, run_bytes: int | None = None, *, version: int = 1
) -> SnapshotState:
    """read_snapshot_state, in Python: the definition the compiled pass is held to. With
    `version=2`, the state digest of version 2 (`jaco.model.digest`), by `_reference_v2`."""
    if version == 2:
        return _reference_v2(path)
    with BoltFile(path) as bolt:
        stored = bolt.revisions(_counted)
        latest = latest_in_key_order(stored, scratch or path.parent, run_bytes)
        digested = _digested(latest, StateDigest(), bolt.value)
        revision = bolt.revision
    return _state(revision, *digested)


def _digested(
    records: Iterable[tuple[bytes, T]], digest: StateDigest, value_of: Callable[[T], bytes]
) -> tuple[dict[str, int], str, dict[bytes, bytes]]:
    """Counts, digest and the wanted records of `records`, the latest of each counted key in
    key order (either reference's), each value taken by `value_of` once its key is found to
    be UTF-8 (the compiled passes' order of refusals)."""
    wanted: dict[bytes, bytes] = {}
    for key, record in records:
        try:
            key.decode()
        except UnicodeDecodeError:
            raise SnapshotFileError("the snapshot holds a key that is not UTF-8") from None
        value = value_of(record)
        digest.add(key, value)
        if key in _WANTED:
            wanted[key] = value
    return (*digest.result(), wanted)


def _reference_v2(path: Path) -> SnapshotState:
    """The pass of state digest version 2 over a snapshot file, as a walk of its page tree:
    only the pages the snapshot's root reaches count, whatever the free pages hold. Of each
    key, the record of the highest revision (a tie, only in a damaged file, to the later page
    and index) is the latest; a deletion there leaves the key out. Held in memory: this is the
    definition a streaming pass is to be held to, not the product's path.

    Refusals, first found first: the meta pages; the root tree's walk to the key bucket; the
    key bucket's pages in the tree's order, each page's first fault (`tree_walk.key_records`);
    then a key that is not UTF-8, in key order."""
    latest: dict[bytes, tuple[bytes, int, int, bytes | None]] = {}
    with BoltFile(path) as bolt:
        for key, stored, page, index, value in key_records(bolt):
            if not _counted(key):
                continue
            held = latest.get(key)
            if held is None or (stored, page, index) > held[:3]:
                latest[key] = (stored, page, index, value)
        revision = bolt.revision
    present = ((key, value) for key in sorted(latest) if (value := latest[key][3]) is not None)
    return _state(revision, *_digested(present, StateDigestV2(), bytes))


def _state(
    revision: int, counts: dict[str, int], state_digest: str, records: dict[bytes, bytes]
) -> SnapshotState:
    """The SnapshotState of what the pass found: identity, CA and audit head checked."""
    if K_CLUSTER.encode() not in records or K_CA.encode() not in records:
        raise SnapshotFileError("the snapshot holds no jaco cluster (no identity or CA)")
    try:
        cluster = json.loads(records[K_CLUSTER.encode()])
        ca = json.loads(records[K_CA.encode()])
        keypair = pki.KeyPair(ca["cert_pem"].encode(), ca["key_pem"].encode())
        if not isinstance(cluster.get("cluster_id"), str):
            raise TypeError
        head = json.loads(records[K_HEAD.encode()]) if K_HEAD.encode() in records else None
        if head is not None and not (
            isinstance(head.get("seq"), int) and isinstance(head.get("hash"), str)
        ):
            raise TypeError
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SnapshotFileError("the snapshot's cluster identity or CA record is damaged") from None
    audit_head = {"seq": head["seq"], "hash": head["hash"]} if head else None
    return SnapshotState(
        revision, dict(sorted(counts.items())), state_digest, cluster, keypair, audit_head
    )


def _counted(key: bytes) -> bool:
    """A key of the state digest: jaco's records, liveness left out."""
    return key.startswith(B_ROOT) and not key.startswith(B_ALIVE)
