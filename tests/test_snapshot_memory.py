"""The snapshot pass's memory does not grow with the store (issue 16: every process flat from
10⁴ to 10⁷ keys).

`read_snapshot_state` runs in jacod while it serves a backup, in `jaco restore` and in the
drill's agent, for either version of the state digest (version 2 reads the file as a
stream, with a few bytes a page held beside its runs). Its sort holds RUN_BYTES of records
(two runs: one filling, one being written), then the merge's read buffers (their share of
one run). What it adds to its process is measured here, as the kernel counts it (the peak
resident set), in a process of its own over a real snapshot holding several times RUN_BYTES
of small records.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from infra.localcluster import cluster_of
from jaco.archive.snapshot_file import RUN_BYTES
from jaco.model.etcd import Etcd, op_put
from jaco.model.keys import ROOT
from jaco.node.config import DataDir
from tests.archives import bolt_tree

MIB = 1024 * 1024
BULK = ROOT + "bulk/"
RECORDS = 300_000  # about 80 MiB as the sort counts them: 37-byte keys, 200-byte values
BATCH = 2000  # puts per transaction (the test cluster allows 2048)
# What the pass may add to its process. `jaco restore` takes 73 MiB at 10⁴ keys; bench's
# flat test allows 1.25 times that and 10 MiB at any size: 101 MiB, so 28 MiB for the pass.
ADDED = 28 * MIB

MEASURE = """
import json, sys
from pathlib import Path
from jaco.archive.bolt import SnapshotFileError
from jaco.archive.snapshot_file import read_snapshot_state
def peak():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
snapshot, scratch, run_bytes = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]) or None
version = int(sys.argv[4])
before = peak()
try:
    state = read_snapshot_state(snapshot, scratch, run_bytes, version=version)
    found = {"records": sum(state.counts.values())}
except SnapshotFileError as exc:
    found = {"refused": str(exc)}
print(json.dumps({"added": peak() - before, **found}))
"""


def _store(root: Path) -> Path:
    """A snapshot of one node holding RECORDS small records under jaco's root."""
    with cluster_of(root, 1) as cluster:
        node = cluster.nodes["node-1"]

        async def fill() -> None:
            etcd = Etcd(DataDir(node.data_dir).etcd_socket)
            try:
                value = b"v" * 200
                for start in range(0, RECORDS, BATCH):
                    keys = range(start, min(start + BATCH, RECORDS))
                    await etcd.txn([], [op_put(f"{BULK}{i:010d}-padding", value) for i in keys])
            finally:
                await etcd.close()

        asyncio.run(fill())
        return node.save_snapshot(root / "etcdctl.db")


def _added(snapshot: Path, scratch: Path, run_bytes: int, version: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(snapshot), str(scratch), str(run_bytes), str(version)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout)


def test_the_pass_holds_its_runs_not_the_store(tmp_path: Path) -> None:
    """With the default runs the pass adds at most ADDED to its process over a store of
    several runs. The same store read with runs large enough to hold it whole adds more than
    that: the measure sees what a pass holds, so the bound is the runs' doing, not a
    store too small to show anything."""
    snapshot = _store(tmp_path / "store")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for version in (1, 2):  # the walk of the file; the pass over its bytes as they come
        default = _added(snapshot, scratch, 0, version)
        assert default["records"] >= RECORDS
        whole = _added(snapshot, scratch, 1024 * MIB, version)
        # 300 000 records held whole: 87 MiB with their values (version 1), 45 MiB with their
        # values' hashes (version 2): over the bound either way
        assert whole["added"] > ADDED, (version, whole)
        assert default["added"] <= ADDED, (version, default, RUN_BYTES)
        assert list(scratch.iterdir()) == []


PAGE_BYTES = 32  # what the stream pass may hold a page position of the file


def test_the_stream_pass_holds_a_few_bytes_a_page(tmp_path: Path) -> None:
    """What the pass over a stream keeps of every page position (its kind, its faults, its
    highest revision; a branch's children; a bit for each walk that reaches it) is all it
    holds of a file whose million leaves are empty: at most PAGE_BYTES a page, so a store of
    10⁷ keys (a million 4 KiB pages) costs jacod tens of MiB beside its sort, not hundreds."""
    pages = bolt_tree(tmp_path / "tree.db", 1_000_000)
    measured = _added(tmp_path / "tree.db", tmp_path, 0, 2)
    # the key tree's walk reached every leaf; what stops the pass is the store's content
    assert measured["refused"].startswith("the snapshot holds no jaco cluster"), measured
    # a byte a page at least (its kind): the measure sees the notes
    assert pages < measured["added"] <= PAGE_BYTES * pages, (measured["added"] / pages, measured)
