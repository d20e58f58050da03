"""jaco.archive.age.decrypting: the decrypter runs in a process of its own
(jaco.archive.decrypter). Its identity reaches it through a pipe, never its argument list or
environment; it is gone when the block ends however it ends; the hashes are those of the
whole ciphertext and plaintext; a wrong key, a damaged payload and a source that fails are
each named as such."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pyrage
import pytest

from jaco.archive.age import DecryptionFailed, Identities
from jaco.archive.encrypted import decrypting
from jaco.errors import ArchiveError, JacoError
from jaco.files import Bounded

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


@pytest.fixture
def sealed(tmp_path: Path) -> tuple[Path, Identities]:
    identity = pyrage.x25519.Identity.generate()
    path = tmp_path / "data.age"
    path.write_bytes(pyrage.encrypt(DATA, [identity.to_public()]))
    identities = Identities("the test identity")
    identities.append(identity)
    return path, identities


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
    import threading

    r, w = os.pipe()

    def fill() -> None:
        with os.fdopen(w, "wb") as sink:
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
    from jaco.archive.encrypted import _spliced

    r, w = os.pipe()
    os.write(w, b"line\n0123456789rest")
    os.close(w)
    stdin = os.fdopen(r, "rb")
    assert stdin.readline() == b"line\n"  # the reader now holds all that followed the line
    r, w = os.pipe()
    part = Bounded(stdin, 4)
    assert _spliced(part, w) == 4 and part.left == 0
    os.close(w)
    with os.fdopen(r, "rb") as moved:
        assert moved.read() == b"0123"
    assert stdin.read() == b"456789rest"
    assert _spliced(io.BytesIO(b"not a descriptor"), 1) is None
