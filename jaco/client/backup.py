"""`jaco backup` on the client side: the Backup RPC streamed into an archive file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaco.archive.format import check_archive_output, write_archive
from jaco.archive.meta import BackupMeta
from jaco.client.connection import BACKUP_TIMEOUT, Client
from jaco.errors import ArchiveError
from jaco.v1 import jaco_pb2 as pb


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int
    meta: BackupMeta


def take_backup(
    client: Client,
    output: Path,
    timeout: float = BACKUP_TIMEOUT,
    on_size: Callable[[int], None] = lambda size: None,
    progress: Callable[[int], None] | None = None,
) -> BackupResult:
    """Stream a snapshot from the server into `output` (atomically, mode 0600).

    An output that cannot take an archive is refused before the server is asked for one."""
    check_archive_output(output)
    stream = client.stream("Backup", pb.BackupRequest(), timeout=timeout)
    try:
        return write_backup_stream(stream, output, on_size, progress)
    finally:
        stream.close()  # cancel the call now, before the caller closes the channel


def write_backup_stream(
    stream: Iterator[Any],
    output: Path,
    on_size: Callable[[int], None] = lambda size: None,
    progress: Callable[[int], None] | None = None,
) -> BackupResult:
    """Write the Backup RPC's messages to an archive.

    Format 2 servers send the size, the data, then meta.json; format 1 servers (older jacod)
    send meta.json first. Either way the archive is written snapshot first."""
    first: Any = next(stream, None)
    kind = first.WhichOneof("part") if first is not None else None
    received: list[BackupMeta] = []
    if kind == "snapshot_size":
        size = first.snapshot_size
    elif kind == "meta_json":
        received.append(BackupMeta.parse(first.meta_json))
        size = received[0].snapshot_size
    else:
        raise ArchiveError("the server did not start the backup with the snapshot's size")
    on_size(size)

    def chunks() -> Iterator[bytes]:
        for message in stream:
            part = message.WhichOneof("part")
            if part == "data":
                yield message.data
            elif part == "meta_json" and not received:
                received.append(BackupMeta.parse(message.meta_json))
                return
            else:
                raise ArchiveError(f"the server sent an unexpected {part} mid-stream")

    def meta() -> BackupMeta:
        if not received:
            raise ArchiveError("the server ended the backup without its meta.json")
        if next(stream, None) is not None:
            raise ArchiveError("the server sent data after the backup's meta.json")
        return received[0]

    archive_size = write_archive(output, size, chunks(), meta, progress)
    return BackupResult(output, archive_size, received[0])
