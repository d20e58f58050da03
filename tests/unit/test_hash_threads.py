"""SHA-256 on threads of their own beside the encrypter (`jaco.streams.BlockSha256`): the same
digests as hashing inline, and no thread left behind however an encryption ends.
(Decryption runs in a process of its own since stop 31: tests/unit/test_decrypter.py.)"""

from __future__ import annotations

import hashlib
import io
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pyrage
import pytest

import jaco.streams
from jaco.archive.age import HashingWriter, encrypt_file, parse_identities
from jaco.archive.age_v1 import encrypt_stream, x25519_recipient_key
from jaco.archive.encrypted import decrypting
from jaco.streams import CHUNK, BlockSha256, HashingReader
from tests.keys import age_keygen, ssh_keygen
from tests.mounts import tmpfs


def _hash_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sha256"]


def test_blocks_hashed_on_a_thread_give_the_inline_digest() -> None:
    blocks = [os.urandom(n) for n in (1, CHUNK, 3 * CHUNK + 7, 0, 4096)] * 5
    hasher = BlockSha256(threaded=True)
    for block in blocks:
        hasher.update(bytearray(block))
    assert len(_hash_threads()) == 1  # hashed on its own thread, not the caller's
    assert hasher.hexdigest() == hashlib.sha256(b"".join(blocks)).hexdigest()
    assert _hash_threads() == []
    with pytest.raises(RuntimeError, match="closed BlockSha256 was fed"):
        hasher.update(b"more")
    assert BlockSha256(threaded=True).hexdigest() == hashlib.sha256().hexdigest()  # none fed


class _HeldHash:
    """A SHA-256 whose `update` waits until `go` is set: the hashing thread held mid-block."""

    def __init__(self) -> None:
        self.sha, self.go = hashlib.sha256(), threading.Event()

    def update(self, block: bytes | bytearray) -> None:
        self.go.wait(30)
        self.sha.update(block)

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def test_a_block_is_handed_back_to_the_spares_only_once_hashed() -> None:
    """The feeder fills a spare block again at once (age_v1's reads): handed back before its
    hash, a block would be hashed with the next one's bytes. Held mid-hash, the thread has not
    handed it back (the wait below gives it a second to do so wrongly); let go, it has, and the
    digest is the block's as fed."""
    spare: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
    hasher = BlockSha256(threaded=True, spare=spare)
    held = _HeldHash()
    hasher._sha = held  # type: ignore[assignment]
    block = bytearray(os.urandom(CHUNK))
    fed = hashlib.sha256(block).hexdigest()
    hasher.update(block)
    try:
        handed_back = spare.get(timeout=1)
    except queue.Empty:
        handed_back = None
    if handed_back is not None:
        handed_back[:] = os.urandom(CHUNK)  # what the feeder does with a spare: fill it again
    held.go.set()
    assert handed_back is None, "a block was handed back while its hash still read it"
    assert hasher.hexdigest() == fed
    assert spare.get(timeout=30) is block  # handed back once hashed


def test_threaded_reader_and_writer_hash_what_passes(tmp_path: Path) -> None:
    data = os.urandom(5 * CHUNK + 123)
    reader = HashingReader(io.BytesIO(data), threaded=True)
    out = io.BytesIO()
    writer = HashingWriter(out, threaded=True)
    while piece := reader.read(8192):  # as pyrage asks
        writer.write(piece)
    writer.flush()
    assert len(_hash_threads()) == 2  # one each, until their digests are taken
    expected = hashlib.sha256(data).hexdigest()
    assert reader.hexdigest() == writer.hexdigest() == expected and out.getvalue() == data
    assert _hash_threads() == []


def test_encrypt_then_decrypt_hashes_both_sides_and_leaves_no_thread(tmp_path: Path) -> None:
    recipient = age_keygen(tmp_path / "key")
    identities = parse_identities((tmp_path / "key").read_text())
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(3 * CHUNK + 5))
    plain_sha, cipher_sha = encrypt_file(plain, tmp_path / "cipher", [recipient])
    assert plain_sha == hashlib.sha256(plain.read_bytes()).hexdigest()
    assert cipher_sha == hashlib.sha256((tmp_path / "cipher").read_bytes()).hexdigest()
    assert _hash_threads() == []
    with decrypting(tmp_path / "cipher", identities) as (out, found):
        assert out.read(len(plain.read_bytes())) == plain.read_bytes()
        # the plaintext's hash, off the thread that reads it (stop 41)
        assert len(_hash_threads()) == 1
    assert found.plaintext_sha256 == plain_sha  # the ciphertext: its reader's to hash
    assert _hash_threads() == []
    with pytest.raises(RuntimeError, match="the reader stopped"):
        with decrypting(tmp_path / "cipher", identities) as (out, _):
            out.read(CHUNK)
            raise RuntimeError("the reader stopped")
    assert _hash_threads() == []


@pytest.mark.parametrize("kind", ["x25519", "ssh-ed25519"])
def test_an_encryption_that_fails_leaves_no_hashing_thread(tmp_path: Path, kind: str) -> None:
    """The disk fills after blocks were hashed on both sides: both threads end, whichever
    encrypter ran (jaco's age_v1 for X25519 keys, pyrage with an ssh-ed25519 one)."""
    if kind == "x25519":
        recipient = age_keygen(tmp_path / "key")
    else:
        recipient = ssh_keygen(tmp_path / "ssh")
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(3 * CHUNK))
    with tmpfs(tmp_path / "small", "size=1m") as small:
        with pytest.raises(OSError, match="No space left on device"):
            encrypt_file(plain, small / "cipher", [recipient])
        assert _hash_threads() == []


class _FailsAfter:
    """A SHA-256 whose update fails after `n` blocks (a MemoryError on the hashing thread)."""

    def __init__(self, n: int) -> None:
        self.left = n
        self._sha = hashlib.sha256()

    def update(self, block: bytes | bytearray) -> None:
        self.left -= 1
        if self.left < 0:
            raise MemoryError("no memory for this block")
        self._sha.update(block)

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def _ends_within(work: Callable[[], object], seconds: float = 30) -> BaseException | None:
    """Run `work` on a thread; what it raised, or a failure if it was still waiting after
    `seconds` (a feeder left on a full queue: without the guard it would wait forever)."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the feeder was left waiting on a dead hashing thread"
    return raised[0] if raised else None


def test_a_hashing_thread_that_fails_does_not_leave_its_feeder_waiting() -> None:
    hasher = BlockSha256(threaded=True)
    hasher._sha = _FailsAfter(2)  # type: ignore[assignment]

    fed: list[int] = []

    def feed() -> None:
        for _ in range(40):  # ten times the queue's four
            hasher.update(bytearray(CHUNK))
            fed.append(1)
        hasher.hexdigest()

    raised = _ends_within(feed)
    assert isinstance(raised, RuntimeError), raised
    assert len(fed) < 40  # the feeder learned it at an update, not only at the end
    assert "the SHA-256 thread failed: MemoryError('no memory for this block')" in str(raised)
    assert _ends_within(hasher.close) is None  # the thread took the end-of-blocks and ended
    assert _hash_threads() == []
    quiet = BlockSha256(threaded=True)  # one that fails after the last block: the digest says
    quiet._sha = _FailsAfter(1)  # type: ignore[assignment]
    quiet.update(b"a")
    quiet.update(b"b")
    with pytest.raises(RuntimeError, match="the SHA-256 thread failed"):
        quiet.hexdigest()
    assert _hash_threads() == []


def test_age_v1_encryption_fails_when_a_hashing_thread_dies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The encrypter's hash threads (plaintext and ciphertext) hand back their blocks: one
    that dies must end the encryption with its error, not hang it."""
    monkeypatch.setattr(jaco.streams, "hashlib", SimpleNamespace(sha256=lambda: _FailsAfter(3)))
    source = io.BytesIO(os.urandom(12 * CHUNK))
    out = io.BytesIO()
    recipient = pyrage.x25519.Identity.generate().to_public()
    key = x25519_recipient_key(str(recipient))
    raised = _ends_within(lambda: encrypt_stream(source.readinto, out.write, [key]))
    assert isinstance(raised, RuntimeError), raised
    assert "the SHA-256 thread failed" in str(raised)
    assert _hash_threads() == []
