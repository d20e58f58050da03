"""A streaming reader for the tar inside a backup archive: ustar headers and nothing more.

tarfile reads hostile archives generously: GNU long names and links and pax headers are
loaded whole into memory whatever size they declare, and sparse members expand to whatever
size they claim. This reader accepts what jaco's writer (tarfile, default PAX format) produces
for its two regular members: 512-byte ustar headers with a verified checksum, sizes in octal
or GNU base-256, the ustar name prefix, and a pax extended header of at most 4 KiB for the
member that follows, of which only `size` and `path` are honoured (tarfile writes `size`
for members over 8 GiB). GNU long names and links, sparse members (GNU or pax), global pax
headers, links, devices and directories are refused with ArchiveError before anything they
declare is read. A member's data is never read past the size its header declares.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import IO

from jaco.errors import ArchiveError

BLOCK = 512
MAX_PAX_HEADER = 4096
_ZERO_BLOCK = bytes(BLOCK)
_MAGICS = (b"ustar\x0000", b"ustar  \x00")  # POSIX, GNU
_REGULAR = (b"0", b"\0")
_PAX = b"x"
# Headers that describe another member, each loaded whole by tarfile.
_NOT_MEMBERS = {
    b"L": "a GNU long name header",
    b"K": "a GNU long link header",
    b"g": "a global pax header",
    b"S": "a GNU sparse member",
}
_KINDS = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"5": "a directory",
    b"6": "a FIFO",
}
_OCTAL = re.compile(rb"^[0-7]*$")
_PAX_LENGTH = re.compile(rb"([0-9]{1,12}) ")
_DECIMAL = re.compile(r"^[0-9]{1,20}$")


class TarFormatError(Exception):
    """The bytes are not a tar stream (damage rather than a refusal of what it holds)."""


@dataclass(frozen=True)
class Member:
    name: str
    size: int


class TarReader:
    """Members of a tar stream, one at a time: `next()` for the header, `read()` for its data."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self._remaining = 0  # data of the current member not read yet
        self._padding = 0  # then zeros up to the next header

    def next(self) -> Member | None:
        """The next regular member, or None at the end-of-archive marker."""
        self._skip(self._remaining + self._padding)
        self._remaining = self._padding = 0
        pax: dict[str, str] | None = None
        while True:
            block = self._exact(BLOCK)
            if block == _ZERO_BLOCK:
                if pax is not None:
                    raise ArchiveError("the archive ends right after a pax header")
                return None
            kind, name, size = _parse_header(block)
            if kind == _PAX:
                if pax is not None:
                    raise ArchiveError("the archive holds two pax headers in a row")
                if size > MAX_PAX_HEADER:
                    raise ArchiveError(
                        f"the archive holds a pax header of {size} bytes; jaco writes none "
                        f"over {MAX_PAX_HEADER}"
                    )
                records = self._exact(size)
                self._skip(-size % BLOCK)
                pax = _parse_pax(records)
                continue
            if kind in _NOT_MEMBERS:
                raise ArchiveError(f"the archive holds {_NOT_MEMBERS[kind]} (jaco writes none)")
            if pax:
                name = pax.get("path", name)
                size = int(pax.get("size", size))
            if kind not in _REGULAR:
                what = _KINDS.get(kind, f"of tar type {kind!r}")
                raise ArchiveError(f"member {name!r} is not a regular file ({what})")
            self._remaining, self._padding = size, -size % BLOCK
            return Member(name, size)

    def read(self, n: int) -> bytes:
        """Up to `n` bytes of the current member's data; b"" at its end, never past it."""
        n = min(n, self._remaining)
        if n <= 0:
            return b""
        data = self._exact(n)
        self._remaining -= n
        return data

    def _exact(self, n: int) -> bytes:
        parts: list[bytes] = []
        got = 0
        while got < n:
            part = self._source.read(n - got)
            if not part:
                raise EOFError("unexpected end of data")
            parts.append(part)
            got += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _skip(self, n: int) -> None:
        while n > 0:
            n -= len(self._exact(min(n, 1024 * 1024)))


def _parse_header(block: bytes) -> tuple[bytes, str, int]:
    """(type flag, name, size) of one header block, its checksum and magic verified."""
    stored = _number(block[148:156], "checksum")
    unsigned = sum(block[:148]) + sum(block[156:]) + 8 * 32  # the field itself as spaces
    signed = sum(struct.unpack("148b", block[:148])) + sum(struct.unpack("356b", block[156:]))
    if stored not in (unsigned, signed + 8 * 32):
        raise TarFormatError("a tar header's checksum does not match")
    magic = block[257:265]
    if magic not in _MAGICS:
        raise TarFormatError("a member header is not a ustar header")
    name = _text(block[:100])
    if magic == _MAGICS[0] and block[345]:
        name = f"{_text(block[345:500])}/{name}"
    return block[156:157], name, _number(block[124:136], "size")


def _number(field: bytes, what: str) -> int:
    """An octal field, or GNU base-256 (first byte 0x80) for sizes past 8 GiB."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    if field[:1] == b"\xff":
        raise TarFormatError(f"a tar header's {what} is negative")
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if not _OCTAL.match(digits) or (not digits and what == "checksum"):
        raise TarFormatError(f"a tar header's {what} is not a number")
    return int(digits or b"0", 8)


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "replace")


def _parse_pax(data: bytes) -> dict[str, str]:
    """The honoured records (`size`, `path`) of a pax header; `LEN key=value\\n` each."""
    honoured: dict[str, str] = {}
    at = 0
    while at < len(data):
        length = _PAX_LENGTH.match(data, at)
        end = at + int(length.group(1)) if length else 0
        if not length or end > len(data) or end <= length.end():
            raise ArchiveError("the archive holds a malformed pax header")
        key, equals, value = data[length.end() : end - 1].partition(b"=")
        if not equals or data[end - 1 : end] != b"\n":
            raise ArchiveError("the archive holds a malformed pax header")
        if key.startswith(b"GNU.sparse."):
            raise ArchiveError("the archive holds a sparse member (pax GNU.sparse.*)")
        if key in (b"size", b"path"):
            try:
                honoured[key.decode()] = value.decode("utf-8")
            except UnicodeDecodeError:
                raise ArchiveError("the archive holds a malformed pax header") from None
        at = end
    if not _DECIMAL.match(honoured.get("size", "0")):
        raise ArchiveError("the archive holds a malformed pax header (its size)")
    return honoured
