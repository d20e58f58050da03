"""Build hostile variants of a real backup archive, for the bad-input tests."""

from __future__ import annotations

import datetime as dt
import functools
import gzip
import hashlib
import io
import json
import struct
import tarfile
from pathlib import Path
from typing import Any

from jaco.archive.bolt import fnv64a
from jaco.archive.meta import BackupMeta


def a_meta(**fields: Any) -> BackupMeta:
    """A valid meta.json for tests that need one, with `fields` set."""
    base: dict[str, Any] = {
        "cluster_id": "c1",
        "snapshot_index": 10,
        "snapshot_term": 1,
        "jaco_version": "0.1.0",
        "taken_at": dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
        "leader_at_snapshot": "node-1",
        "format": 2,
        "snapshot_sha256": "0" * 64,
        "snapshot_size": 1,
        "counts": {},
        "state_digest": "0" * 64,
    }
    return BackupMeta(**{**base, **fields})


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


# -- archives that cost a naive reader memory, time or disk -------------------------------

ZEROS = 16 * 1024 * 1024


@functools.cache
def _zeros_member() -> bytes:
    return gzip.compress(b"\0" * ZEROS, compresslevel=9)


def zeros_gz(size: int) -> bytes:
    """`size` zero bytes (rounded up to 16 MiB) as concatenated gzip members, which gzip
    readers inflate as one stream: 1 GiB costs about 1 MB."""
    return _zeros_member() * -(-size // ZEROS)


def header(name: str, kind: bytes, size: int, fmt: int = tarfile.GNU_FORMAT) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = size
    return info.tobuf(fmt)


def pax_record(key: str, value: str) -> bytes:
    """One `LEN key=value\\n` record; LEN counts its own digits."""
    body = f" {key}={value}\n".encode()
    length = len(body) + len(str(len(body)))
    length = len(body) + len(str(length))
    return str(length).encode() + body


def pax_header(records: bytes, declared: int | None = None) -> bytes:
    """A pax 'x' header and its records (declaring `declared` bytes of them if given)."""
    size = len(records) if declared is None else declared
    block = records + b"\0" * (-len(records) % tarfile.BLOCKSIZE)
    return header("./PaxHeaders/snapshot.bin", tarfile.XHDTYPE, size, tarfile.USTAR_FORMAT) + block


def bomb(path: Path, head: bytes, zeros: int) -> Path:
    """gzip of `head` followed by `zeros` zero bytes (which also end the tar)."""
    path.write_bytes(gzip.compress(head) + zeros_gz(zeros + 2 * tarfile.BLOCKSIZE))
    return path


def bolt_head(page_size: int = 4096, pages: int = 4, txid: int = 1) -> bytes:
    """A first page that looks like an etcd snapshot's (a bbolt meta page: root tree at page
    3, freelist at 2, `pages` pages, transaction `txid`)."""
    page = struct.pack("<QHHI", 0, 0x04, 0, 0)
    meta = struct.pack("<IIII QQ QQQ", 0xED0CDAED, 2, page_size, 0, 3, 0, 2, pages, txid)
    meta += struct.pack("<Q", fnv64a(meta))
    return (page + meta).ljust(page_size, b"\0")


def bolt_tree(path: Path, leaves: int, page_size: int = 512) -> int:
    """A bbolt file of `page_size` pages whose b'key' bucket's tree reaches `leaves` empty
    leaves through branches as full as a page allows: a pass over it keeps its notes of every
    page, and nothing in its sort. Returns the file's page count."""
    fanout = (page_size - 16) // 16
    levels, ids, next_id = [], list(range(4, 4 + leaves)), 4 + leaves
    while len(ids) > 1:
        groups = [ids[i : i + fanout] for i in range(0, len(ids), fanout)]
        levels.append(groups)
        ids = list(range(next_id, next_id + len(groups)))
        next_id += len(groups)
    key_root, pages = ids[0], next_id

    def page(pid: int, flags: int, body: bytes, count: int) -> bytes:
        return (struct.pack("<QHHI", pid, flags, count, 0) + body).ljust(page_size, b"\0")

    bucket = struct.pack("<QQ", key_root, 0)  # a bucket of its own pages (root not 0)
    root_leaf = struct.pack("<IIII", 1, 16, 3, len(bucket)) + b"key" + bucket
    with path.open("wb") as out:
        out.write(bolt_head(page_size, pages, 1) + bolt_head(page_size, pages, 2))
        out.write(page(2, 0x10, b"", 0) + page(3, 0x02, root_leaf, 1))
        empty = bytes(page_size - 16)
        for pid in range(4, 4 + leaves):
            out.write(struct.pack("<QHHI", pid, 0x02, 0, 0) + empty)
        pid = 4 + leaves
        for groups in levels:
            for children in groups:
                body = b"".join(struct.pack("<IIQ", 0, 0, child) for child in children)
                out.write(page(pid, 0x01, body, len(children)))
                pid += 1
    return pages


def etcd_trailed(body: bytes) -> bytes:
    """`body` with the SHA-256 etcd appends to every snapshot it streams."""
    return body + hashlib.sha256(body).digest()


def cut_in_half(good: Path, out: Path) -> Path:
    """`good`'s first half, at `out` (a download or a copy that stopped)."""
    data = good.read_bytes()
    out.write_bytes(data[: len(data) // 2])
    return out


def flipped(mask: int) -> Any:
    """A maker of `good` with its middle byte XORed with `mask`, at `out`."""

    def make(good: Path, out: Path) -> Path:
        data = bytearray(good.read_bytes())
        data[len(data) // 2] ^= mask
        out.write_bytes(bytes(data))
        return out

    return make
