"""The archive's gzip stream, written block by block on a thread of its own.

Each block (1 MiB, as tarfile hands them over) is deflated by isal at level 1, with the last
32 KiB of the block before as its dictionary, and ends on a byte boundary (a sync flush); a
block that deflating does not shrink by at least a sixteenth is written as deflate's stored
blocks instead. isal, unlike zlib, never falls back to stored blocks: it codes incompressible
data as Huffman literals, which every reader then decodes at about 400 MB/s here, where a
stored block is a copy (docs/benchmarks.md, stop 32). jaco's state is JSON and deflates
tenfold; what does not (random values, key material, already-compressed blobs) reads back
several times faster stored. After a stored block, four 16 KiB samples of the next are
deflated first; if they do not shrink by a sixteenth, the block is stored without deflating
the rest, so a run of random data costs about a sixteenth of deflating it (every sixteenth
block of a stored run is still tried whole, in case the samples missed what deflates; stop
33). Any gzip reader reads the result: one member, one deflate stream, CRC-32 and length at
the end.
"""

from __future__ import annotations

import queue
import struct
import threading
from typing import IO

from isal import isal_zlib

from jaco.files import WriteBehind

HEADER = bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 0xFF])  # deflate, no name, no mtime, OS unknown
FINAL = b"\x03\x00"  # an empty final block (fixed Huffman): what zlib's Z_FINISH writes
WINDOW = 32 * 1024
STORED_MAX = 0xFFFF
QUEUED = 2  # blocks waiting for the thread
SHRINK = 16  # deflate a block only if that saves at least 1/SHRINK of it
SAMPLES, SAMPLE = 4, 16 * 1024  # after a stored block: deflate these first, to decide
RECHECK = 16  # ... but deflate every 16th block of a stored run whole: samples can miss


def stored(block: bytes | memoryview) -> list[bytes | memoryview]:
    """`block` as non-final stored blocks (byte-aligned: each is a 5-byte header and data)."""
    view = memoryview(block)
    parts: list[bytes | memoryview] = []
    for at in range(0, len(view), STORED_MAX):
        piece = view[at : at + STORED_MAX]
        parts += [struct.pack("<BHH", 0, len(piece), len(piece) ^ 0xFFFF), piece]
    return parts


def _shrinks(data: bytes, previous: bytes) -> bytes | None:
    """`data` deflated (with the end of `previous` as its dictionary), or None if that saves
    less than a sixteenth of it."""
    deflater = isal_zlib.compressobj(1, isal_zlib.DEFLATED, -15, zdict=previous[-WINDOW:])
    packed = deflater.compress(data) + deflater.flush(isal_zlib.Z_SYNC_FLUSH)
    return None if len(packed) > len(data) - len(data) // SHRINK else packed


def deflated(block: bytes, previous: bytes, sample: bool = False) -> list[bytes | memoryview]:
    """`block` deflated, or stored if deflating saves less than a sixteenth of it. With
    `sample`, a block whose four 16 KiB samples (at each quarter) do not shrink by a sixteenth
    is stored without deflating the rest of it."""
    step = len(block) // SAMPLES
    if sample and step >= SAMPLE:
        samples = b"".join(block[at : at + SAMPLE] for at in range(0, SAMPLES * step, step))
        if _shrinks(samples, previous) is None:
            return stored(block)
    packed = _shrinks(block, previous)
    return stored(block) if packed is None else [packed]


class GzipWriter:
    """A write-only gzip stream over `raw`; `close` writes the end, and raises what the
    thread met (a full disk, say) if `write` has not raised it already. With `behind`, the
    thread starts the disk write of what it wrote as it goes (jaco.files.WriteBehind)."""

    def __init__(self, raw: IO[bytes], behind: WriteBehind | None = None) -> None:
        self._raw = raw
        self._behind = behind
        self._blocks: queue.Queue[bytes | None] = queue.Queue(QUEUED)
        self._crc = 0
        self._size = 0
        self._error: BaseException | None = None
        self._closed = False
        raw.write(HEADER)
        self._thread = threading.Thread(target=self._run, name="gzip", daemon=True)
        self._thread.start()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError("write to a closed GzipWriter")
        self._raise()
        if data:
            self._blocks.put(bytes(data))  # bytes(b) of a bytes object is that object
        return len(data)

    def _run(self) -> None:
        previous = b""
        stored_run = 0  # blocks stored in a row
        while (block := self._blocks.get()) is not None:
            if self._error is not None:
                continue  # drained until close, which raises it
            try:
                sample = stored_run % RECHECK != 0
                parts = deflated(block, previous, sample=sample)
                # stored: a header and data a piece; deflated: one
                stored_run = stored_run + 1 if len(parts) > 1 else 0
                self._raw.writelines(parts)
                if self._behind is not None:
                    self._behind.wrote()
                self._crc = isal_zlib.crc32(block, self._crc)
                self._size += len(block)
                previous = block
            except BaseException as exc:  # noqa: BLE001 - raised in the writing thread
                self._error = exc

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def flush(self) -> None:
        self._raise()

    def _stop(self) -> bool:
        """End the thread once; False if it was ended already."""
        if self._closed:
            return False
        self._closed = True
        self._blocks.put(None)
        self._thread.join()
        return True

    def close(self) -> None:
        if self._stop():
            self._raise()
            self._raw.write(FINAL + struct.pack("<II", self._crc, self._size & 0xFFFFFFFF))

    def __enter__(self) -> GzipWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            self.close()
        else:  # failing already: no end written; the caller discards the output
            self._stop()
