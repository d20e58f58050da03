"""etcd's restore without its copy of the snapshot (etcdctl 3.4.23).

`etcdctl snapshot restore` copies the snapshot into the new data dir (`member/snap/db`), then
changes one value in that copy: the `meta` bucket's `consistent_index`, set to the commit
index of the single-member raft log it writes beside it. (Two cases differ. A compaction
scheduled but not finished when the snapshot was taken is finished in the tool's copy; on the
store made here etcd finishes it at its first start, and the stores are equal from then on
(tests/test_restore_seeded.py, a snapshot taken with 600 revisions left to delete). A user key
named like the old member's id the tool would delete: jaco's keys all live under its own
prefix.) That log (the WAL) and the raft
snapshot depend on the member's name, its peer URL and the cluster token, not on the store.
(tests/test_restore_seeded.py holds both to that: bucket by bucket and file by file, against
the tool's own restore of the same snapshot.) The copy was most of a large restore: 2.2 GB
written a second time, into memory this host had to find (docs/benchmarks.md, stop 40).

So jaco lets etcd's tool restore an empty bbolt store (16 KiB, written here), and puts the
snapshot file it has already written and checked in the place of the seed's `db`, with etcd's
trailer cut off and `consistent_index` set to the value the tool wrote into the seed: the
same eight bytes, in place (bbolt keeps no checksum of its data pages). Only with etcdctl 3.4.23,
whose restore this is known to match. Any other tool restores the whole snapshot as before:
etcdutl, of etcd 3.5 and later, also writes the new membership into the store. So does a
store this cannot change so (`adopt`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

from jaco.archive.bolt import (
    ETCD_TRAILER,
    MAGIC,
    META_PAGE,
    PAGE_HEADER,
    VERSION,
    BoltFile,
    SnapshotFileError,
    fnv64a,
)
from jaco.errors import ArchiveError
from jaco.files import anonymous_file, create_private, fsync_dir, require_space
from jaco.node.config import DataDir, NodeConfig
from jaco.node.etcd_member import restore_tool, snapshot_restore, tool_env

META_BUCKET, CONSISTENT_INDEX = b"meta", b"consistent_index"
PAGE = 4096
FREELIST_PAGE, LEAF_PAGE = 0x10, 0x02
# the one release whose restore tests/test_restore_seeded.py compares with (Debian bookworm's)
TOOL_34 = re.compile(r"^etcdctl version: 3\.4\.23$", re.MULTILINE)


@functools.cache
def seeded() -> bool:
    """Whether this host's restore tool is etcdctl 3.4.23, the one whose restore is known."""
    try:  # etcdutl, where installed, is the tool: it says "etcdutl version", and is refused
        said = subprocess.run(
            [restore_tool(), "version"], capture_output=True, text=True, timeout=30, env=tool_env()
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return TOOL_34.search(said.stdout) is not None


def empty_store() -> bytes:
    """An empty bbolt database as bbolt creates one: two meta pages, an empty freelist, an
    empty root leaf."""
    pages = bytearray(4 * PAGE)
    for txid in (0, 1):
        at = txid * PAGE
        PAGE_HEADER.pack_into(pages, at, txid, META_PAGE, 0, 0)
        # magic, version, page size, flags, root bucket (page 3), freelist (page 2), 4 pages
        body = struct.pack("<IIIIQQQQQ", MAGIC, VERSION, PAGE, 0, 3, 0, 2, 4, txid)
        pages[at + PAGE_HEADER.size : at + PAGE_HEADER.size + len(body)] = body
        struct.pack_into("<Q", pages, at + PAGE_HEADER.size + len(body), fnv64a(body))
    PAGE_HEADER.pack_into(pages, 2 * PAGE, 2, FREELIST_PAGE, 0, 0)
    PAGE_HEADER.pack_into(pages, 3 * PAGE, 3, LEAF_PAGE, 0, 0)
    return bytes(pages)


def restore_seed(data: DataDir, config: NodeConfig) -> None:
    """etcd's tool restores the empty store into the staged data dir: its raft log and
    snapshot, and a `db` that `adopt` replaces."""
    with anonymous_file(data.path) as seed:
        seed.write(empty_store())
        seed.flush()
        copy_restore(seed.fileno(), data, config)


def copy_restore(fd: int, data: DataDir, config: NodeConfig) -> None:
    """etcd's tool restores the file open at `fd` into the data dir, copying it there."""
    snapshot_restore(Path(f"/proc/self/fd/{fd}"), data, config, pass_fds=(fd,))


def adopt(snapshot: int, data: DataDir, config: NodeConfig) -> None:
    """The open, checked `snapshot` file becomes the seeded data dir's `member/snap/db` (its
    descriptor must be of this data dir's filesystem), as etcd's tool would have made it. A
    store this cannot change so (`consistent_index` missing, twice, of another size, outside
    its page) is restored by etcd's tool instead, which copies it."""
    db = data.etcd_dir / "member" / "snap" / "db"
    path = Path(f"/proc/self/fd/{snapshot}")
    try:
        with BoltFile(db) as made:
            index = made.read(*made.value_at(META_BUCKET, CONSISTENT_INDEX))
        with BoltFile(path) as store:
            at, length = store.value_at(META_BUCKET, CONSISTENT_INDEX)
        if length != len(index):
            raise SnapshotFileError(f"its consistent_index is {length} bytes, not {len(index)}")
    except SnapshotFileError:
        shutil.rmtree(data.etcd_dir)
        copy_restore(snapshot, data, config)
        return
    size = os.fstat(snapshot).st_size
    if size % 512 == ETCD_TRAILER:  # what etcd's tool cuts off, as it does
        os.ftruncate(snapshot, size - ETCD_TRAILER)
    os.pwrite(snapshot, index, at)
    os.fsync(snapshot)
    _put_in_place(snapshot, db)


def _put_in_place(snapshot: int, db: Path) -> None:
    """The snapshot file named `db`, replacing the seed's: linked (a file without a name,
    jaco.files.anonymous_file), or copied where it cannot be (a filesystem without O_TMPFILE)."""
    staged = db.with_name("db.jaco")
    fds = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY)
    try:  # linkat(2) with AT_SYMLINK_FOLLOW (a dir fd makes Python call linkat, not link)
        os.link(str(snapshot), staged, src_dir_fd=fds, follow_symlinks=True)
        linked = True
    except OSError:
        linked = False
    finally:
        os.close(fds)
    try:
        if not linked:
            _copy(snapshot, staged)
        os.replace(staged, db)
    except BaseException:
        with contextlib.suppress(OSError):
            staged.unlink()
        raise
    fsync_dir(db.parent)


def _copy(snapshot: int, to: Path) -> None:
    size, done = os.fstat(snapshot).st_size, 0
    what = "copying the snapshot into etcd's store (this filesystem cannot link it)"
    require_space(to.parent, size, what)  # restore reserved room for one copy, not two
    with create_private(to) as out:
        while done < size:
            copied = os.copy_file_range(snapshot, out.fileno(), size - done, done, done)
            if not copied:
                raise ArchiveError("the snapshot file ended before its size")
            done += copied
        os.fsync(out.fileno())
