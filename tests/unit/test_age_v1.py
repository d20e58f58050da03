"""jaco's own age v1 writer (jaco.archive.age_v1): what it writes is age, read back by the `age`
CLI (Go) and by pyrage (rage) at every chunk and block boundary, to each of several recipients;
each file has keys of its own; a recipient is only taken with its Bech32 checksum right."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from pathlib import Path

import pyrage
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jaco.archive.age import encrypt_file, parse_identities
from jaco.archive.age_v1 import BLOCK, CHUNK, bech32_decode, x25519_recipient_key
from jaco.errors import InvalidArgument

# age's payload: chunks of 64 KiB, the last flagged, full or short, empty only when all is.
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + CHUNK]


def _keygen(path: Path) -> str:
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    return next(
        line.split(": ", 1)[1] for line in path.read_text().splitlines() if "public key" in line
    )


def _age_decrypt(cipher: Path, key: Path) -> bytes:
    run = subprocess.run(["age", "-d", "-i", str(key), str(cipher)], capture_output=True)
    assert run.returncode == 0, run.stderr
    return run.stdout


def _payload_at(data: bytes) -> int:
    """Where the payload (its 16-byte nonce, then the chunks) starts: after the MAC's line."""
    return data.index(b"\n", data.index(b"\n---") + 1) + 1


def _unwrap(secret: bytes, stanza: bytes, body: bytes) -> bytes:
    """The file key in an X25519 stanza, unwrapped with the identity's secret (age v1)."""
    share = base64.b64decode(stanza.split()[2] + b"=")
    identity = X25519PrivateKey.from_private_bytes(secret)
    ours = identity.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    shared = identity.exchange(X25519PublicKey.from_public_bytes(share))
    wrap_key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=share + ours,
        info=b"age-encryption.org/v1/X25519",
    ).derive(shared)
    return ChaCha20Poly1305(wrap_key).decrypt(bytes(12), base64.b64decode(body + b"="), None)


def _header_lines(data: bytes) -> list[bytes]:
    end = data.index(b"\n---") + 1
    return [*data[:end].split(b"\n")[:-1], data[end : data.index(b"\n", end)]]


@pytest.mark.parametrize("size", SIZES)
def test_age_and_pyrage_decrypt_what_it_writes(tmp_path: Path, size: int) -> None:
    recipient = _keygen(tmp_path / "key")
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(size))
    cipher = tmp_path / "cipher.age"
    plain_sha, cipher_sha = encrypt_file(plain, cipher, [recipient])
    data = cipher.read_bytes()
    assert _age_decrypt(cipher, tmp_path / "key") == plain.read_bytes()
    identities = parse_identities((tmp_path / "key").read_text())
    assert pyrage.decrypt(data, identities) == plain.read_bytes()
    assert plain_sha == hashlib.sha256(plain.read_bytes()).hexdigest()
    assert cipher_sha == hashlib.sha256(data).hexdigest()
    assert cipher.stat().st_mode & 0o777 == 0o600
    # One tag per chunk and no more: an empty last chunk only when the plaintext is empty.
    chunks = max(1, -(-size // CHUNK))
    assert len(data) == _payload_at(data) + 16 + size + 16 * chunks


def test_every_recipient_can_decrypt_and_each_file_has_keys_of_its_own(tmp_path: Path) -> None:
    keys = [tmp_path / f"key{i}" for i in range(3)]
    recipients = [_keygen(key) for key in keys]
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(CHUNK + 5))
    first, second = tmp_path / "first.age", tmp_path / "second.age"
    encrypt_file(plain, first, recipients)
    encrypt_file(plain, second, recipients)
    for key in keys:
        assert _age_decrypt(first, key) == _age_decrypt(second, key) == plain.read_bytes()
    one, two = first.read_bytes(), second.read_bytes()
    lines_one, lines_two = _header_lines(one), _header_lines(two)
    assert lines_one[0] == b"age-encryption.org/v1"
    stanzas = [line for line in lines_one if line.startswith(b"-> ")]
    assert [line.split()[1] for line in stanzas] == [b"X25519"] * 3
    shares = {line for line in lines_one + lines_two if line.startswith(b"-> ")}
    assert len(shares) == 6  # an ephemeral key per recipient and file
    # and a file key per file: unwrapped from each file's first stanza, as age -d does
    secret = bech32_decode(str(parse_identities(keys[0].read_text())[0]), "age-secret-key-")
    file_keys = {_unwrap(secret, lines[1], lines[2]) for lines in (lines_one, lines_two)}
    assert len(file_keys) == 2 and all(len(key) == 16 for key in file_keys)
    # the payload's nonce (the 16 bytes after the header) and so its key differ too
    start_one, start_two = _payload_at(one), _payload_at(two)
    assert one[start_one : start_one + 16] != two[start_two : start_two + 16]
    assert one[start_one + 16 :] != two[start_two + 16 :]


def test_the_recipient_key_is_the_identity_s_public_key() -> None:
    for _ in range(5):
        identity = pyrage.x25519.Identity.generate()
        secret = bech32_decode(str(identity), "age-secret-key-")
        public = X25519PrivateKey.from_private_bytes(secret).public_key()
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        text = str(identity.to_public())
        assert x25519_recipient_key(text) == raw
        assert bech32_decode(text.upper(), "age") == raw  # Bech32 is one case or the other


def test_a_recipient_is_refused_unless_its_bech32_is_right() -> None:
    good = str(pyrage.x25519.Identity.generate().to_public())
    alphabet = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
    at = len(good) // 2
    typo = good[:at] + alphabet[(alphabet.index(good[at]) + 1) % 32] + good[at + 1 :]
    cases = {
        typo: "bad checksum",
        good[:-1] + ("q" if good[-1] != "q" else "p"): "bad checksum",
        good[:10] + good[10:].upper(): "not Bech32",
        "agf1" + good[4:]: "not Bech32",
        good[:8] + "b" + good[9:]: "outside Bech32's alphabet",
        good[:-8]: "bad checksum",
    }
    for text, reason in cases.items():
        with pytest.raises(InvalidArgument, match=f"invalid age recipient .*{reason}"):
            x25519_recipient_key(text)
    # a key of another length, checksum right
    identity = str(pyrage.x25519.Identity.generate())
    secret = bech32_decode(identity, "age-secret-key-")
    assert len(secret) == 32
    with pytest.raises(InvalidArgument, match="invalid age recipient"):
        x25519_recipient_key(identity)


def test_an_ssh_recipient_is_still_pyrage_s(tmp_path: Path) -> None:
    """With any ssh-ed25519 recipient the whole file is pyrage's (X25519 stanzas beside an
    ssh-ed25519 one are written by rage, not by age_v1, which knows only X25519)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "ssh")], check=True
    )
    ssh = (tmp_path / "ssh.pub").read_text().strip()
    recipient = _keygen(tmp_path / "key")
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(CHUNK * 2 + 1))
    cipher = tmp_path / "cipher.age"
    plain_sha, _ = encrypt_file(plain, cipher, [recipient, ssh])
    assert plain_sha == hashlib.sha256(plain.read_bytes()).hexdigest()
    stanzas = [line.split()[1] for line in _header_lines(cipher.read_bytes()) if line[:3] == b"-> "]
    assert stanzas[:2] == [b"X25519", b"ssh-ed25519"]  # (rage adds a "grease" stanza after)
    assert _age_decrypt(cipher, tmp_path / "key") == plain.read_bytes()
    assert _age_decrypt(cipher, tmp_path / "ssh") == plain.read_bytes()
