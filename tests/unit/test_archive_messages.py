"""A damaged archive is refused in an operator's words, not Python's or zlib's.

Before, `jaco restore` and `jaco backup inspect` said "… is corrupt or truncated: Not a gzipped
file (b'PK')", "… CRC check failed 1581723010 != 1387911831" or "… Error -3 Invalid lookback
distance found": gzip's and igzip's own messages, a Python bytes literal among them. Each
damage here is made to a real gzip stream and read by the real reader.
"""

from __future__ import annotations

import gzip
import io
import random
import re
import tarfile

import pytest

from jaco.archive.format import _starts_as_gzip, read_archive_stream
from jaco.errors import ArchiveError

PLAIN = {
    "it is not a gzip file",
    "its gzip stream is cut short, or bytes were added after it",
    "it ends before the archive does",
    "its content does not match the CRC that gzip recorded",
    "its length does not match the length that gzip recorded",
    "its gzip header is damaged",
    "its gzip header names an unknown compression method",
    "data that is not gzip follows its gzip stream",
    "it holds data that is not gzip",
}
DAMAGED = re.compile(r"its compressed data is damaged \([a-z][a-z ]+\)")


def _archive() -> bytes:
    members = io.BytesIO()
    rng = random.Random(16)
    with tarfile.open(fileobj=members, mode="w") as tar:
        for name, data in (
            ("meta.json", b'{"a": 1}' * 100),
            ("snapshot.bin", b"abcdefgh" * 50_000 + rng.randbytes(100_000)),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(members.getvalue(), mtime=0)  # fmt: skip


GOOD = _archive()


def _reason(data: bytes, peekable: bool = True) -> str:
    raw = io.BufferedReader(io.BytesIO(data)) if peekable else io.BytesIO(data)
    with pytest.raises(ArchiveError) as refused:
        read_archive_stream(raw, None, "x.tar.gz")
    said = str(refused.value)
    prefix = "x.tar.gz is corrupt or truncated: "
    assert said.startswith(prefix), said
    return said[len(prefix) :]


def _flip(data: bytes, at: int, mask: int = 0x01) -> bytes:
    return data[:at] + bytes([data[at] ^ mask]) + data[at + 1 :]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (b"PK\x03\x04" + b"x" * 5000, "it is not a gzip file"),
        (GOOD[: len(GOOD) // 2], "its gzip stream is cut short, or bytes were added after it"),
        (GOOD + b"junk", "its gzip stream is cut short, or bytes were added after it"),
        (b"Not Found", "it is not a gzip file"),  # what a web server said, saved as the backup
        (b"x", "it is not a gzip file"),
        (_flip(GOOD, len(GOOD) - 8), "its content does not match the CRC that gzip recorded"),
        (_flip(GOOD, len(GOOD) - 4), "its length does not match the length that gzip recorded"),
        (GOOD + b"junk" * 100, "data that is not gzip follows its gzip stream"),
        (b"", "it ends before the archive does"),
        (gzip.compress(b"\0" * 100, mtime=0), "it ends before the archive does"),
        (_flip(GOOD, 3, 0xFF), "its gzip header is damaged"),
        (_flip(GOOD, 2, 0x0F), "its gzip header names an unknown compression method"),
    ],
    ids=[
        "not gzip",
        "cut",
        "4 bytes appended",
        "9 bytes",
        "1 byte",
        "crc",
        "length",
        "appended",
        "empty",
        "no tar in it",
        "flags",
        "method",
    ],
)
def test_each_damage_is_named_plainly(damage: bytes, reason: str) -> None:
    assert _reason(damage) == reason


@pytest.mark.parametrize(
    ("head", "starts"),
    [
        (None, None),
        (b"", None),
        (b"P", False),
        (b"\x1f", None),
        (b"\x1f\x8b", True),
        (b"\x1fx", False),
    ],
)
def test_the_first_bytes_say_gzip_only_when_both_are_seen(
    head: bytes | None, starts: bool | None
) -> None:
    """A pipe's peek may give one byte: a first byte gzip's could be tells nothing yet."""
    assert _starts_as_gzip(head) is starts


def test_a_stream_that_cannot_be_peeked_at_is_not_guessed_about() -> None:
    """Without a peek (a reader of no file or pipe) the start is not known: not gzip at its
    start and not gzip after its end read alike."""
    assert _reason(b"PK\x03\x04" + b"x" * 5000, peekable=False) == "it holds data that is not gzip"
    assert _reason(GOOD + b"junk" * 100, peekable=False) == "it holds data that is not gzip"


def test_no_flipped_byte_is_reported_in_gzip_or_zlib_words() -> None:
    """Every third byte of the compressed stream's first 2000 flipped in turn: each refusal is one
    of the plain reasons, and inflate's own errors ("Error -3 Invalid lookback distance
    found") come out as damaged data with zlib's detail in lower case."""
    reasons = set()
    for at in range(10, 2000, 3):
        reason = _reason(_flip(GOOD, at, 0x5A))
        assert reason in PLAIN or DAMAGED.fullmatch(reason), (at, reason)
        reasons.add(reason if reason in PLAIN else "damaged")
    assert (
        "damaged" in reasons and "its content does not match the CRC that gzip recorded" in reasons
    )
