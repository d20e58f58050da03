"""`jaco backup` on the client side: the Backup RPC streamed into an archive file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jaco.archive import ArchiveError, validate_meta, write_archive
from jaco.client import Client
from jaco.v1 import jaco_pb2 as pb

DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True)
class BackupResult:
    path: Path
    size: int
    meta: dict[str, Any]


def take_backup(
    client: Client,
    output: Path,
    timeout: float = DEFAULT_TIMEOUT,
    on_meta: Callable[[dict[str, Any]], None] = lambda meta: None,
    progress: Callable[[int], None] = lambda n: None,
) -> BackupResult:
    """Stream a snapshot from the server into `output` (atomically, mode 0600)."""
    stream = client.stream("Backup", pb.BackupRequest(), timeout=timeout)
    try:
        return _write(stream, output, on_meta, progress)
    finally:
        stream.close()  # cancel the call now, before the caller closes the channel


def _write(
    stream: Iterator[Any],
    output: Path,
    on_meta: Callable[[dict[str, Any]], None],
    progress: Callable[[int], None],
) -> BackupResult:
    first = next(stream, None)
    if first is None or first.WhichOneof("part") != "meta_json":
        raise ArchiveError("the server did not start the backup with its meta.json")
    meta = validate_meta(first.meta_json.encode())
    on_meta(meta)

    def chunks() -> Iterator[bytes]:
        for message in stream:
            if message.WhichOneof("part") != "data":
                raise ArchiveError("the server sent a second meta.json mid-stream")
            yield message.data

    size = write_archive(output, meta, chunks(), progress)
    return BackupResult(output, size, meta)
