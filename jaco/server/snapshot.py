"""Taking a snapshot on a node: etcd's snapshot stream, passed on as it arrives, then its meta.

The snapshot is etcd's own Maintenance.Snapshot stream, byte for byte, so `etcdctl snapshot
restore` can read it. The bytes go to the caller as etcd sends them, and through the pass of
state digest version 2 (jaco.archive.snapshot_file.StatePass) on their way: its store
revision (`snapshot_index`), the per-table counts, the state digest and the audit head are
those of exactly the bytes sent, with no second read of the live store, no extra load on it,
and no copy of the bytes on the node's disk.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import hashlib
import os
import threading
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from jaco import __version__
from jaco.archive.bolt import ETCD_TRAILER, SnapshotFileError
from jaco.archive.meta import FORMAT, AuditHead, BackupMeta
from jaco.archive.snapshot_file import StatePass
from jaco.errors import Unavailable
from jaco.model import pki
from jaco.model.etcd import Etcd
from jaco.model.etcd_snapshot import SnapshotStream
from jaco.model.keys import K_HEAD
from jaco.model.store import Store
from jaco.server.convert import data_chunk

SNAPSHOT_TIMEOUT = 600.0
MESSAGE_BYTES = 1024 * 1024  # etcd sends 32 KiB pieces; pass them on in 1 MiB messages
QUEUED_PIECES = 8  # at most this many MiB wait between the receiving thread and the client
# The nice of a backup's threads (receiving and feeding the meta's pass, ending it), above
# jacod's: a backup yields the CPU to etcd and to the API's writes (bench.write_p99 at 2 GiB:
# the API's write p99 during a backup 1.75x that during etcdctl's save, 2.21x with these
# threads not lowered, stop 34).
BACKUP_NICE = 10
T = TypeVar("T")


@dataclass(frozen=True)
class Announce:
    """The first part of a snapshot stream: how many bytes snapshot.bin will have."""

    size: int


async def stream_snapshot(
    store: Store, directory: Path
) -> AsyncGenerator[Announce | bytes | BackupMeta, None]:
    """Announce the size, pass on the snapshot's bytes, then yield its meta.

    A worker thread receives etcd's stream, hashes it, hands 1 MiB pieces to the event loop
    as serialized BackupChunk messages (`bytes`), which the loop only passes on (it stays
    free for the API while a snapshot streams), and feeds each piece to the meta's pass once
    it is handed over. The pass ends on a thread lowered like the receiving one. Only a store
    too large for the pass's sort in memory writes to `directory`: its sorted runs, in unnamed
    files (gone when closed, or when the process dies), a fraction of the snapshot's size.
    """
    etcd = store.etcd
    # A linearizable read first: a follower catches up to the commit index before it snapshots.
    await etcd.get(K_HEAD)
    directory.mkdir(mode=0o700, exist_ok=True)  # noqa: ASYNC240 - one syscall
    receiver = _Receiver(etcd, StatePass(directory), asyncio.get_running_loop())
    receiver.start()
    try:
        expected = -1
        while (piece := await receiver.pieces.get()) is not None:
            if isinstance(piece, BaseException):
                raise piece
            if isinstance(piece, int):
                expected = piece
                yield Announce(piece)
                continue
            yield piece
        size = receiver.size  # the thread's count, final once it has handed over None
        if size != expected:
            raise Unavailable(f"etcd's snapshot stream ended after {size} of {expected} bytes")
        status = await etcd.status()
        try:
            state = await _yielding(receiver.state_pass.finish)
        except SnapshotFileError as exc:
            raise Unavailable(f"etcd sent an unreadable snapshot: {exc}") from None
        members = {n.get("member_id"): n["name"] for n in await store.nodes()}
    finally:
        try:
            await receiver.stop()
        finally:  # also when a second cancellation ends the wait for the receiving thread
            _end_behind(receiver.state_pass)
    yield BackupMeta(
        cluster_id=state.cluster["cluster_id"],
        snapshot_index=state.revision,
        snapshot_term=status.raft_term,
        jaco_version=__version__,
        taken_at=dt.datetime.now(dt.UTC).replace(microsecond=0),
        leader_at_snapshot=members.get(f"{status.leader_id:x}", f"{status.leader_id:x}"),
        format=FORMAT,
        snapshot_sha256=receiver.sha256.hexdigest(),
        snapshot_size=size,
        counts=state.counts,
        state_digest=state.state_digest,
        ca_fingerprint=pki.fingerprint(state.ca.cert_pem),
        audit_head=AuditHead(**state.audit_head) if state.audit_head else None,
    )


class _Receiver:
    """The worker thread of `stream_snapshot`: etcd's 32 KiB pieces in, 1 MiB BackupChunk
    messages out, serialized (after the total size, an int; then None, or the exception that
    ended it)."""

    def __init__(self, etcd: Etcd, state_pass: StatePass, loop: asyncio.AbstractEventLoop) -> None:
        self.pieces: asyncio.Queue[int | bytes | BaseException | None] = asyncio.Queue(
            QUEUED_PIECES
        )
        self.sha256 = hashlib.sha256()
        self.size = 0  # bytes received from etcd
        self.state_pass = state_pass
        self._etcd, self._loop = etcd, loop
        self._stopping = threading.Event()
        self._stream: SnapshotStream | None = None
        self._thread = threading.Thread(target=self._run, name="snapshot-receiver", daemon=True)

    def start(self) -> None:
        self._stream = SnapshotStream.of(self._etcd, SNAPSHOT_TIMEOUT)
        self._thread.start()

    async def stop(self) -> None:
        self._stopping.set()
        if self._stream is not None:
            self._stream.cancel()  # wakes the thread if it waits for etcd
        await asyncio.to_thread(self._thread.join)

    def _hand_over(self, item: int | bytes | BaseException | None) -> bool:
        """Queue `item` for the loop, waiting for room; False once the loop has stopped."""
        future = asyncio.run_coroutine_threadsafe(self.pieces.put(item), self._loop)
        while not self._stopping.is_set():
            try:
                future.result(timeout=0.2)
                return True
            except concurrent.futures.TimeoutError:
                continue
        future.cancel()
        return False

    def _run(self) -> None:
        assert self._stream is not None
        _yield_cpu()
        try:
            pending: list[bytes] = []
            pending_bytes = 0
            announced = False
            for blob, remaining in self._stream:
                if not announced:
                    announced = True
                    if not self._hand_over(len(blob) + remaining + ETCD_TRAILER):
                        return
                pending.append(blob)
                pending_bytes += len(blob)
                if pending_bytes >= MESSAGE_BYTES or not remaining:
                    if not self._pass_on(pending, pending_bytes):
                        return
                    pending, pending_bytes = [], 0
            if pending and not self._pass_on(pending, pending_bytes):
                return
            self._hand_over(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, raised there
            if not self._stopping.is_set():
                self._hand_over(exc)

    def _pass_on(self, pending: list[bytes], size: int) -> bool:
        """Hands one message to the loop, then feeds its pieces to the meta's pass (which the
        client need not wait for: the loop sends while this thread parses)."""
        wire = data_chunk(pending, size)
        self.sha256.update(memoryview(wire)[len(wire) - size :])  # the data, not copied
        self.size += size
        if not self._hand_over(wire):
            return False
        for blob in pending:
            self.state_pass.feed(blob)
        return True


async def _yielding(work: Callable[..., T], *args: object) -> T:
    """`work(*args)` on a thread of its own, lowered by BACKUP_NICE like the receiving thread
    (and so are the threads it starts: a new thread inherits its creator's nice). Not on
    asyncio's shared threads, which serve the API afterwards and could not be raised again."""
    pool = concurrent.futures.ThreadPoolExecutor(1, "snapshot-meta", initializer=_yield_cpu)
    try:
        return await asyncio.get_running_loop().run_in_executor(pool, work, *args)
    finally:
        pool.shutdown(wait=False)  # done, or left to end on its own if the call was cancelled


def _end_behind(state_pass: StatePass) -> None:
    """End `state_pass` on a thread of its own, lowered like the receiving thread, and return
    at once: a large store's spilled runs are closed there, and the kernel frees their blocks
    and cached pages, which neither the event loop (every call the node serves) nor the
    backup should wait for. Nothing to await, so no cancellation skips it; jacod's exit waits
    for the thread. A finished pass has nothing left to end."""

    if state_pass.ended:
        return

    def end() -> None:
        _yield_cpu()
        state_pass.abort()

    threading.Thread(target=end, name="snapshot-pass-end").start()


def _yield_cpu() -> None:
    """Lower the calling thread's priority (Linux: a thread's nice is its own) by BACKUP_NICE,
    up to 19; anyone may lower their own. Nothing else depends on it: a failure is ignored."""
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        niced = min(19, os.getpriority(os.PRIO_PROCESS, tid) + BACKUP_NICE)
        os.setpriority(os.PRIO_PROCESS, tid, niced)
