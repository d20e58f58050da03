"""Restore without etcd's copy of the snapshot (jaco.node.seeded_restore): the store it makes
is the one `etcdctl snapshot restore` makes, value for value and file for file, and etcd
serves it and applies writes to it."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import stat
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.localcluster import JACO, Cluster, cluster_of, run, wait_for
from infra.ports import free_port
from jaco.archive.bolt import (
    BUCKET,
    BUCKET_LEAF,
    LEAF_ELEMENT,
    PAGE_HEADER,
    BoltFile,
    SnapshotFileError,
)
from jaco.errors import JacoError
from jaco.files import anonymous_file
from jaco.node import restore as restore_module
from jaco.node import seeded_restore
from jaco.node.bootstrap import Ports, single_member_config
from jaco.node.config import DataDir, NodeConfig
from jaco.node.etcd_member import snapshot_restore
from jaco.node.restore import restore
from tests.mounts import tmpfs


def store_items(path: Path) -> dict[str, bytes]:
    """Every value of a bbolt file, nested and inline buckets included, by its path."""
    items: dict[str, bytes] = {}
    with BoltFile(path) as bolt:

        def walk(root: int, inline: bytes, prefix: str) -> None:
            if root:
                elements = [
                    (flags, key, value)
                    for offset, count, head in bolt.leaves(root, set())
                    for flags, key, _, _, value in bolt._elements(offset, count, head, 1 << 30)
                ]
            else:
                count = PAGE_HEADER.unpack_from(inline)[2]
                elements = []
                for i in range(count):
                    at = PAGE_HEADER.size + i * LEAF_ELEMENT.size
                    flags, pos, ksize, vsize = LEAF_ELEMENT.unpack_from(inline, at)
                    start = at + pos
                    key = inline[start : start + ksize]
                    elements.append((flags, key, inline[start + ksize : start + ksize + vsize]))
            for flags, key, value in elements:
                name = f"{prefix}/{key.hex()}"
                if flags & BUCKET_LEAF:
                    walk(BUCKET.unpack_from(value)[0], value[BUCKET.size :], name)
                else:
                    items[name] = value

        walk(bolt.root, b"", "")
    return items


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real jaco store's snapshot, as etcd streams it (its SHA-256 trailer included)."""
    root = tmp_path_factory.mktemp("seeded")
    with cluster_of(root / "c", 1) as cluster:
        for i in range(30):
            cluster.ok("deploy", f"app-{i}", "--image", f"registry.local/app:{i}")
        cluster.ok("token", "create", "--role", "viewer")
        return cluster.nodes["node-1"].save_snapshot(root / "snap.db")


def _config(name: str) -> NodeConfig:
    return single_member_config(
        name, "c-test", Ports("127.0.0.1", free_port(), free_port(), free_port())
    )


def _seeded(snapshot: Path, data: DataDir, config: NodeConfig) -> int:
    """Restore `snapshot` in place into `data`, as restore does; the inode of the file it was
    written to."""
    data.path.mkdir()
    with anonymous_file(data.path) as file, open(snapshot, "rb") as source:
        shutil.copyfileobj(source, file)
        file.flush()
        seeded_restore.restore_seed(data, config)
        seeded_restore.adopt(file.fileno(), data, config)
        return os.fstat(file.fileno()).st_ino


def test_the_seeded_store_is_the_one_etcds_restore_makes(snapshot: Path, tmp_path: Path) -> None:
    assert seeded_restore.seeded()  # this host's etcdctl is 3.4: the path under test
    config = _config("r")
    tool, ours = DataDir(tmp_path / "tool"), DataDir(tmp_path / "ours")
    tool.path.mkdir()
    snapshot_restore(snapshot, tool, config)
    written = _seeded(snapshot, ours, config)

    made, theirs = (
        store_items(ours.etcd_dir / "member/snap/db"),
        store_items(tool.etcd_dir / "member/snap/db"),
    )
    assert made == theirs
    # the one value etcd's tool changes is among them, and changed: not the snapshot's
    index = "/" + b"meta".hex() + "/" + b"consistent_index".hex()
    assert made[index] == (1).to_bytes(8, "big") != store_items(snapshot)[index]
    db = ours.etcd_dir / "member/snap/db"
    assert db.stat().st_ino == written  # the file written, not a copy of it
    assert db.stat().st_size == snapshot.stat().st_size - 32  # etcd's trailer cut off
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    files = sorted(p.relative_to(tool.etcd_dir) for p in tool.etcd_dir.rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(ours.etcd_dir) for p in ours.etcd_dir.rglob("*") if p.is_file()
    )
    for name in files:  # the raft log and snapshot: byte for byte
        if name.name != "db":
            assert (tool.etcd_dir / name).read_bytes() == (ours.etcd_dir / name).read_bytes(), name


class _Etcd:
    """A bare etcd (one member, no TLS) on a client port of its own, and etcdctl against it."""

    def __init__(self) -> None:
        self.client = f"http://127.0.0.1:{free_port()}"

    def ctl(
        self, *args: str, stdin: str = "", check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["etcdctl", f"--endpoints={self.client}", *args]
        env = {**os.environ, "ETCDCTL_API": "3"}
        return subprocess.run(cmd, env=env, input=stdin, capture_output=True, text=True,
                              timeout=60, check=check)  # fmt: skip

    def revision(self) -> int:
        status = json.loads(self.ctl("-w", "json", "endpoint", "status", check=True).stdout)
        return int(status[0]["Status"]["header"]["revision"])

    @contextlib.contextmanager
    def serving(self, data: Path, name: str, peer: str, *flags: str) -> Iterator[None]:
        """etcd on `data` until the block ends (`flags`: a new member's, for instance; a
        restored data dir knows its cluster)."""
        cmd = ["etcd", f"--name={name}", f"--data-dir={data}", f"--listen-peer-urls={peer}",
               f"--listen-client-urls={self.client}", f"--advertise-client-urls={self.client}",
               *flags]  # fmt: skip
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for(lambda: self.ctl("endpoint", "health").returncode == 0, 60, "etcd")
            yield
        finally:
            process.terminate()
            process.wait(30)

    @contextlib.contextmanager
    def new_member(self, data: Path, *flags: str) -> Iterator[None]:
        """A new one-member cluster on `data`, serving until the block ends."""
        peer = f"http://127.0.0.1:{free_port()}"
        first = (f"--initial-advertise-peer-urls={peer}", f"--initial-cluster=s={peer}")
        with self.serving(data, "s", peer, *first, *flags):
            yield


def _peer(config: NodeConfig) -> str:
    return config.peer_url.replace("https://", "http://")  # one member: no peer ever calls


def test_etcd_serves_the_seeded_store_and_applies_writes(snapshot: Path, tmp_path: Path) -> None:
    config = _config("r")
    data = DataDir(tmp_path / "data")
    written = _seeded(snapshot, data, config)
    assert (data.etcd_dir / "member/snap/db").stat().st_ino == written  # made in place
    etcd = _Etcd()
    with etcd.serving(data.etcd_dir, "r", _peer(config)):
        before = etcd.revision()
        assert before > 30  # the snapshot's store, with its history
        # applied: etcd skips what its index says it has
        etcd.ctl("put", "/after-restore", "yes", check=True)
        assert etcd.revision() == before + 1
    # still there after a restart, from the raft log and the store
    with etcd.serving(data.etcd_dir, "r", _peer(config)):
        got = json.loads(etcd.ctl("-w", "json", "get", "/after-restore", check=True).stdout)
        assert base64.b64decode(got["kvs"][0]["value"]) == b"yes"
        assert etcd.revision() == before + 1


@pytest.mark.parametrize(
    "said", ["etcdctl version: 3.5.17\nAPI version: 3.5", "etcdctl version: 3.4.24", "no version"]
)
def test_another_restore_tool_copies_the_snapshot_as_before(
    said: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only etcdctl 3.4.23's restore is known to match: any other keeps etcd's own copy."""
    _fake_tool(tmp_path / "bin" / "etcdctl", said, monkeypatch)
    assert not _seeded_here()


def test_etcdutl_beside_the_known_etcdctl_copies_the_snapshot_as_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """etcdutl (etcd 3.5 and later) is the restore tool wherever it is installed, even beside
    an etcdctl 3.4.23: its restore writes the membership into the store too."""
    _fake_tool(tmp_path / "bin" / "etcdctl", "etcdctl version: 3.4.23", monkeypatch)
    assert _seeded_here()  # the fake etcdctl alone is trusted: the gate below is etcdutl's
    _fake_tool(tmp_path / "bin" / "etcdutl", "etcdutl version: 3.5.17", monkeypatch)
    assert not _seeded_here()


def _fake_tool(path: Path, said: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A restore tool on PATH first that only says `said` when asked its version."""
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!/bin/sh\nprintf '%s\\n' '{said}'\n")
    path.chmod(0o755)
    monkeypatch.setenv("PATH", f"{path.parent}:{os.environ['PATH']}")


def _seeded_here() -> bool:
    seeded_restore.seeded.cache_clear()
    try:
        return seeded_restore.seeded()
    finally:
        seeded_restore.seeded.cache_clear()


def test_both_ways_restore_the_same_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy etcd's own tool makes (any tool but etcdctl 3.4) and the store made in place
    give the same restored node."""
    with cluster_of(tmp_path / "c", 1) as cluster:
        cluster.ok("deploy", "web", "--image", "nginx:1.27")
        archive = tmp_path / "backup.tar.gz"
        cluster.ok("backup", "--output", str(archive))
    stores = {}
    for in_place in (True, False):
        monkeypatch.setattr(restore_module, "seeded", lambda in_place=in_place: in_place)
        data = DataDir(tmp_path / f"restored-{in_place}")
        restore(archive, data, "r", Ports("127.0.0.1", free_port(), free_port(), free_port()))
        stores[in_place] = store_items(data.etcd_dir / "member/snap/db")
    assert stores[True] == stores[False]
    assert len(stores[True]) > 10


def test_a_cluster_restored_in_place_serves_its_backup(tmp_path: Path) -> None:
    with cluster_of(tmp_path / "c", 1) as cluster:
        cluster.ok("deploy", "web", "--image", "nginx:1.27", "--replicas", "2")
        before = cluster.ok("status", "--json").json()
        archive = tmp_path / "backup.tar.gz"
        cluster.ok("backup", "--output", str(archive))
        token = cluster.token
    drill = Cluster(tmp_path / "drill")
    drill.root.mkdir()
    drill.token = token
    node = drill.new_node("r")
    done = run([JACO, "restore", "--input", str(archive), "--name", "r", *node.port_flags()])
    assert done.code == 0, done.err
    try:
        node.start()
        drill.wait_ready(["r"])
        assert drill.ok("status", "--json").json() == before
        drill.ok("deploy", "api", "--image", "api:2")  # a write after the restore is applied
        assert [d["name"] for d in drill.ok("status", "--json").json()["deployments"]] == [
            "api",
            "web",
        ]
    finally:
        drill.stop_all()


def test_a_snapshot_that_cannot_be_linked_is_copied_privately(tmp_path: Path) -> None:
    """On a filesystem without O_TMPFILE the snapshot had a name for an instant and cannot be
    linked again: it is copied into place instead, readable by its owner only."""
    body = os.urandom(3 * 1024 * 1024 + 5)
    named = tmp_path / "scratch"
    fd = os.open(named, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, body)
        named.unlink()
        db = tmp_path / "snap" / "db"
        db.parent.mkdir()
        db.write_bytes(b"the seed's")
        seeded_restore._put_in_place(fd, db)
    finally:
        os.close(fd)
    assert db.read_bytes() == body
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert [p.name for p in db.parent.iterdir()] == ["db"]


def test_a_store_it_cannot_change_in_place_is_copied_by_etcds_tool(tmp_path: Path) -> None:
    """A store without `consistent_index` (an etcd that has applied no write to its store yet,
    only a lease): etcd's tool restores it, by its copy, as it would have."""
    etcd = _Etcd()
    with etcd.new_member(tmp_path / "src"):
        etcd.ctl("lease", "grant", "100", check=True)
        snapshot = tmp_path / "lease-only.db"
        etcd.ctl("snapshot", "save", str(snapshot), check=True)
    index = "/" + b"meta".hex() + "/" + b"consistent_index".hex()
    assert index not in store_items(snapshot)
    config = _config("r")
    tool, ours = DataDir(tmp_path / "tool"), DataDir(tmp_path / "ours")
    tool.path.mkdir()
    snapshot_restore(snapshot, tool, config)
    written = _seeded(snapshot, ours, config)
    db = ours.etcd_dir / "member/snap/db"
    assert db.stat().st_ino != written  # the tool's copy
    assert store_items(db) == store_items(tool.etcd_dir / "member/snap/db")


def test_a_consistent_index_outside_its_page_is_not_written_there(
    snapshot: Path, tmp_path: Path
) -> None:
    """A store whose `consistent_index` element points past its page (at a copy of the key at
    the end of the file): the eight bytes are not written there."""
    data = bytearray(snapshot.read_bytes()[:-32])
    with BoltFile(snapshot) as bolt:
        value_at, _ = bolt.value_at(b"meta", b"consistent_index")
        page_size = bolt.page_size
    key_at = value_at - len(b"consistent_index")
    header = next(
        at
        for at in range(key_at // page_size * page_size, key_at)
        if LEAF_ELEMENT.unpack_from(data, at)[1:] == (key_at - at, 16, 8)
    )
    data += b"\0" * (page_size - 16) + b"consistent_index" + bytes(8)
    struct.pack_into("<I", data, header + 4, len(data) - 8 - 16 - header)  # its key's position
    crafted = tmp_path / "crafted.db"
    crafted.write_bytes(data)
    with BoltFile(crafted) as bolt, pytest.raises(SnapshotFileError, match="holds 0"):
        bolt.value_at(b"meta", b"consistent_index")


def test_a_copy_the_disk_cannot_hold_is_refused_before_it_is_written(tmp_path: Path) -> None:
    """Restore reserves room for one copy of the snapshot: the fallback's second is asked for
    before a byte of it is written, and refused in one line."""
    named = tmp_path / "scratch"
    fd = os.open(named, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, os.urandom(3 * 1024 * 1024))
        named.unlink()
        with tmpfs(tmp_path / "small", "size=2m") as small:
            db = small / "db"
            db.write_bytes(b"the seed's")
            with pytest.raises(JacoError, match="needs 3145728 bytes but the filesystem holding"):
                seeded_restore._put_in_place(fd, db)
            assert [p.name for p in small.iterdir()] == ["db"]
            assert db.read_bytes() == b"the seed's"
    finally:
        os.close(fd)


def test_an_environment_asking_for_etcds_v2_api_changes_nothing(
    snapshot: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ETCDCTL_API", "2")  # etcdctl 3.4 then knows no `version`, no snapshots
    assert _seeded_here()
    tool = DataDir(tmp_path / "tool")
    tool.path.mkdir()
    snapshot_restore(snapshot, tool, _config("r"))
    assert (tool.etcd_dir / "member/snap/db").exists()


def _compaction(db: Path) -> tuple[int, int]:
    """The store's scheduled and finished compaction revisions (0 if none)."""
    items = store_items(db)

    def rev(name: bytes) -> int:
        value = items.get("/" + b"meta".hex() + "/" + name.hex(), b"")
        return int.from_bytes(value[:8], "big")

    return rev(b"scheduledCompactRev"), rev(b"finishedCompactRev")


def test_a_snapshot_taken_mid_compaction_gives_the_tools_store_once_etcd_has_run(
    tmp_path: Path,
) -> None:
    """etcd compacts in batches after it answers the compaction; a snapshot taken meanwhile
    holds revisions the compaction has still to delete. etcd's restore tool finishes that in
    its copy (606 values left of 1203 here); the store made in place leaves it to etcd, which
    finishes it when it starts.
    Once each has run, the two stores are the same, value for value, and neither serves the
    compacted revision."""
    etcd = _Etcd()
    # 600 revisions to delete, one a batch, etcd resting 10 ms after each: seconds of window
    slow = ("--experimental-compaction-batch-limit=1", "--max-txn-ops=1000")
    with etcd.new_member(tmp_path / "source", *slow):
        for round_ in (1, 2):
            puts = "".join(f"put /k/{i:04} round-{round_}\n" for i in range(600))
            etcd.ctl("txn", stdin=f"\n{puts}\n\n", check=True)
        etcd.ctl("compact", "3", check=True)
        snapshot = tmp_path / "snap.db"
        etcd.ctl("snapshot", "save", str(snapshot), check=True)
    scheduled, finished = _compaction(snapshot)
    assert scheduled == 3 and finished < scheduled, (scheduled, finished)  # mid-compaction

    config = _config("r")
    tool, ours = DataDir(tmp_path / "tool"), DataDir(tmp_path / "ours")
    tool.path.mkdir()
    snapshot_restore(snapshot, tool, config)
    _seeded(snapshot, ours, config)
    assert _compaction(ours.etcd_dir / "member/snap/db") == (scheduled, finished)  # as taken

    stores = {}
    for data in (tool, ours):
        db = data.etcd_dir / "member/snap/db"
        with etcd.serving(data.etcd_dir, "r", _peer(config), *slow):
            wait_for(lambda db=db: _compaction(db)[1] == 3, 60, "the compaction to finish")
            old = etcd.ctl("get", "/k/0000", "--rev=2")
            assert "required revision has been compacted" in old.stderr, old
            assert etcd.ctl("get", "/k/0599", "--print-value-only").stdout == "round-2\n"
        stores[data.path.name] = store_items(db)
    assert stores["tool"] == stores["ours"]
    assert len([k for k in stores["ours"] if k.startswith("/" + b"key".hex() + "/")]) == 600
