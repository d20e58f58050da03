"""etcd's snapshot stream, read by a worker thread on a blocking channel of its own."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import grpc
import grpc.experimental
from aetcd import rpc

from jaco.model.etcd import Etcd, channel_options
from jaco.model.etcd_errors import translate


class SnapshotStream:
    """Iterates (piece, bytes of the database still to come after it); `cancel` from any
    thread ends it."""

    @classmethod
    def of(cls, etcd: Etcd, timeout: float) -> SnapshotStream:
        """etcd's Maintenance.Snapshot stream of the member `etcd` talks to, byte for byte (it
        ends with a SHA-256 trailer), for a worker thread: a blocking channel of its own keeps
        the 32 KiB pieces (tens of thousands per GiB) off the event loop."""
        return cls(etcd.target, timeout)

    def __init__(self, target: str, timeout: float):
        # The pieces are read on the iterating thread itself: by default a second thread (the
        # channel's) receives each one and wakes the reader, two thread switches per 32 KiB.
        options = [
            *channel_options(),
            (grpc.experimental.ChannelOptions.SingleThreadedUnaryStream, 1),
        ]
        self._channel = grpc.insecure_channel(target, options=options)
        stub = rpc.MaintenanceStub(self._channel)
        self._call = stub.Snapshot(rpc.SnapshotRequest(), timeout=timeout)

    def __iter__(self) -> Iterator[tuple[bytes, int]]:
        try:
            for resp in self._call:
                blob = resp.blob  # each read of the field is a copy
                if blob:
                    yield blob, resp.remaining_bytes
        except grpc.RpcError as exc:
            raise translate(exc) from None
        finally:
            self._drain()

    def cancel(self) -> None:
        """From any thread: end the call; the iterating thread wakes with an error."""
        self._channel.close()

    def _drain(self) -> None:
        """On the iterating thread, once it is done: end the call and take its last events. A
        single-threaded call is freed only when its own reader has taken every event: cancelled
        any other way, each backup abandoned mid-stream left its connection to etcd open."""
        self.cancel()
        with contextlib.suppress(grpc.RpcError, ValueError):
            for _ in self._call:
                pass
