"""SHA-256 on threads of their own beside pyrage (`jaco.files.BlockSha256`): the same
digests as hashing inline, and no thread left behind however a decryption ends."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import threading
from pathlib import Path

import pytest

from jaco.archive.age import (
    DecryptionFailed,
    HashingWriter,
    decrypt_to,
    encrypt_file,
    parse_identities,
)
from jaco.files import CHUNK, BlockSha256, HashingReader


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
    out = io.BytesIO()
    sink = HashingWriter(out, threaded=True)
    assert decrypt_to(tmp_path / "cipher", sink, identities) == cipher_sha
    sink.close()
    assert sink.hexdigest() == plain_sha and out.getvalue() == plain.read_bytes()
    assert _hash_threads() == []


def test_a_decryption_that_fails_leaves_no_hashing_thread(tmp_path: Path) -> None:
    recipient = _keygen(tmp_path / "key")
    _keygen(tmp_path / "other")
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(3 * CHUNK))
    encrypt_file(plain, tmp_path / "cipher", [recipient])
    wrong = parse_identities((tmp_path / "other").read_text())
    sink = HashingWriter(io.BytesIO(), threaded=True)
    with pytest.raises(DecryptionFailed):
        decrypt_to(tmp_path / "cipher", sink, wrong)
    sink.close()
    # A damaged payload fails after blocks were hashed: the reader's thread ends too.
    body = bytearray((tmp_path / "cipher").read_bytes())
    body[len(body) // 2] ^= 1
    (tmp_path / "damaged").write_bytes(bytes(body))
    right = parse_identities((tmp_path / "key").read_text())
    with pytest.raises(DecryptionFailed):
        decrypt_to(tmp_path / "damaged", io.BytesIO(), right)
    assert _hash_threads() == []
