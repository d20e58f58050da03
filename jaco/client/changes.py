"""The Changes RPC as a stream of typed records: a revision's changes, or progress."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from jaco.archive.segment import Change, RevisionRecord
from jaco.client.connection import Client
from jaco.v1 import jaco_pb2 as pb


@dataclass(frozen=True)
class Progress:
    """Every change up to `revision` has been delivered."""

    revision: int
    at: str


def follow_changes(client: Client, from_revision: int) -> Iterator[RevisionRecord | Progress]:
    """Every change from `from_revision` on, until the connection ends (a JacoError: the
    server went away, or `Compacted`). No deadline: the stream is meant to stay open; the
    channel's keepalive notices a server that vanished."""
    request = pb.ChangesRequest(from_revision=from_revision)
    for batch in client.stream("Changes", request):
        if batch.progress:
            yield Progress(batch.revision, batch.at)
        else:
            changes = tuple(Change(c.key.encode(), c.value, c.delete) for c in batch.changes)
            yield RevisionRecord(batch.revision, batch.at, changes)
