"""The backup archive: `cluster-YYYY-MM-DD.tar.gz` holding `snapshot.bin` then `meta.json`.

Written streaming (constant memory) through a gzip encoder into a temp name that is fsynced
and renamed, mode 0600 (jaco.files): a failed write never leaves a file under the final name.
meta.json comes last because it is read from the finished snapshot (archive format 2);
format 1 archives, meta.json first, stay readable. Reading is hostile-input code, bounded
before anything is spent: the tar is read by jaco.archive.ustar (headers of the kinds jaco
writes, nothing loaded whole), exactly the two expected members in an order their format
allows, bounded sizes, snapshot.bin's first page must be an etcd snapshot's, its last 32
bytes the SHA-256 etcd appended to the rest, and its size and SHA-256 are checked against
meta.json. Nothing from the archive is ever executed or unpickled. This module knows nothing
of gRPC, etcd or S3.
"""

from __future__ import annotations

import gzip
import io
import os
import re
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

# isal's igzip reads and writes the same gzip format several times faster than zlib
# (docs/benchmarks.md); it checks the CRC and length like the stdlib does.
from isal import igzip_threaded, isal_zlib

from jaco.archive.bolt import ETCD_TRAILER, SnapshotFileError, check_head
from jaco.archive.deflate import HEADER, GzipWriter
from jaco.archive.meta import MAX_META_BYTES, MAX_SNAPSHOT_BYTES, BackupMeta
from jaco.archive.ustar import TarFormatError, TarReader
from jaco.errors import ArchiveError, InvalidArgument, JacoError
from jaco.files import WriteBehind, check_output_target, disk_full, private_output, syncing
from jaco.streams import CHUNK, BlockSha256, Bounded, ChunkReader, HashingReader

LOOK_AHEAD = 64 * CHUNK
META_NAME = "meta.json"
SNAPSHOT_NAME = "snapshot.bin"


GZIP_SAYS = (  # what gzip and igzip say, and what it means to an operator
    # cut short, or a few bytes appended: too few for a second member's header
    ("Compressed file ended before", "its gzip stream is cut short, or bytes were added after it"),
    ("CRC check failed", "its content does not match the CRC that gzip recorded"),
    ("Incorrect length of data", "its length does not match the length that gzip recorded"),
    ("Corrupted gzip header", "its gzip header is damaged"),
    ("Unknown compression method", "its gzip header names an unknown compression method"),
)


def _gzip_open(raw: IO[bytes], mode: str = "wb") -> IO[bytes]:
    """gzip through isal with the codec (and the raw I/O) on a thread of its own: it escapes
    the GIL, so receiving, hashing and compressing overlap. Written by jaco.archive.deflate
    (what does not deflate is stored, and reads back as a copy), its disk write started as it
    goes (WriteBehind: a backup does not fill the machine's memory with pages to write)."""
    if mode == "wb":
        return cast(IO[bytes], GzipWriter(raw, WriteBehind(raw)))
    return igzip_threaded.open(raw, mode, threads=1, block_size=CHUNK)  # type: ignore[no-any-return]


def _tar_writer(gz: IO[bytes]) -> tarfile.TarFile:
    """A streaming tar writer over gzip that moves 1 MiB at a time: tarfile's default 10 KiB
    records and 16 KiB copies made the gzip codec (and the disk) do 50 times as many calls."""
    return tarfile.open(fileobj=gz, mode="w|", bufsize=CHUNK, copybufsize=CHUNK)  # type: ignore[call-overload]


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    info.mtime = int(time.time())
    info.uname = info.gname = "jaco"
    return info


def check_archive_output(output: Path) -> bool:
    """Refuse, before anything is fetched, an output no archive can be written to: a missing
    or unwritable directory, or anything but a regular file in its place (a device, a
    directory, a FIFO, a socket, a symbolic link such as /dev/stdout). Returns whether an
    existing regular file will be replaced."""
    directory = output.parent
    if not directory.is_dir():
        raise InvalidArgument(f"the directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise InvalidArgument(f"cannot write to {directory}: permission denied or read-only")
    return check_output_target(output)


def write_archive(
    output: Path,
    snapshot_size: int,
    snapshot: Iterable[bytes],
    meta: Callable[[], BackupMeta],
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write snapshot.bin (`snapshot_size` bytes, from chunks), then meta.json as `meta()`
    returns it once the chunks are done, to `output` atomically; returns the archive's size.

    The snapshot's size and SHA-256 as received must match those meta.json records, and its
    last 32 bytes the SHA-256 etcd appended to the rest.
    """
    check_archive_output(output)
    try:
        with private_output(output) as raw:
            with _gzip_open(raw) as gz, _tar_writer(gz) as tar:
                sha256 = SnapshotSha256(snapshot_size)
                chunks = ChunkReader(iter(snapshot), progress)
                # Bounded: the last block read asks for no more, so the message after the
                # snapshot (meta.json, which jacod sends a pass later) is awaited below.
                reader = HashingReader(Bounded(chunks, snapshot_size), sha256=sha256)
                try:
                    tar.addfile(_tarinfo(SNAPSHOT_NAME, snapshot_size), reader)  # type: ignore[arg-type]
                except OSError as exc:
                    if exc.errno is not None or reader.size >= snapshot_size:
                        raise
                    raise ArchiveError(  # tarfile's "unexpected end of data"
                        f"the server ended the snapshot after {reader.size} of the "
                        f"{snapshot_size} bytes it announced"
                    ) from None
                # To disk while jacod reads the meta from its copy: the next message waits for it.
                with syncing(raw):
                    if chunks.read(1):
                        raise ArchiveError(
                            f"the server sent more than the {snapshot_size} snapshot bytes it "
                            "announced"
                        )
                    if problem := sha256.trailer_problem():
                        raise ArchiveError(f"the snapshot the server sent {problem}")
                    described = meta()
                if reader.size != described.snapshot_size:
                    raise ArchiveError(
                        f"the server sent {reader.size} snapshot bytes; its meta.json says "
                        f"{described.snapshot_size}"
                    )
                if reader.hexdigest() != described.snapshot_sha256:
                    raise ArchiveError("the snapshot received does not match its SHA-256")
                meta_bytes = described.to_json()
                tar.addfile(_tarinfo(META_NAME, len(meta_bytes)), io.BytesIO(meta_bytes))
            raw.flush()
            size = raw.tell()
        return size
    except JacoError:
        raise
    except BaseException as exc:
        if disk_full(exc):
            raise JacoError(
                f"the disk holding {output.parent} is full; nothing was written to {output.name}"
            ) from None
        if isinstance(exc, tarfile.StreamError | OSError):
            raise JacoError(f"writing {output} failed: {exc}") from None
        raise


@dataclass(frozen=True)
class VerifiedArchive:
    meta: BackupMeta
    archive_size: int


Reserve = Callable[[int], None]


def read_archive(
    path: Path, sink: IO[bytes] | None = None, reserve: Reserve | None = None
) -> VerifiedArchive:
    """Verify the whole archive; stream snapshot.bin into `sink` (or just hash it).

    `reserve(size)` is called with the snapshot's declared size before its first byte is
    written (to refuse a size the disk cannot hold). Raises ArchiveError with what is wrong.
    The caller must not trust anything written to `sink` unless this returns.
    """
    if not path.exists():
        raise InvalidArgument(f"{path} does not exist")
    if not path.is_file():
        raise InvalidArgument(f"{path} is not a regular file")
    try:
        with open(path, "rb") as raw:
            meta = read_archive_stream(raw, sink, path.name, reserve)
    except PermissionError:
        raise InvalidArgument(f"cannot read {path}: permission denied") from None
    return VerifiedArchive(meta, path.stat().st_size)


def read_archive_stream(
    raw: IO[bytes],
    sink: IO[bytes] | None = None,
    name: str = "the archive",
    reserve: Reserve | None = None,
) -> BackupMeta:
    """`read_archive` for a stream (e.g. a pipe from a decrypter); returns the verified meta."""
    peek = getattr(raw, "peek", None)  # files and pipes; a gzip stream's first bytes
    gzip_at_start = _starts_as_gzip(peek(2)[:2] if peek is not None else None)
    try:
        with _gzip_open(raw, "rb") as gz:
            try:
                meta = _read_members(TarReader(gz), sink, reserve)
            except ArchiveError:
                # A corrupt stream can also look like a wrong layout: reading on a little
                # (gzip's CRC check, if its end is near) tells which, so the operator hears
                # "corrupt". Only a little: the rest may be a bomb of zeros.
                _read_on(gz, LOOK_AHEAD)
                raise
            _drain_padding(gz)  # reaching gzip's end checks its CRC and length
        return meta
    except (EOFError, zlib.error, isal_zlib.error, gzip.BadGzipFile, TarFormatError) as exc:  # type: ignore[misc]
        reason = _plain_reason(exc, gzip_at_start)
        raise ArchiveError(f"{name} is corrupt or truncated: {reason}") from None


def _starts_as_gzip(head: bytes | None) -> bool | None:
    """Whether a stream's first bytes are gzip's; None when they do not tell (not peeked at,
    none, or only a first byte that gzip's could be)."""
    if not head:
        return None
    if not HEADER.startswith(head):
        return False
    return True if len(head) == 2 else None


def _plain_reason(exc: BaseException, gzip_at_start: bool | None = None) -> str:
    """Why an archive's gzip or tar stream was refused, in an operator's words: gzip's and
    zlib's own messages are Python's and zlib's ("Not a gzipped file (b'PK')", "Error -3
    Invalid lookback distance found"), and bytes appended to a backup read as a second gzip
    member (igzip reads ahead, so where the error came up does not tell which).
    `gzip_at_start`: the stream began as gzip does (None: not known)."""
    said = str(exc)
    if isinstance(exc, TarFormatError):
        return said  # jaco.archive.ustar's own words
    if gzip_at_start is False:
        return "it is not a gzip file"  # whatever gzip made of it, a few bytes or many
    if said.startswith("Not a gzipped file"):
        if gzip_at_start is None:
            return "it holds data that is not gzip"
        return "data that is not gzip follows its gzip stream"  # it began as gzip
    if isinstance(exc, EOFError) and said == "unexpected end of data":  # TarReader's
        return "it ends before the archive does"
    for says, means in GZIP_SAYS:
        if said.startswith(says):
            return means
    detail = re.sub(r"^Error -?\d+ (while decompressing data: )?", "", said)
    return f"its compressed data is damaged ({detail[:1].lower()}{detail[1:]})"


def _read_on(gz: IO[bytes], limit: int) -> None:
    while limit > 0 and (chunk := gz.read(CHUNK)):
        limit -= len(chunk)


def _drain_padding(gz: IO[bytes]) -> None:
    """After tar's end marker only zero padding may follow, and not much of it."""
    seen = 0
    while chunk := gz.read(CHUNK):
        seen += len(chunk)
        if chunk.count(0) != len(chunk) or seen > 16 * CHUNK:
            raise ArchiveError("unexpected data after the end of the archive")


def _read_members(tar: TarReader, sink: IO[bytes] | None, reserve: Reserve | None) -> BackupMeta:
    """snapshot.bin then meta.json (format 2), or meta.json first (format 1, older jaco)."""
    meta: BackupMeta | None = None
    snapshot: tuple[int, str] | None = None  # size, SHA-256 as read
    seen: list[str] = []
    while (member := tar.next()) is not None:
        seen.append(member.name)
        if member.name not in (META_NAME, SNAPSHOT_NAME) or seen.count(member.name) > 1:
            raise ArchiveError(f"unexpected member {member.name!r} in the archive")
        if member.name == META_NAME:
            if member.size > MAX_META_BYTES:
                raise ArchiveError("meta.json is larger than any real one")
            meta = BackupMeta.parse(tar.read(member.size))
            if snapshot is None and meta.format != 1:
                raise ArchiveError(
                    f"meta.json comes before snapshot.bin in a format {meta.format} archive"
                )
        elif member.size > MAX_SNAPSHOT_BYTES:
            raise ArchiveError("snapshot.bin is larger than any snapshot jaco writes")
        elif meta is not None and member.size != meta.snapshot_size:
            raise ArchiveError(
                f"snapshot.bin is {member.size} bytes; meta.json says {meta.snapshot_size}"
            )
        else:
            if reserve is not None:
                reserve(member.size)
            snapshot = member.size, _copy_hashing(tar, member.size, sink)
    if seen not in ([META_NAME, SNAPSHOT_NAME], [SNAPSHOT_NAME, META_NAME]):
        missing = {META_NAME, SNAPSHOT_NAME} - set(seen)
        raise ArchiveError(f"the archive lacks {', '.join(sorted(missing))}")
    assert meta is not None and snapshot is not None
    if snapshot[0] != meta.snapshot_size:
        raise ArchiveError(
            f"snapshot.bin is {snapshot[0]} bytes; meta.json says {meta.snapshot_size}"
        )
    if snapshot[1] != meta.snapshot_sha256:
        raise ArchiveError("snapshot.bin does not match the SHA-256 in meta.json")
    return meta


def _copy_hashing(tar: TarReader, size: int, sink: IO[bytes] | None) -> str:
    """Hash (and copy) snapshot.bin and return its SHA-256. Its first page must look like an
    etcd snapshot's, so a stream of zeros or junk is refused after a few KiB, not after the
    gigabytes it claims; its last 32 bytes must be the SHA-256 etcd appended to the rest
    (SnapshotSha256, in the same pass), so that etcd's restore need not read and hash the
    snapshot again (jaco.node.etcd_member)."""
    sha256 = SnapshotSha256(size)
    reader = HashingReader(tar, sha256=sha256)
    chunk = reader.read(min(CHUNK, size))
    try:
        check_head(chunk)
    except SnapshotFileError as exc:
        raise ArchiveError(f"snapshot.bin is not an etcd snapshot: {exc}") from None
    if not sha256.whole_blocks():
        raise ArchiveError(f"snapshot.bin {NO_TRAILER}")
    remaining = size - len(chunk)
    while True:
        if sink is not None:
            sink.write(chunk)
        if not remaining:
            if problem := sha256.trailer_problem():
                raise ArchiveError(f"snapshot.bin {problem}")
            return reader.hexdigest()
        chunk = reader.read(min(CHUNK, remaining))
        remaining -= len(chunk)


NO_TRAILER = "does not end with the SHA-256 etcd appends to every snapshot"


class SnapshotSha256(BlockSha256):
    """The SHA-256 of an etcd snapshot of `size` bytes, fed block by block, and on the way
    the SHA-256 of all but its last 32 bytes (hashlib's digest() lets the hash go on), which
    etcd appended: one pass checks both."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size = size
        self._body = size - ETCD_TRAILER
        self._seen = 0
        self._body_sha: bytes | None = None
        self._trailer = bytearray()

    def whole_blocks(self) -> bool:
        """Whether the size is that of a snapshot with etcd's SHA-256 (as etcd's tool says)."""
        return self._body >= 0 and self._size % 512 == ETCD_TRAILER

    def update(self, block: bytes | bytearray) -> None:
        view = memoryview(block)
        cut = self._body - self._seen
        if 0 <= cut <= len(view):
            self._sha.update(view[:cut])
            self._body_sha = self._sha.digest()
            self._sha.update(view[cut:])
        else:
            self._sha.update(view)
        if cut < len(view) and len(self._trailer) < ETCD_TRAILER:
            start = max(cut, 0)
            self._trailer += view[start : start + ETCD_TRAILER - len(self._trailer)]
        self._seen += len(view)

    def trailer_problem(self) -> str | None:
        """What is wrong with etcd's SHA-256 at the end, or None, once all was fed."""
        if not self.whole_blocks():
            return NO_TRAILER
        if self._seen != self._size or self._body_sha != bytes(self._trailer):
            return "does not match the SHA-256 etcd appended to it"
        return None
