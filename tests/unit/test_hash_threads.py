"""SHA-256 on threads of their own beside the encrypter (`jaco.streams.BlockSha256`): the same
digests as hashing inline, and no thread left behind however an encryption ends.
(Decryption runs in a process of its own since stop 31: tests/unit/test_decrypter.py.)"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import threading
from pathlib import Path

import pytest

from jaco.archive.age import HashingWriter, encrypt_file, parse_identities
from jaco.archive.encrypted import decrypting
from jaco.streams import CHUNK, BlockSha256, HashingReader
from tests.mounts import tmpfs


def _hash_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sha256"]


def _keygen(path: Path) -> str:
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    return next(
        line.split(": ", 1)[1] for line in path.read_text().splitlines() if "public key" in line
    )


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
    recipient = _keygen(tmp_path / "key")
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


def test_an_encryption_that_fails_leaves_no_hashing_thread(tmp_path: Path) -> None:
    """The disk fills after blocks were hashed on both sides: both threads end."""
    recipient = _keygen(tmp_path / "key")
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(3 * CHUNK))
    with tmpfs(tmp_path / "small", "size=1m") as small:
        with pytest.raises(OSError, match="No space left on device"):
            encrypt_file(plain, small / "cipher", [recipient])
        assert _hash_threads() == []
