"""jaco.archive.age.decrypting: the decrypter runs in a process of its own
(jaco.archive.decrypter). Its identity reaches it through a pipe, never its argument list or
environment; it is gone when the block ends however it ends; the hashes are those of the
whole ciphertext and plaintext; a wrong key, a damaged payload and a source that fails are
each named as such."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyrage
import pytest

from jaco.archive.age import DecryptionFailed, Identities
from jaco.archive.encrypted import Decryption, _pump, decrypting
from jaco.errors import ArchiveError, JacoError
from jaco.streams import Bounded, spliced

DATA = os.urandom(3 * 1024 * 1024 + 17)


def _children() -> list[int]:
    found = []
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():  # a thread may end meanwhile: b""
        found += [int(p) for p in _read(os.getpid(), f"task/{task.name}/children").split()]
    return [p for p in found if b"jaco.archive.decrypter" in _read(p, "cmdline")]


def _read(pid: int, name: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes()
    except OSError:
        return b""


def _seal(path: Path, data: bytes) -> tuple[Path, Identities]:
    """`data` encrypted to a new identity at `path`, and that identity."""
    identity = pyrage.x25519.Identity.generate()
    path.write_bytes(pyrage.encrypt(data, [identity.to_public()]))
    identities = Identities("the test identity")
    identities.append(identity)
    return path, identities


@pytest.fixture
def sealed(tmp_path: Path) -> tuple[Path, Identities]:
    return _seal(tmp_path / "data.age", DATA)


def test_the_decrypter_is_a_process_that_never_sees_its_key_in_argv_or_env(
    sealed: tuple[Path, Identities],
) -> None:
    path, identities = sealed
    secret = str(identities[0]).encode()
    with decrypting(path, identities) as (plain, found):
        (child,) = _children()
        assert secret not in _read(child, "cmdline") and secret not in _read(child, "environ")
        assert plain.read(1024) == DATA[:1024]
    assert _children() == []
    assert found.plaintext_sha256 == hashlib.sha256(DATA).hexdigest()  # read to its end
    assert found.plaintext_size == len(DATA)


def test_a_reader_that_stops_leaves_no_decrypter(sealed: tuple[Path, Identities]) -> None:
    path, identities = sealed
    with pytest.raises(ArchiveError, match="stopped"):
        with decrypting(path, identities) as (plain, _):
            plain.read(4096)
            raise ArchiveError("stopped")
    assert _children() == []


def test_a_wrong_key_and_a_damaged_payload_are_named(
    sealed: tuple[Path, Identities], tmp_path: Path
) -> None:
    path, right = sealed
    wrong = Identities("the other identity")
    wrong.append(pyrage.x25519.Identity.generate())
    with pytest.raises(DecryptionFailed, match="does not decrypt with the other identity"):
        with decrypting(path, wrong) as (plain, _):
            plain.read(1024)
    damaged = tmp_path / "damaged.age"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    damaged.write_bytes(bytes(data))
    with pytest.raises(DecryptionFailed, match="ciphertext is damaged or truncated"):
        with decrypting(damaged, right) as (plain, _):
            while plain.read(1024 * 1024):
                pass
    assert _children() == []


def test_a_source_that_fails_is_named_as_itself(sealed: tuple[Path, Identities]) -> None:
    path, identities = sealed

    class Failing(io.RawIOBase):
        def __init__(self) -> None:
            self.given = 0
            self.data = path.read_bytes()

        def read(self, n: int = -1) -> bytes:
            if self.given > len(self.data) // 2:
                raise OSError(5, "Input/output error")
            block = self.data[self.given : self.given + min(n, 65536)]
            self.given += len(block)
            return block

    with pytest.raises(OSError, match="Input/output error"):
        with decrypting(Failing(), identities) as (plain, _):
            while plain.read(1024 * 1024):
                pass
    assert _children() == []


def test_a_decrypter_killed_midway_is_its_own_failure_not_a_broken_archive(
    sealed: tuple[Path, Identities],
) -> None:
    """The decrypter killed (the OOM killer, a kill -9) cuts the plaintext short; the reader
    then finds the archive truncated. That is not the backup's damage (verify deletes a
    backup for an ArchiveError or a DecryptionFailed), but the decrypter's failure."""
    import signal

    path, identities = sealed
    with pytest.raises(JacoError) as caught:
        with decrypting(path, identities) as (plain, _):
            assert plain.read(1024) == DATA[:1024]
            (child,) = _children()
            os.kill(child, signal.SIGKILL)
            while plain.read(1024 * 1024):
                pass
            raise ArchiveError("the archive is corrupt or truncated")  # what the reader says
    assert not isinstance(caught.value, (ArchiveError, DecryptionFailed)), caught.value
    assert "the decrypter failed (exit -9)" in str(caught.value)
    assert _children() == []


def _pipe_carrying(*parts: bytes) -> io.BufferedReader:
    """A pipe's reading end, buffered as the drill's stdin is, that a thread fills with
    `parts` and then closes."""
    r, w = os.pipe()

    def fill() -> None:  # a reader that stops early leaves the rest unwritten
        with contextlib.suppress(BrokenPipeError), os.fdopen(w, "wb") as sink:
            for part in parts:
                sink.write(part)

    threading.Thread(target=fill, daemon=True).start()
    return os.fdopen(r, "rb")


def test_a_file_and_a_bounded_pipe_are_spliced_and_what_follows_is_left_to_read(
    sealed: tuple[Path, Identities],
) -> None:
    """The drill's stdin: a header line, the ciphertext (its first bytes already in the
    reader's buffer when the header is read), then more that is not the backup's. The kernel
    moves the ciphertext to the decrypter (`spliced`); what follows is left where it was."""
    path, identities = sealed
    with decrypting(path, identities) as (plain, found):
        assert plain.read(len(DATA) + 1) == DATA
    assert found.spliced == path.stat().st_size
    ciphertext = path.read_bytes()
    after = os.urandom(70_000)  # more than a pipe's buffer, so it follows through the pipe
    stdin = _pipe_carrying(b'{"header": 1}\n', ciphertext, after)
    assert stdin.readline() == b'{"header": 1}\n'
    part = Bounded(stdin, len(ciphertext))
    with decrypting(part, identities) as (plain, found):
        assert plain.read(len(DATA) + 1) == DATA
    assert found.spliced == len(ciphertext) and part.left == 0
    assert found.plaintext_sha256 == hashlib.sha256(DATA).hexdigest()
    assert stdin.read() == after
    assert _children() == []


def test_a_limit_inside_what_is_buffered_moves_that_much_and_no_more() -> None:
    r, w = os.pipe()
    os.write(w, b"line\n0123456789rest")
    os.close(w)
    stdin = os.fdopen(r, "rb")
    assert stdin.readline() == b"line\n"  # the reader now holds all that followed the line
    r, w = os.pipe()
    part = Bounded(stdin, 4)
    assert spliced(part, w) == 4 and part.left == 0
    os.close(w)
    with os.fdopen(r, "rb") as moved:
        assert moved.read() == b"0123"
    assert stdin.read() == b"456789rest"
    assert spliced(io.BytesIO(b"not a descriptor"), 1) is None


def test_a_non_blocking_source_with_nothing_yet_is_waited_for_not_cut_short(
    sealed: tuple[Path, Identities],
) -> None:
    """A non-blocking stdin answers EAGAIN whenever the writer is behind. That is not a refusal:
    the splice waits for the next bytes (a copy would have stopped at the first gap, and age
    failed on a cut ciphertext). The wait takes any descriptor number (select(2) would refuse
    one of 1024 or more)."""
    path, identities = sealed
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2100 <= hard:  # put back below, so the tests after this one see the limit as it was
        resource.setrlimit(resource.RLIMIT_NOFILE, (2100, hard))
    try:
        _a_non_blocking_source_at_2000(path, identities)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _a_non_blocking_source_at_2000(path: Path, identities: Identities) -> None:
    ciphertext, after = path.read_bytes(), b"what follows"
    low, w = os.pipe()
    r = fcntl.fcntl(low, fcntl.F_DUPFD_CLOEXEC, 2000)
    os.close(low)
    os.set_blocking(r, False)

    def fill() -> None:  # in pieces, with gaps the reader must wait out
        with os.fdopen(w, "wb", buffering=0) as sink:
            for at in range(0, len(ciphertext), 256 * 1024):
                time.sleep(0.02)
                sink.write(ciphertext[at : at + 256 * 1024])
            sink.write(after)

    threading.Thread(target=fill, daemon=True).start()
    with os.fdopen(r, "rb") as stdin:
        part = Bounded(stdin, len(ciphertext))
        with decrypting(part, identities) as (plain, found):
            assert plain.read(len(DATA) + 1) == DATA
        assert found.spliced == len(ciphertext) and part.left == 0
        os.set_blocking(r, True)
        assert stdin.read() == after


def test_a_decrypter_that_ends_well_before_the_end_leaves_the_part_read_to_its_limit() -> None:
    """age need not read past its last chunk: when the decrypter ends well before taking it
    all, the rest of the backup's part is still read, so that what follows stays in place;
    when it fails, nothing more is read."""
    for code in (0, 1):
        body, after = os.urandom(5_000_000), b"NEXT-SEGMENT" * 1000
        stdin = _pipe_carrying(b"hdr\n", body, after)
        assert stdin.readline() == b"hdr\n"
        child = subprocess.Popen(
            [sys.executable, "-c", f"import os; os.read(0, 100); os._exit({code})"],
            stdin=subprocess.PIPE,
        )
        part = Bounded(stdin, len(body))
        _pump(part, child, Decryption())
        assert child.wait() == code
        if code == 0:
            assert part.left == 0 and stdin.read() == after
        else:
            assert part.left > 0


SPLICE_REFUSED = """
import ctypes, json, os, struct, sys
from pathlib import Path
# a seccomp filter: splice(2) answers EINVAL (x86_64's syscall 275), as where it is refused
libc = ctypes.CDLL(None, use_errno=True)
def op(code, k, jt=0, jf=0):
    return struct.pack("HBBI", code, jt, jf, k)
prog = b"".join([op(0x20, 4), op(0x15, 0xC000003E, 1, 0), op(0x06, 0x7FFF0000),
                 op(0x20, 0), op(0x15, 275, 0, 1), op(0x06, 0x00050000 | 22),
                 op(0x06, 0x7FFF0000)])
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
buf = ctypes.create_string_buffer(prog)
assert libc.prctl(38, 1, 0, 0, 0) == 0 and libc.prctl(
    22, 2, ctypes.byref(Prog(len(prog) // 8, ctypes.addressof(buf))), 0, 0) == 0
from jaco.archive.age import parse_identities
from jaco.archive.encrypted import decrypting
path, key, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
with decrypting(Path(path), parse_identities(key, "the test identity")) as (plain, found):
    data = plain.read(size + 1)
print(json.dumps({"sha256": found.plaintext_sha256, "read": len(data), "spliced": found.spliced}))
"""


def test_where_splice_is_refused_the_ciphertext_is_copied(
    sealed: tuple[Path, Identities], tmp_path: Path
) -> None:
    """A sandbox whose seccomp filter refuses splice(2), or a descriptor without it: the
    decryption copies what the kernel would not move, as before stop 41."""
    assert platform.machine() == "x86_64", "the filter names x86_64's splice"
    path, identities = sealed
    done = subprocess.run(
        [sys.executable, "-c", SPLICE_REFUSED, str(path), str(identities[0]), str(len(DATA))],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout)
    assert got == {"sha256": hashlib.sha256(DATA).hexdigest(), "read": len(DATA), "spliced": 0}


def test_only_a_file_or_a_reader_of_a_files_descriptor_is_spliced(tmp_path: Path) -> None:
    """A buffered reader over another raw stream (one that changes what it reads, say) is
    copied, whatever descriptor it names: nothing is read from that descriptor."""
    named_r, named_w = os.pipe()
    os.write(named_w, b"left unread")
    os.close(named_w)

    class Raw(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def fileno(self) -> int:
            return named_r

        def readinto(self, buffer: Any) -> int:
            return 0

    r, w = os.pipe()
    try:
        assert spliced(io.BufferedReader(Raw()), w) is None
        os.close(w)
        assert os.read(r, 64) == b"" and os.read(named_r, 64) == b"left unread"
    finally:
        os.close(r)
        os.close(named_r)


@pytest.mark.timeout(30)  # a wait for a byte that never comes ends only here
def test_a_part_with_nothing_left_reads_nothing() -> None:
    r, w = os.pipe()
    out_r, out_w = os.pipe()
    with os.fdopen(r, "rb") as never_written, os.fdopen(w, "wb"):
        with os.fdopen(out_r, "rb") as moved, os.fdopen(out_w, "wb") as out:
            assert spliced(Bounded(never_written, 0), out.fileno()) == 0  # no wait for a byte
            out.close()
            assert moved.read() == b""


def test_a_read_of_the_plaintext_hands_at_most_a_chunk_to_the_hash(tmp_path: Path) -> None:
    """igzip reads the plaintext 8 MiB at a time, and each block read is copied to the hash's
    queue of four: verify's read of a 2 GiB backup peaked 38 MiB above the flow process's
    memory, 12 MiB with a block of a MiB at most (docs/benchmarks.md, stop 49)."""
    from jaco.streams import CHUNK

    data = os.urandom(10 * CHUNK + 5)
    path, identities = _seal(tmp_path / "big.age", data)
    sizes = []
    buffer = memoryview(bytearray(8 * CHUNK))
    with decrypting(path, identities) as (plain, found):
        while n := plain.readinto(buffer):  # type: ignore[attr-defined]
            sizes.append(n)
    assert sum(sizes) == len(data) and max(sizes) <= CHUNK, sizes
    assert found.plaintext_sha256 == hashlib.sha256(data).hexdigest()


def test_a_read_into_a_view_of_wider_items_is_counted_in_bytes(
    sealed: tuple[Path, Identities],
) -> None:
    """readinto returns bytes; a view of 4-byte items, cut and hashed by items, hashed and
    kept the wrong bytes. An empty view is not the plaintext's end."""
    path, identities = sealed
    got = bytearray()
    with decrypting(path, identities) as (plain, found):
        assert plain.readinto(memoryview(bytearray())) == 0  # type: ignore[attr-defined]
        assert not found.seconds
        buffer = memoryview(bytearray(64 * 1024)).cast("I")
        while n := plain.readinto(buffer):  # type: ignore[attr-defined]
            got += buffer.cast("B")[:n]
    assert bytes(got) == DATA
    assert found.plaintext_sha256 == hashlib.sha256(DATA).hexdigest()
