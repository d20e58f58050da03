"""jaco.archive.bolt / snapshot_file: what a snapshot file holds, read from the file alone.

Backups compute meta.json and restores check it this way, so the reader is held to two
independent references: etcd's own `etcdctl snapshot status` (the revision) and the live
store's digest at that revision (over gRPC, the same code the drill uses). Then the file is
damaged in many ways: the reader must say so with SnapshotFileError, never crash or hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
from aetcd.rpc import kv_pb2

from infra.localcluster import Cluster, Node, cluster_of, wait_for
from jaco import _native
from jaco.archive import snapshot_file
from jaco.archive.bolt import (
    BRANCH,
    LEAF,
    LEAF_ELEMENT,
    PAGE_HEADER,
    BoltFile,
    SnapshotFileError,
)
from jaco.archive.meta import BackupMeta
from jaco.archive.snapshot_file import (
    FEED_BYTES,
    RUN_BYTES,
    SnapshotState,
    StatePass,
    read_snapshot_state,
    read_snapshot_state_reference,
)
from jaco.archive.tree_walk import key_bucket_root, key_records, spanned_leaves
from jaco.errors import JacoError
from jaco.model import pki
from jaco.model.etcd import Etcd, op_delete, op_put
from jaco.model.keys import P_ALIVE, ROOT
from jaco.model.store import Store
from jaco.node.config import DataDir
from jaco.server import snapshot
from jaco.server.snapshot import stream_snapshot
from jaco.v1 import jaco_pb2 as pb
from tests.mounts import tmpfs

BULK = ROOT + "bulk/"
BULK_B = BULK.encode()


def _flipped(good: bytes, rng: random.Random, flips: tuple[int, ...]) -> bytes:
    """`good` with as many random bits flipped as `rng` picks of `flips`: they land in page
    headers, the tree, records, free pages or values."""
    data = bytearray(good)
    for _ in range(rng.choice(flips)):
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    return bytes(data)


def _etcd(node: Node) -> Etcd:
    return Etcd(DataDir(node.data_dir).etcd_socket)


@pytest.fixture(scope="module")
def shaped(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Cluster, Path, dict[str, Any]]]:
    """A store shaped to exercise the reader: branch pages (thousands of revisions), values
    larger than a page (overflow pages), deleted and re-created keys, and history."""
    root = tmp_path_factory.mktemp("shaped")
    with cluster_of(root, 1) as cluster:
        cluster.ok("deploy", "web", "--image", "nginx:1", "--replicas", "3")
        cluster.ok("deploy", "gone", "--image", "x:1", "--replicas", "1")
        cluster.ok("rm", "gone")
        node = cluster.nodes["node-1"]
        shown = cluster.ok("cluster", "status", "--json").json()

        async def fill() -> None:
            etcd = _etcd(node)
            try:
                rng = random.Random(7)
                for batch in range(30):
                    ops = [
                        op_put(f"{BULK}{batch:03d}-{i:03d}", rng.randbytes(rng.choice((10, 9000))))
                        for i in range(100)
                    ]
                    await etcd.txn([], ops)
                for batch in range(5):  # history: overwrite some, delete others
                    await etcd.txn([], [op_put(f"{BULK}{batch:03d}-000", b"v2")])
                    await etcd.txn([], [op_delete(f"{BULK}{batch:03d}-001")])
                await etcd.txn([], [op_put(f"{BULK}000-001", b"re-created")])
                # Records after the deletions, and keys overwritten and deleted a few records
                # after they were written: a pass of runs of a record or a few merges the runs
                # holding them before its end (Sorter::cascade), not only at it.
                tail = [f"{BULK}tail-{i:03d}" for i in range(200)]
                await etcd.txn([], [op_put(key, b"t") for key in tail[:50]])
                await etcd.txn([], [op_put(key, b"t2") for key in tail[:10]])
                await etcd.txn([], [op_delete(key) for key in tail[10:20]])
                await etcd.txn([], [op_put(key, b"t") for key in tail[50:]])
                await etcd.txn([], [op_put(P_ALIVE + "ghost", b"heartbeat")])
                await etcd.txn([], [op_put("/elsewhere/key", b"not jaco's")])
                # Compacted, as etcd does every hour: the history above goes, and the pages
                # that held it are free but keep their bytes (stale leaves a pass must not
                # trust, some of them reused by the writes after).
                _, now = await etcd.get(f"{BULK}000-000")
                compact = [*node.etcdctl_command(), "compact", str(now), "--physical"]
                await asyncio.to_thread(subprocess.run, compact, check=True, capture_output=True)
                for batch in range(3):
                    ops = [op_put(f"{BULK}after-{batch}-{i:02d}", b"a" * 300) for i in range(20)]
                    await etcd.txn([], [*ops, op_put(f"{BULK}{batch + 10:03d}-000", b"v3")])
                # deletions after it (tombstones on pages the tree reaches), one key re-created
                await etcd.txn([], [op_delete(f"{BULK}020-{i:03d}") for i in (2, 3, 4)])
                await etcd.txn([], [op_put(f"{BULK}020-003", b"back")])
            finally:
                await etcd.close()

        asyncio.run(fill())
        yield cluster, node.save_snapshot(root / "etcdctl.db"), shown


def test_reader_agrees_with_etcd_and_the_live_store(
    shaped: tuple[Cluster, Path, dict[str, Any]],
) -> None:
    cluster, snapshot, shown = shaped
    node = cluster.nodes["node-1"]
    state = read_snapshot_state(snapshot)

    status = subprocess.run(
        ["etcdctl", "snapshot", "status", str(snapshot), "-w", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert state.revision == json.loads(status.stdout)["revision"]

    async def live() -> tuple[dict[str, int], str]:
        etcd = _etcd(node)
        try:
            at = await Store(etcd).state_digest(state.revision)
            return at.counts, at.state_digest
        finally:
            await etcd.close()

    counts, digest = asyncio.run(live())
    assert (state.counts, state.state_digest) == (counts, digest)
    # What went in: 3000 bulk keys, one deleted per batch of the last five, one re-created;
    # 200 more, ten of them deleted; 60 after the compaction, three deleted, one re-created.
    assert state.counts["bulk"] == 3000 - 5 + 1 + 200 - 10 + 60 - 3 + 1
    assert state.counts["deployments"] == 1
    assert "alive" not in state.counts
    assert state.cluster["cluster_id"] == shown["cluster_id"]
    assert pki.fingerprint(state.ca.cert_pem) == shown["ca_fingerprint"]


def _unreached_records(path: Path) -> list[tuple[bytes, bytes]]:
    """Key-bucket records on leaf pages the snapshot's key tree does not reach (free pages,
    keeping what earlier commits wrote): (key, stored revision)."""
    return [record for records in _unreached_leaves(path).values() for record in records]


def _unreached_leaves(path: Path) -> dict[int, list[tuple[bytes, bytes]]]:
    """Leaf pages the key tree does not reach, by page id, with the key-bucket records they
    hold. Every page position is tried, as a pass over the stream must; what does not parse
    is passed over."""
    found: dict[int, list[tuple[bytes, bytes]]] = {}
    with BoltFile(path) as bolt:
        reached: set[int] = set()
        covered: set[int] = set()
        for page, _, data in spanned_leaves(bolt, key_bucket_root(bolt), reached):
            covered.update(range(page, page + len(data) // bolt.page_size))
        covered |= reached
        for page in range(2, bolt.size // bolt.page_size):
            head = bolt.read(page * bolt.page_size, bolt.page_size)
            pid, flags, count, overflow = PAGE_HEADER.unpack_from(head)
            end = (page + 1 + overflow) * bolt.page_size
            if pid != page or flags != LEAF or page in covered or end > bolt.size:
                continue
            data = bolt.read(page * bolt.page_size, end - page * bolt.page_size)
            records = found.setdefault(page, [])
            for i in range(count):
                at = PAGE_HEADER.size + i * LEAF_ELEMENT.size
                if at + LEAF_ELEMENT.size > len(data):
                    break
                _, pos, ksize, vsize = LEAF_ELEMENT.unpack_from(data, at)
                stored = data[at + pos : at + pos + ksize]
                if ksize not in (17, 18) or stored[8:9] != b"_" or at + pos + ksize + vsize > end:
                    continue
                value = data[at + pos + ksize : at + pos + ksize + vsize]
                with contextlib.suppress(Exception):
                    records.append((bytes(kv_pb2.KeyValue.FromString(value).key), stored))
    return found


def test_digest_v2_counts_only_what_the_page_tree_reaches(
    shaped: tuple[Cluster, Path, dict[str, Any]],
) -> None:
    """State digest version 2 read from the file (the walk a streaming pass is to be held to)
    is the live store's version 2 at the snapshot's revision, and agrees with version 1 on
    everything but the digest. The compacted store holds, on pages its tree no longer
    reaches, records of keys it no longer has: a pass that trusted every leaf-looking page
    would count them."""
    cluster, snapshot, _ = shaped
    node = cluster.nodes["node-1"]
    one = read_snapshot_state(snapshot)
    two = read_snapshot_state_reference(snapshot, version=2)
    assert _summary(read_snapshot_state(snapshot, version=2)) == _summary(two)

    async def live() -> tuple[Any, set[bytes]]:
        etcd = _etcd(node)
        try:
            at = await Store(etcd).state_digest(two.revision, 2)
            return at, {key.encode() for key in await etcd.keys(ROOT, two.revision)}
        finally:
            await etcd.close()

    at, keys = asyncio.run(live())
    assert at.digest_version == 2 and at.revision == two.revision
    assert (two.counts, two.state_digest) == (at.counts, at.state_digest)
    assert _summary(two)[:2] + _summary(two)[3:] == _summary(one)[:2] + _summary(one)[3:]
    assert two.state_digest != one.state_digest
    unreached = _unreached_records(snapshot)
    gone = {key for key, _ in unreached if key.startswith(BULK.encode()) and key not in keys}
    assert gone, (len(unreached), sorted(gone)[:5])  # 14 of 137 records here


def test_reader_refuses_damaged_files_cleanly(
    shaped: tuple[Cluster, Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Hostile input: every flipped byte or truncation either still reads or raises
    SnapshotFileError; nothing else escapes (no IndexError, struct.error, recursion, hang)."""
    _, snapshot, _ = shaped
    good = snapshot.read_bytes()
    rng = random.Random(11)
    damaged = tmp_path / "damaged.db"

    def read(data: bytes | bytearray) -> None:
        damaged.write_bytes(bytes(data))
        read_snapshot_state(damaged)

    # Random flips land in page headers, the tree, records, free pages or values: whichever,
    # the reader either reads (a changed value shows in the state digest, not here) or
    # refuses with SnapshotFileError; any other exception fails this test.
    for _ in range(150):
        data = _flipped(good, rng, (1, 8))
        with contextlib.suppress(SnapshotFileError):
            read(data)

    # Damage where it must be refused: both meta pages, and the key bucket's root page.
    with BoltFile(snapshot) as bolt:
        page_size, key_root = bolt.page_size, bolt.bucket_root(b"key")
    data = bytearray(good)
    for meta_page in (0, 1):
        data[meta_page * page_size + 16] ^= 0xFF  # the magic number
    with pytest.raises(SnapshotFileError, match="no valid meta"):
        read(data)
    data = bytearray(good)
    data[key_root * page_size] ^= 0x01  # the page's own id
    with pytest.raises(SnapshotFileError, match=f"page {key_root} is damaged"):
        read(data)
    data = bytearray(good)
    data[key_root * page_size + 8] = 0x10  # flags: a freelist page where the tree needs one
    with pytest.raises(SnapshotFileError, match="not a tree page"):
        read(data)
    data = bytearray(good)  # the first record of the key bucket's first leaf claims 4 GiB
    with BoltFile(snapshot) as bolt:
        first_leaf = next(bolt.leaves(key_root, set()))[0] // page_size
    at = first_leaf * page_size + 16 + 12  # element 0: flags, pos, key size, value size
    data[at : at + 4] = b"\xff\xff\xff\xff"
    with pytest.raises(SnapshotFileError, match="larger than etcd allows"):
        read(data)
    # A key that is no longer UTF-8 (found by a CI run of the random flips above).
    key = f"{BULK}007-042".encode()
    assert good.count(key) >= 1
    with pytest.raises(SnapshotFileError, match="not UTF-8"):
        read(good.replace(key, key[:-2] + b"\xb9" + key[-1:]))

    for size in [0, 17, 4096, 8192, *sorted(rng.sample(range(16384, len(good) // 2), 20))]:
        damaged.write_bytes(good[:size])
        with pytest.raises(SnapshotFileError):
            read_snapshot_state(damaged)
    damaged.write_bytes(b"not a database at all" * 500)
    with pytest.raises(SnapshotFileError, match="not a bbolt database"):
        read_snapshot_state(damaged)


def test_digest_v2_walk_refuses_damage_within_its_pages(
    shaped: tuple[Cluster, Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The walk of state digest version 2 reads each leaf whole and holds every element and
    record to its page: what version 1 would read past the page, or leave unparsed, it
    refuses, naming the page. Random damage: it reads, or refuses with SnapshotFileError. The
    pass over the stream says the same, word for word."""
    _, snapshot, _ = shaped
    good = snapshot.read_bytes()
    damaged = tmp_path / "damaged.db"

    def read(data: bytes | bytearray) -> SnapshotState:
        damaged.write_bytes(bytes(data))
        stream = _outcome_v2(damaged, tmp_path, None)
        try:
            state = read_snapshot_state_reference(damaged, version=2)
        except SnapshotFileError as exc:
            assert stream == ("refused", str(exc))
            raise
        assert stream == _summary(state)
        return state

    rng = random.Random(12)
    for _ in range(60):
        data = _flipped(good, rng, (1, 8))
        with contextlib.suppress(SnapshotFileError):
            read(data)
    with BoltFile(snapshot) as bolt:
        ps, root, key_root = bolt.page_size, bolt.root, key_bucket_root(bolt)
        leaf, count, page = next(spanned_leaves(bolt, key_root, set()))
        root_page = bolt.read(root * ps, ps)
    at = leaf * ps
    element = at + PAGE_HEADER.size  # element 0: flags, pos, key size, value size
    # The root tree's leaf and its element naming the key bucket.
    assert PAGE_HEADER.unpack_from(root_page)[1] == LEAF
    named = next(
        PAGE_HEADER.size + i * 16
        for i in range(PAGE_HEADER.unpack_from(root_page)[2])
        if _element_key(root_page, PAGE_HEADER.size + i * 16) == b"key"
    )
    bucket = named + LEAF_ELEMENT.unpack_from(root_page, named)[1] + 3  # its value: root, seq
    cases: list[tuple[int, bytes, str]] = [
        (root * ps + named, bytes(4), "the snapshot's b'key' is not a bucket"),  # its flags
        (root * ps + bucket, bytes(8), "the snapshot's b'key' bucket is inline"),
        (key_root * ps + 10, (ps // 16).to_bytes(2, "little"), f"page {key_root} is damaged"),
        (at + 10, (len(page) // 16).to_bytes(2, "little"), f"page {leaf} is damaged"),
        (element + 4, len(page).to_bytes(4, "little"), f"page {leaf} is damaged"),
        (at + 12, (5000).to_bytes(4, "little"), f"page {leaf} is damaged"),  # 20 MB of overflow
        (element + 12, b"\xff\xff\xff\xff", "larger than etcd allows"),
        (element + 8, (16).to_bytes(4, "little"), "malformed revision"),
    ]
    start = PAGE_HEADER.size + LEAF_ELEMENT.unpack_from(page, PAGE_HEADER.size)[1] + 17
    cases.append((at + start, b"\xff", "damaged key-value record"))  # field 31, wire type 7
    for offset, raw, said in cases:
        data = bytearray(good)
        data[offset : offset + len(raw)] = raw
        with pytest.raises(SnapshotFileError, match=said):
            read(data)
    assert read(good).counts == read_snapshot_state(snapshot).counts
    # A record whose revision fields are a group of the same length instead (protobuf's
    # parser, which the walk uses, skips groups; the compiled one must too): both read it,
    # and its key and value are the same.
    _, ksize, vsize = struct.unpack_from("<III", page, PAGE_HEADER.size + 4)
    record = kv_pb2.KeyValue.FromString(page[start : start + vsize])
    head = kv_pb2.KeyValue(key=record.key).SerializeToString()
    tail = kv_pb2.KeyValue(value=record.value).SerializeToString() if record.value else b""
    room = vsize - len(head) - len(tail) - 2  # the group's start and end tags
    filler = b"\x0d\x00\x00\x00\x00" * (room % 2) + b"\x08\x00" * ((room - 5 * (room % 2)) // 2)
    grouped = head + b"\x13" + filler + b"\x14" + tail  # field 2 as a group
    assert len(grouped) == vsize and kv_pb2.KeyValue.FromString(grouped).value == record.value
    data = bytearray(good)
    data[at + start : at + start + vsize] = grouped
    assert read(data).state_digest == read(good).state_digest


def _element_key(page: bytes, at: int) -> bytes:
    _, pos, ksize, _ = LEAF_ELEMENT.unpack_from(page, at)
    return page[at + pos : at + pos + ksize]


READ_ONE = """
import sys
from pathlib import Path
from jaco.archive.bolt import SnapshotFileError
from jaco.archive.snapshot_file import read_snapshot_state, read_snapshot_state_reference
for read, version in ((read_snapshot_state, 1), (read_snapshot_state_reference, 1),
                      (read_snapshot_state_reference, 2), (read_snapshot_state, 2)):
    try:
        read(Path(sys.argv[1])) if version == 1 else read(Path(sys.argv[1]), version=2)
        print("read")
    except SnapshotFileError as exc:
        print(exc)
"""


def test_a_page_tree_that_loops_or_leads_past_the_file_is_refused(
    shaped: tuple[Cluster, Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The key bucket's root page names itself as its first child, or a page past the file's
    end (just past, far past, or past any file's offset): both readers, and both passes of
    state digest version 2, refuse in the same words. Read in a process of its own, bounded
    in time: a walk that missed the loop would never end."""
    _, snapshot, _ = shaped
    good = snapshot.read_bytes()
    with BoltFile(snapshot) as bolt:
        page_size, key_root = bolt.page_size, bolt.bucket_root(b"key")
    assert good[key_root * page_size + 8] == 0x01  # a branch page: thousands of revisions
    first_child = key_root * page_size + 16 + 8  # element 0's page id
    loops = "the snapshot file's page tree is damaged (a page loops)"
    past = "the snapshot file is truncated (a page lies past its end)"
    damaged = tmp_path / "damaged.db"
    pages = len(good) // page_size
    for page, said in ((key_root, loops), (pages, past), (2**40, past), (2**63, past)):
        data = bytearray(good)
        data[first_child : first_child + 8] = page.to_bytes(8, "little")
        damaged.write_bytes(data)
        read = subprocess.run(
            [sys.executable, "-c", READ_ONE, str(damaged)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert read.stdout.splitlines() == [said] * 4, (page, read.stderr[-400:])


def test_reader_spilling_sorted_runs_reads_the_same(
    shaped: tuple[Cluster, Path, dict[str, Any]], tmp_path: Path
) -> None:
    """A store larger than one sort run is merged from sorted runs spilled to unnamed files in
    the scratch directory (here runs of 64 KiB, so this small store spills): the same
    revision, counts and digest as read in memory, and nothing left behind. The runs go to the
    scratch directory and nowhere else: without it, the spilling read fails and the one that
    fits in memory does not."""
    _, snapshot, _ = shaped
    whole = read_snapshot_state(snapshot)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for read in (read_snapshot_state, read_snapshot_state_reference):
        spilled = read(snapshot, scratch, 64 * 1024)
        assert _summary(spilled) == _summary(whole)
        assert list(scratch.iterdir()) == []
    missing = tmp_path / "missing"
    assert _summary(read_snapshot_state(snapshot, missing)) == _summary(whole)
    with pytest.raises(FileNotFoundError):
        read_snapshot_state(snapshot, missing, 64 * 1024)


def _fds_under(directory: Path) -> list[str]:
    """What this process holds open under `directory` (unnamed files too: "…/#123 (deleted)")."""
    fds = Path("/proc/self/fd")
    targets = [os.readlink(fd) for fd in fds.iterdir() if fd.is_symlink()]
    return [t for t in targets if t.startswith(str(directory))]


def test_a_backups_meta_pass_yields_the_cpu_and_keeps_no_copy(
    shaped: tuple[Cluster, Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """jacod reads a backup's meta from the bytes as they go by: the receiving thread, lowered
    for the backup, feeds the pass (and any thread the pass starts from there inherits its
    nice), the pass ends on a thread of its own lowered alike (and once ended leaves nothing
    to end: no thread is started for it), and the event loop's thread and asyncio's shared
    threads, which serve the API, keep their priority. No copy of the bytes
    is written, nor anything else for a store that fits the pass's sort: the backup's directory
    stays empty and no file under it is open at any time. The meta is that of the bytes sent,
    state digest version 2, the live store's at that revision."""
    cluster, _, _ = shaped
    seen: dict[str, Any] = {"fed by": set(), "held": []}
    scratch = tmp_path / "scratch"

    def nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    class Observed(StatePass):
        def feed(self, piece: bytes) -> None:
            seen["fed by"].add((threading.get_native_id(), nice()))
            seen["held"] += [*os.listdir(scratch), *_fds_under(scratch)]
            super().feed(piece)

        def finish(self) -> SnapshotState:
            seen["pass"] = nice()
            started: list[int] = []
            child = threading.Thread(target=lambda: started.append(nice()))
            child.start()
            child.join()
            seen["started"] = started[0]
            return super().finish()

        def abort(self) -> None:
            seen["aborted"] = threading.current_thread().name
            super().abort()

    monkeypatch.setattr(snapshot, "StatePass", Observed)

    async def backup() -> tuple[list[Any], Any]:
        etcd = _etcd(cluster.nodes["node-1"])
        try:
            parts = [part async for part in stream_snapshot(Store(etcd), scratch)]
            meta = parts[-1]
            assert isinstance(meta, BackupMeta)
            return parts, await Store(etcd).state_digest(meta.snapshot_index, 2)
        finally:
            seen["loop"], seen["shared"] = nice(), await asyncio.to_thread(nice)
            seen["loop thread"] = threading.get_native_id()
            await etcd.close()

    parts, live = asyncio.run(backup())
    lowered = min(19, seen["loop"] + snapshot.BACKUP_NICE)
    assert lowered > seen["loop"], seen  # else "lowered" would prove nothing
    [(feeder, fed_at)] = seen["fed by"]  # one thread fed every piece
    assert feeder != seen["loop thread"] and fed_at == lowered, seen
    assert (seen["pass"], seen["started"]) == (lowered, lowered), seen
    assert seen["shared"] == seen["loop"] == nice(), seen
    assert seen["held"] == [] and list(scratch.iterdir()) == [], seen["held"]
    wait_for(
        lambda: "snapshot-pass-end" not in [t.name for t in threading.enumerate()],
        15,
        "any thread ending the pass to end",
    )
    assert "aborted" not in seen, seen  # a finished pass: no thread started to end it
    sent = b"".join(pb.BackupChunk.FromString(part).data for part in parts[1:-1])
    meta = parts[-1]
    assert meta.snapshot_sha256 == hashlib.sha256(sent).hexdigest() and meta.format == 3
    copy = tmp_path / "sent.db"
    copy.write_bytes(sent)
    assert meta.state_digest == read_snapshot_state_reference(copy, version=2).state_digest
    assert (meta.state_digest, meta.counts) == (live.state_digest, live.counts)


def test_a_backup_cancelled_twice_ends_its_pass(
    shaped: tuple[Cluster, Path, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backup's call cancelled (the client gone), then cancelled again while jacod waits for
    its receiving thread to stop (a server stopping, say): its pass is still ended, on a
    lowered thread of its own, not the event loop's, and so is its receiving thread; its runs'
    files (spilled here: runs of 2 KiB; they may hold the CA key's record) closed and gone."""
    cluster, _, _ = shaped
    scratch = tmp_path / "scratch"
    aborted: list[tuple[int, int]] = []
    spilled: list[str] = []
    monkeypatch.setattr(snapshot_file, "RUN_BYTES", 4096)

    class Observed(StatePass):
        def feed(self, piece: bytes) -> None:
            super().feed(piece)
            spilled.extend(_fds_under(scratch))

        def abort(self) -> None:
            tid = threading.get_native_id()
            nice = os.getpriority(os.PRIO_PROCESS, tid)
            super().abort()
            aborted.append((tid, nice))  # once done: the runs' files closed by now

    monkeypatch.setattr(snapshot, "StatePass", Observed)

    async def cancelled_twice() -> None:
        etcd = _etcd(cluster.nodes["node-1"])
        streaming = asyncio.Event()

        async def consume() -> None:
            async with aclosing(stream_snapshot(Store(etcd), scratch)) as parts:
                async for _ in parts:
                    if spilled:  # a run written: mid-pass, with something to close
                        streaming.set()
            streaming.set()  # (the whole backup done first: the test fails, not hangs)

        try:
            task = asyncio.create_task(consume())
            await streaming.wait()
            task.cancel()
            for _ in range(5):  # once it waits for the receiving thread, and after
                await asyncio.sleep(0)
                task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            await etcd.close()

    loop_thread = threading.get_native_id()  # asyncio.run's loop runs on this thread
    asyncio.run(cancelled_twice())
    wait_for(lambda: aborted, 15, "the pass to be ended")
    [(thread, nice)] = aborted
    assert thread != loop_thread and nice == min(19, os.getpriority(os.PRIO_PROCESS, 0) + 10)
    assert spilled, "no run was spilled: the test would not see one left open"
    wait_for(
        lambda: "snapshot-receiver" not in [t.name for t in threading.enumerate()],
        15,
        "the receiving thread to end",
    )
    assert _fds_under(scratch) == []


def test_a_pass_says_when_nothing_is_left_to_end(
    shaped: tuple[Cluster, Path, dict[str, Any]], tmp_path: Path
) -> None:
    """jacod starts a thread to end a backup's pass only when something is left to end:
    `ended` is False for a pass still open, also while a feed holds it (asked without
    waiting for the feed), and True once it finished, was aborted or failed."""
    _, snapshot, _ = shaped
    data = snapshot.read_bytes()
    open_pass = StatePass(tmp_path)
    assert not open_pass.ended
    asked: list[bool] = []
    feeder = threading.Thread(target=open_pass.feed, args=(data,))
    feeder.start()
    while feeder.is_alive():
        asked.append(open_pass.ended)
    feeder.join()
    assert asked and not any(asked) and not open_pass.ended
    assert open_pass.finish().state_digest == read_snapshot_state(snapshot, version=2).state_digest
    assert open_pass.ended
    aborted = StatePass(tmp_path)
    aborted.feed(data[: len(data) // 2])
    aborted.abort()
    assert aborted.ended
    failed = StatePass(tmp_path)
    failed.feed(bytes(len(data)))
    with pytest.raises(SnapshotFileError):
        failed.finish()
    assert failed.ended
    assert list(tmp_path.iterdir()) == []


LOW_NOFILE = """
import json, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))
from jaco.archive.snapshot_file import read_snapshot_state
state = read_snapshot_state(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))
print(json.dumps([state.revision, state.counts, state.state_digest]))
"""


def test_a_store_of_more_runs_than_open_files_merges_them_as_it_goes(
    shaped: tuple[Cluster, Path, dict[str, Any]], tmp_path: Path
) -> None:
    """A store spilled into thousands of sorted runs (runs of a few records, or of one) is read
    by a process that may open 512 files: the runs are merged as they come, not all opened at
    the end, and the state is the one read in memory; nothing is left in the scratch."""
    _, snapshot, _ = shaped
    whole = read_snapshot_state(snapshot)
    for run_bytes in (2048, 2):
        read = subprocess.run(
            [sys.executable, "-c", LOW_NOFILE, str(snapshot), str(tmp_path), str(run_bytes)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert read.returncode == 0, read.stderr[-400:]
        assert json.loads(read.stdout) == [whole.revision, whole.counts, whole.state_digest]
        assert list(tmp_path.iterdir()) == []


def _summary(state: SnapshotState) -> tuple[Any, ...]:
    return (
        state.revision,
        state.counts,
        state.state_digest,
        state.cluster,
        state.ca,
        state.audit_head,
    )


def _outcome(read: Any, path: Path, scratch: Path, run_bytes: int | None) -> tuple[Any, ...]:
    try:
        return _summary(read(path, scratch, run_bytes))
    except SnapshotFileError as exc:
        return ("refused", str(exc))


def test_the_compiled_pass_is_the_python_definition(
    shaped: tuple[Cluster, Path, dict[str, Any]], tmp_path: Path
) -> None:
    """jaco._native (what backups, restores and drills run) against read_snapshot_state_reference
    (the Python walk it replaced): the same state from the same file, and the same refusal,
    word for word, from the same damage; in memory and spilling runs."""
    _, snapshot, _ = shaped
    good = snapshot.read_bytes()
    rng = random.Random(23)
    damaged = tmp_path / "damaged.db"
    variants: list[bytes] = [good]
    for _ in range(120):
        variants.append(_flipped(good, rng, (1, 4, 32)))
    variants += [good[:size] for size in (0, 100, 4096, *rng.sample(range(8192, len(good)), 8))]
    key = f"{BULK}007-042".encode()
    variants.append(good.replace(key, key[:-2] + b"\xb9" + key[-1:]))
    seen = set()
    for data in variants:
        damaged.write_bytes(data)
        for run_bytes in (None, 32 * 1024):
            native = _outcome(read_snapshot_state, damaged, tmp_path, run_bytes)
            python = _outcome(read_snapshot_state_reference, damaged, tmp_path, run_bytes)
            assert native == python
            seen.add(native[1] if native[0] == "refused" else "read")
    assert list(tmp_path.iterdir()) == [damaged]
    # The damage reached the checks, not only the first one.
    assert "read" in seen and len(seen) >= 5, seen


def test_the_compiled_pass_over_no_records(
    shaped: tuple[Cluster, Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Under a root no key lies under there is nothing to sort: the empty run is sorted and
    merged like any other (the SHA-256 of nothing, no tables, nothing found), in memory and
    with the smallest runs, and the store's revision is still read."""
    _, snapshot, _ = shaped
    revision = read_snapshot_state(snapshot).revision
    for run_bytes in (RUN_BYTES, 2):
        nothing = _native.snapshot_state(
            snapshot, tmp_path, b"/nothing/", b"/nothing/alive/", [b"/nothing/x"], run_bytes
        )
        assert nothing == (revision, [], hashlib.sha256().hexdigest(), [])
    assert list(tmp_path.iterdir()) == []


def test_a_scratch_disk_filling_up_is_said_not_raised(
    shaped: tuple[Cluster, Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The sorted runs fill the disk they spill to: jaco's error naming that disk (restore and
    jacod print it in one line), not an OSError; the unnamed runs go with the failure."""
    _, snapshot, _ = shaped
    with tmpfs(tmp_path / "small", "size=16k") as small:
        with pytest.raises(JacoError) as full:
            read_snapshot_state(snapshot, small, 64 * 1024)
        assert str(full.value) == (
            f"the disk holding {small} is full: the snapshot's records, sorted in runs spilled "
            "there, did not fit (they need up to the snapshot's size)"
        )
        assert list(small.iterdir()) == []
        assert shutil.disk_usage(small).used == 0


def _outcome_v2(
    path: Path, scratch: Path, run_bytes: int | None, chunks: Iterator[int] | None = None
) -> tuple[Any, ...]:
    """The pass of version 2 over the file's bytes, fed in pieces of the sizes `chunks` gives
    (default: the 1 MiB of a backup's stream); its summary or its refusal."""
    data = path.read_bytes()
    try:
        with StatePass(scratch, run_bytes) as state_pass:
            at = 0
            while at < len(data):
                size = next(chunks) if chunks is not None else FEED_BYTES
                state_pass.feed(data[at : at + size])
                at += size
            return _summary(state_pass.finish())
    except SnapshotFileError as exc:
        return ("refused", str(exc))


def test_the_stream_pass_is_the_walk_of_version_2(
    shaped: tuple[Cluster, Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The compiled pass over the stream (what jacod is to run on a backup's bytes as they go
    by) against the walk of the page tree that defines version 2: the same state and the same
    refusal, word for word, from the same damage, whatever the pieces it is fed in, in memory
    and spilling runs (of 16 KiB, of 1 KiB), leaving nothing behind."""
    _, snapshot, _ = shaped
    good = snapshot.read_bytes()
    rng = random.Random(29)
    damaged = tmp_path / "damaged.db"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    variants: list[bytes] = [good]
    for _ in range(100):
        variants.append(_flipped(good, rng, (1, 4, 32)))
    variants += [good[:size] for size in (0, 79, 100, 4096, 4200, 8192 + 90)]
    variants += [good[:size] for size in rng.sample(range(8192, len(good)), 8)]
    key = f"{BULK}007-042".encode()
    variants.append(good.replace(key, key[:-2] + b"\xb9" + key[-1:]))
    seen = set()
    for i, data in enumerate(variants):
        damaged.write_bytes(data)
        try:
            walked: tuple[Any, ...] = _summary(read_snapshot_state_reference(damaged, version=2))
        except SnapshotFileError as exc:
            walked = ("refused", str(exc))
        seen.add(walked[1] if walked[0] == "refused" else "read")
        for run_bytes in (None, 32 * 1024):
            assert _outcome_v2(damaged, scratch, run_bytes) == walked, i
        if i % 10 == 0 or len(data) < 20000:  # pieces of any size: page boundaries anywhere
            sizes = [1, 7] if len(data) < 20000 else [61] if i == 0 else []
            for size in [*sizes, 4095, 4096, 32768, 100003]:
                assert _outcome_v2(damaged, scratch, None, itertools.repeat(size)) == walked
            odd = iter(lambda: rng.randrange(1, 50000), None)
            assert _outcome_v2(damaged, scratch, 2048, odd) == walked, i
    assert list(scratch.iterdir()) == []
    assert "read" in seen and len(seen) >= 5, seen


def _page_bytes(data: bytes | bytearray, page: int, size: int) -> bytearray:
    return bytearray(data[page * size : (page + 1) * size])


def test_the_stream_pass_trusts_only_pages_the_tree_reaches(
    shaped: tuple[Cluster, Path, dict[str, Any]], tmp_path: Path
) -> None:
    """What a free page holds does not count, though the stream cannot tell it is free when it
    goes by: a live leaf copied onto a free page, its revisions raised past the snapshot's and
    its values changed (what a commit during the stream may write there), changes neither
    the digest nor the revision, in memory and in runs of a record or two (no record is
    dropped as superseded before the tree is known). A leaf header faked inside a live
    value's overflow, and a free page whose stale overflow claims the live pages after it,
    are passed over, or read, as the walk does."""
    _, snapshot, _ = shaped
    good = snapshot.read_bytes()
    want = _summary(read_snapshot_state_reference(snapshot, version=2))
    with BoltFile(snapshot) as bolt:
        ps = bolt.page_size
        leaves = list(spanned_leaves(bolt, key_bucket_root(bolt), set()))
    unreached = [page for page, records in _unreached_leaves(snapshot).items() if records]
    with BoltFile(snapshot) as bolt:  # a leaf of bulk records only: identity and CA stay
        bulk = {page for _, _, page, _, _ in key_records(bolt)}
        bulk -= {page for key, _, page, _, _ in key_records(bolt) if not key.startswith(BULK_B)}
    live = next(
        (page, count, data)
        for page, count, data in leaves
        if len(data) == ps and count > 3 and page in bulk
    )
    with BoltFile(snapshot) as bolt:  # the key tree's pages, branches and leaves
        reached: set[int] = set()
        for _ in spanned_leaves(bolt, key_bucket_root(bolt), reached):
            pass
    one_page = [page for page in unreached if good[page * ps + 12 : page * ps + 16] == bytes(4)]
    free = one_page[0]
    # one whose next eight pages hold some the tree reaches
    claiming = next(page for page in one_page if reached & set(range(page + 1, page + 9)))
    damaged = tmp_path / "damaged.db"

    # A live leaf onto a free page, newer and different.
    page_id, count, leaf = live
    copy = bytearray(leaf)
    copy[0:8] = free.to_bytes(8, "little")
    for i in range(count):
        pos, ksize, vsize = struct.unpack_from("<III", copy, PAGE_HEADER.size + i * 16 + 4)
        start = PAGE_HEADER.size + i * 16 + pos
        copy[start : start + 8] = (2**40 + i).to_bytes(8, "big")  # revision main
        record = kv_pb2.KeyValue.FromString(bytes(copy[start + ksize : start + ksize + vsize]))
        record.value = b"X" * len(record.value)  # same length: the page's layout holds
        encoded = record.SerializeToString()
        assert len(encoded) == vsize
        copy[start + ksize : start + ksize + vsize] = encoded
    data = bytearray(good)
    data[free * ps : (free + 1) * ps] = copy
    damaged.write_bytes(data)
    assert _summary(read_snapshot_state_reference(damaged, version=2)) == want
    for run_bytes in (None, 2, 2048):
        assert _outcome_v2(damaged, tmp_path, run_bytes) == want
    # The same bytes on the live page itself: the raised revisions and the changed values
    # count, so the free page's were passed over for being free, not for being unreadable.
    copy[0:8] = page_id.to_bytes(8, "little")
    data = bytearray(good)
    data[page_id * ps : (page_id + 1) * ps] = copy
    damaged.write_bytes(data)
    changed = _outcome_v2(damaged, tmp_path, 2)
    assert changed == _summary(read_snapshot_state_reference(damaged, version=2))
    assert changed[0] == 2**40 + count - 1 and changed[2] != want[2]

    # A leaf header faked at an overflow page of a live value.
    big = next(page for page, _, data in leaves if len(data) > ps)
    fake = bytearray(good)
    fake[(big + 1) * ps : (big + 2) * ps] = copy[:ps]
    fake[(big + 1) * ps : (big + 1) * ps + 8] = (big + 1).to_bytes(8, "little")
    damaged.write_bytes(fake)
    walked = _summary(read_snapshot_state_reference(damaged, version=2))
    assert walked[0] == want[0] and walked[1] == want[1]  # no record of the fake counted
    assert _outcome_v2(damaged, tmp_path, None) == walked

    # A free page whose overflow claims the pages after it, live ones among them.
    stale = bytearray(good)
    stale[claiming * ps + 12 : claiming * ps + 16] = (8).to_bytes(4, "little")
    damaged.write_bytes(stale)
    assert _outcome_v2(damaged, tmp_path, None) == want
    assert list(tmp_path.iterdir()) == [damaged]


STREAM_ONE = """
import sys
from pathlib import Path
from jaco.archive.bolt import SnapshotFileError
from jaco.archive.snapshot_file import read_snapshot_state
try:
    print(read_snapshot_state(Path(sys.argv[1]), version=2).counts)
except SnapshotFileError as exc:
    print(exc)
"""


def test_the_stream_pass_refuses_pages_that_claim_the_same_bytes_over_and_over(
    shaped: tuple[Cluster, Path, dict[str, Any]], tmp_path: Path
) -> None:
    """A page made a 16 MiB leaf of 65 535 elements, each the same 14 MiB record: the stream,
    which must parse every page as it goes by, whether the tree reaches it or not, would hash
    900 GB. It stops at eight times the bytes received and refuses, in seconds (in a process
    of its own, bounded in time)."""
    _, snapshot, _ = shaped
    good = snapshot.read_bytes()
    with BoltFile(snapshot) as bolt:
        ps = bolt.page_size
    span = 16 * 1024 * 1024
    free = next(
        page
        for page, records in sorted(_unreached_leaves(snapshot).items())
        if records and page * ps + span <= len(good)
    )
    at = free * ps
    value = kv_pb2.KeyValue(key=f"{BULK}again".encode(), value=b"v" * (14 * 1024 * 1024))
    record = (7).to_bytes(8, "big") + b"_" + bytes(8) + value.SerializeToString()
    count = 65535
    first = PAGE_HEADER.size + count * 16  # the records after the element headers
    page = bytearray(PAGE_HEADER.pack(free, LEAF, count, span // ps - 1))
    for i in range(count):
        page += struct.pack("<IIII", 0, first - (PAGE_HEADER.size + i * 16), 17, len(record) - 17)
    page += record
    assert len(page) <= span
    data = bytearray(good)
    data[at : at + len(page)] = page
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(data)
    read = subprocess.run(
        [sys.executable, "-c", STREAM_ONE, str(damaged)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert read.stdout.splitlines() == [
        "the snapshot file's pages overlap as no bbolt file's do"
    ], read.stderr[-400:]


def test_the_stream_pass_bounds_what_branches_hold(
    shaped: tuple[Cluster, Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Every page made a branch of 2047 children spanning eight pages: the stream, which notes
    every branch's children until the tree is known, would hold four times the bytes it
    received (a 1 GiB archive: 4 GiB of memory in `jaco restore`). It refuses once they hold
    more than half the bytes received, as no real file's branches do."""
    _, snapshot, _ = shaped
    good = snapshot.read_bytes()
    with BoltFile(snapshot) as bolt:
        ps = bolt.page_size
    data = bytearray(good)
    for page in range(2, len(good) // ps - 8):
        data[page * ps : page * ps + 16] = PAGE_HEADER.pack(page, BRANCH, 2047, 7)
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(data)
    said = "the snapshot file's pages overlap as no bbolt file's do"
    assert _outcome_v2(damaged, tmp_path, None) == ("refused", said)
