"""Build hostile variants of a real backup archive, for the bad-input tests."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any


def members(archive: Path) -> tuple[dict[str, Any], bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        meta_file = tar.extractfile("meta.json")
        snap_file = tar.extractfile("snapshot.bin")
        assert meta_file is not None and snap_file is not None
        return json.loads(meta_file.read()), snap_file.read()


def build(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """A gzip'd tar of `entries`, written header by header so that headers may lie."""
    raw = io.BytesIO()
    for info, data in entries:
        raw.write(info.tobuf(tarfile.GNU_FORMAT))
        if data:
            raw.write(data + b"\0" * (-len(data) % tarfile.BLOCKSIZE))
    raw.write(b"\0" * tarfile.BLOCKSIZE * 2)
    path.write_bytes(gzip.compress(raw.getvalue()))
    return path


def regular(name: str, data: bytes, size: int | None = None) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data) if size is None else size
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, None


def meta_bytes(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta).encode()
