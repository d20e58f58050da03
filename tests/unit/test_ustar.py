"""jaco.archive.ustar: reads what tarfile writes, refuses what it does not, never reads past
what a header declares. (The same archives end to end: tests/test_hostile_archives.py.)"""

from __future__ import annotations

import io
import tarfile

import pytest

from jaco.archive.ustar import MAX_PAX_HEADER, Member, TarFormatError, TarReader
from jaco.errors import ArchiveError
from tests import archives as A

GiB = 1024**3


class CountingSource(io.BytesIO):
    """A stream that remembers how far it was read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.consumed = 0

    def read(self, n: int | None = -1) -> bytes:
        data = super().read(n)
        self.consumed += len(data)
        return data


def _tar(*members: tuple[str, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime, info.uid, info.uname = 1_700_000_000, 1000, "jaco"
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
def test_reads_what_tarfile_writes(fmt: int) -> None:
    long_name = "d" * 120 + "/snapshot.bin"  # past 100 bytes: pax path, or the ustar prefix
    names = ["snapshot.bin", long_name] if fmt != tarfile.GNU_FORMAT else ["snapshot.bin"]
    reader = TarReader(io.BytesIO(_tar(*((n, n.encode() * 3) for n in names), fmt=fmt)))
    for name in names:
        assert reader.next() == Member(name, 3 * len(name))
        assert reader.read(10**6) == name.encode() * 3
        assert reader.read(10) == b""
    assert reader.next() is None


def test_sizes_past_8_gib_from_pax_and_base_256() -> None:
    """tarfile's default PAX format writes a pax `size` record for members over 8 GiB; GNU
    format writes the size field in base-256."""
    for fmt in (tarfile.PAX_FORMAT, tarfile.GNU_FORMAT):
        info = tarfile.TarInfo("snapshot.bin")
        info.size = 9 * GiB
        buf = info.tobuf(fmt)
        if fmt == tarfile.PAX_FORMAT:
            assert b" size=9663676416\n" in buf
        assert TarReader(io.BytesIO(buf)).next() == Member("snapshot.bin", 9 * GiB)


def test_member_data_is_never_read_past_its_declared_size() -> None:
    data = _tar(("meta.json", b"0123456789"), ("snapshot.bin", b"x" * 5000))
    source = CountingSource(data)
    reader = TarReader(source)
    first = reader.next()
    assert first is not None
    header_end = source.consumed
    assert reader.read(1 << 20) == b"0123456789"
    assert source.consumed == header_end + 10


def test_truncated_data_and_damaged_headers() -> None:
    data = _tar(("snapshot.bin", b"x" * 5000))
    reader = TarReader(io.BytesIO(data[: 512 * 3]))
    reader.next()
    with pytest.raises(EOFError):
        reader.read(5000)
    with pytest.raises(EOFError):
        TarReader(io.BytesIO(data[:300])).next()
    flipped = bytearray(data)
    flipped[5] ^= 1  # the name: the checksum no longer matches
    with pytest.raises(TarFormatError, match="checksum"):
        TarReader(io.BytesIO(bytes(flipped))).next()
    with pytest.raises(TarFormatError, match="not a ustar header"):
        header = bytearray(A.header("snapshot.bin", tarfile.REGTYPE, 1, tarfile.USTAR_FORMAT))
        header[257:263] = b"nope\0\0"
        header[148:156] = b"%06o\0 " % (sum(header[:148]) + 256 + sum(header[156:]))
        TarReader(io.BytesIO(bytes(header))).next()


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        (tarfile.GNUTYPE_LONGNAME, "GNU long name"),
        (tarfile.GNUTYPE_LONGLINK, "GNU long link"),
        (tarfile.GNUTYPE_SPARSE, "GNU sparse member"),
        (tarfile.XGLTYPE, "global pax header"),
        (tarfile.LNKTYPE, "not a regular file .a hard link"),
        (tarfile.SYMTYPE, "not a regular file .a symbolic link"),
        (tarfile.CHRTYPE, "not a regular file .a character device"),
        (tarfile.BLKTYPE, "not a regular file .a block device"),
        (tarfile.DIRTYPE, "not a regular file .a directory"),
        (tarfile.FIFOTYPE, "not a regular file .a FIFO"),
        (b"V", "not a regular file .of tar type"),
    ],
)
def test_refused_kinds_before_their_data_is_read(kind: bytes, message: str) -> None:
    """The header alone (declaring 1 GiB that is not there) is enough to refuse."""
    header = A.header("snapshot.bin", kind, GiB)
    with pytest.raises(ArchiveError, match=message):
        TarReader(io.BytesIO(header)).next()


def test_pax_headers_bounded_and_only_size_and_path_honoured() -> None:
    big = A.pax_header(b"", declared=MAX_PAX_HEADER + 1)[:512]  # its data is not even there
    with pytest.raises(ArchiveError, match="pax header of 4097 bytes"):
        TarReader(io.BytesIO(big)).next()
    sparse = A.pax_header(A.pax_record("GNU.sparse.size", str(60 * GiB)))
    with pytest.raises(ArchiveError, match="sparse"):
        TarReader(io.BytesIO(sparse)).next()
    for bad in (b"99 path=x\n", b"x path=x\n", b"9 pathx\n", b"12 path=abc ", b"3 \n"):
        with pytest.raises(ArchiveError, match="malformed pax header"):
            TarReader(io.BytesIO(A.pax_header(bad))).next()
    records = b"".join(
        A.pax_record(k, v)
        for k, v in (("mtime", "1.5"), ("uid", "0"), ("path", "meta.json"), ("size", "3"))
    )
    member = A.header("ignored", tarfile.REGTYPE, 0, tarfile.USTAR_FORMAT) + b"abc".ljust(
        512, b"\0"
    )
    reader = TarReader(io.BytesIO(A.pax_header(records) + member))
    assert reader.next() == Member("meta.json", 3)
    assert reader.read(100) == b"abc"
    with pytest.raises(ArchiveError, match="malformed pax header .its size"):
        TarReader(io.BytesIO(A.pax_header(A.pax_record("size", "-1")) + member)).next()
    with pytest.raises(ArchiveError, match="ends right after a pax header"):
        TarReader(io.BytesIO(A.pax_header(records) + bytes(1024))).next()
