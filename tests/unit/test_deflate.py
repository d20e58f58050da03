"""jaco.archive.deflate: the archive's gzip, readable by every gzip reader, with what does
not deflate stored (so it reads back as a copy) and what does deflated.

Readers here are independent of the writer: Python's gzip (zlib), isal and GNU gzip and tar.
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import random
import subprocess
import tarfile
import zlib
from pathlib import Path

import pytest
from isal import isal_zlib

from jaco.archive.deflate import HEADER, GzipWriter, deflated

MIB = 1024 * 1024
RANDOM = random.Random(3).randbytes(3 * MIB + 123)
JSON = b"".join(b'{"name": "web-%d", "replicas": %d}\n' % (i, i % 7) for i in range(120_000))
# Random values with a zero page every 100 KiB (bbolt's pages leave such gaps): deflates by
# about 4 %, less than the sixteenth a block must save to be deflated.
ALMOST = b"".join(RANDOM[at : at + 96 * 1024] + bytes(4096) for at in range(0, 2 * MIB, 96 * 1024))
DATA = {
    "nothing": b"",
    "random": RANDOM,
    "json": JSON,
    "almost random": ALMOST,
    "mixed": RANDOM[:MIB] + JSON[: 2 * MIB] + bytes(MIB) + RANDOM[:77_777],
}


def _gzip(data: bytes, piece: int = MIB) -> bytes:
    raw = io.BytesIO()
    with GzipWriter(raw) as gz:
        for at in range(0, len(data), piece):
            gz.write(data[at : at + piece])
    return raw.getvalue()


@pytest.mark.parametrize("piece", [MIB, 12_345], ids=["1 MiB blocks", "odd blocks"])
@pytest.mark.parametrize("name", DATA)
def test_every_gzip_reader_reads_it_back(name: str, piece: int) -> None:
    data = DATA[name]
    written = _gzip(data, piece)
    assert written.startswith(HEADER)
    assert gzip.decompress(written) == data
    assert isal_zlib.decompress(written, 31) == data
    gnu = subprocess.run(["gzip", "-dc"], input=written, capture_output=True, check=True)
    assert gnu.stdout == data
    subprocess.run(["gzip", "-t"], input=written, check=True)  # CRC-32 and length


def test_incompressible_blocks_are_stored_and_the_rest_deflated() -> None:
    for block in (RANDOM[:MIB], ALMOST[:MIB]):
        parts = deflated(block, b"")
        assert b"".join(parts)[0] & 0b110 == 0  # BTYPE 00: stored
        assert sum(map(len, parts)) == MIB + 5 * -(-MIB // 0xFFFF)  # 5 bytes a stored block
        assert zlib.decompressobj(-15).decompress(b"".join(parts)) == block
    packed = b"".join(deflated(JSON[:MIB], b""))
    assert packed[0] & 0b110 != 0 and len(packed) < MIB // 5
    assert len(_gzip(JSON)) < len(JSON) // 5
    # A block refers back into the one before (its dictionary), stored or not.
    again = b"".join(deflated(RANDOM[MIB - 32 * 1024 : MIB], RANDOM[:MIB]))
    assert len(again) < 1024


def test_after_a_stored_block_random_data_is_not_deflated_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a stored block, samples decide: a random block costs a sixteenth of deflating
    it, and a compressible one is still deflated."""
    fed: list[int] = []
    compressobj = isal_zlib.compressobj

    def counting(*args: object, **kwargs: object) -> object:
        deflater = compressobj(*args, **kwargs)  # type: ignore[arg-type]

        class Counted:
            def compress(self, data: bytes) -> bytes:
                fed.append(len(data))
                return deflater.compress(data)

            def flush(self, mode: int) -> bytes:
                return deflater.flush(mode)

        return Counted()

    monkeypatch.setattr(isal_zlib, "compressobj", counting)
    data = RANDOM[:MIB] + RANDOM[MIB : 2 * MIB] + JSON[:MIB] + RANDOM[2 * MIB : 3 * MIB]
    written = _gzip(data)
    assert gzip.decompress(written) == data
    # The first random block deflated whole (nothing stored before it), the second sampled
    # only, the JSON sampled then deflated, the last random block deflated whole once more.
    assert fed == [MIB, 4 * 16 * 1024, 4 * 16 * 1024, MIB, MIB]
    assert len(written) < len(data) - MIB + MIB // 5  # the JSON block deflated
    # A long stored run is tried whole every sixteenth block (samples can miss).
    fed.clear()
    _gzip(RANDOM[:MIB] * 20)
    assert fed == [MIB, *[4 * 16 * 1024] * 15, MIB, *[4 * 16 * 1024] * 3]
    sampled = deflated(RANDOM[:MIB], b"", sample=True)
    assert b"".join(sampled)[0] & 0b110 == 0  # stored


def test_a_tar_written_through_it_is_what_gnu_tar_lists(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    with open(archive, "wb") as raw, GzipWriter(raw) as gz:
        with tarfile.open(fileobj=gz, mode="w|") as tar:  # type: ignore[call-overload]
            for name, data in DATA.items():
                info = tarfile.TarInfo(name.replace(" ", "-"))
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    listing = subprocess.run(
        ["tar", "-tzf", str(archive)], capture_output=True, text=True, check=True
    )
    assert listing.stdout.split() == [n.replace(" ", "-") for n in DATA]


class _Full(io.RawIOBase):
    """A sink whose disk fills after `room` bytes."""

    def __init__(self, room: int) -> None:
        self.room = room

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return len(data)


def test_a_full_disk_is_raised_in_the_writing_thread_and_nothing_hangs() -> None:
    with pytest.raises(OSError) as raised, GzipWriter(_Full(MIB)) as gz:
        for _ in range(64):  # far more than the queue holds: write() raises it
            gz.write(RANDOM[:MIB])
    assert raised.value.errno == errno.ENOSPC
    gz = GzipWriter(_Full(MIB))
    gz.write(RANDOM[:MIB])  # queued; the thread meets the full disk
    with pytest.raises(OSError) as raised:
        gz.close()  # ... and close() raises it
    assert raised.value.errno == errno.ENOSPC
    gz.close()  # once closed, closing again does nothing
    with pytest.raises(ValueError, match="closed"):
        gz.write(b"x")
