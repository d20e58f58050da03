"""age v1 with OpenSSL's primitives: the format's pieces and the writer (the pipeline's encrypt
step, to X25519 recipients), each file's hashes taken on the way through; the reader (the
decrypter's: restore, verify and the drill) is jaco.archive.age_v1_read.

pyrage (rage's Rust) encrypts 512 MiB in 0.68-0.73 s, 1.4x the `age` CLI, reading its input
through Python 8 KiB at a time; OpenSSL's ChaCha20-Poly1305 (`cryptography`, already a
dependency) does the same chunks in 0.20 s. The format is age's, nothing of jaco's own
(https://age-encryption.org/v1): `age -d` and rage read what the writer writes, the reader
reads what they write, and the tests hold both to them at every chunk and block boundary, so
that what jaco's reader verifies is what `age -d` would restore. Any ssh-ed25519 recipient
makes the whole file pyrage's (jaco.archive.age.encrypt_file).

The file key and every ephemeral key come from the OS's generator (`os.urandom`); each file has
its own, so no (key, nonce) pair is ever used twice.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import queue
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jaco.errors import InvalidArgument
from jaco.streams import BlockSha256

CHUNK = 64 * 1024  # age's payload chunk (plaintext bytes)
TAG = 16
BLOCK_CHUNKS = 16  # chunks per block handed between the threads: 1 MiB of plaintext
BLOCK = CHUNK * BLOCK_CHUNKS
CIPHER_BLOCK = (CHUNK + TAG) * BLOCK_CHUNKS
VERSION_LINE = b"age-encryption.org/v1"
X25519_LABEL = b"age-encryption.org/v1/X25519"
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def b64(data: bytes) -> bytes:
    """age's base64: RFC 4648's standard alphabet, no padding."""
    return base64.b64encode(data).rstrip(b"=")


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA-256 to 32 bytes: how age derives every key from another."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _polymod(values: list[int]) -> int:
    check = 1
    for value in values:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for i, generator in enumerate((0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)):
            if top >> i & 1:
                check ^= generator
    return check


def bech32_decode(text: str, hrp: str) -> bytes:
    """The bytes a Bech32 string (BIP 173, age's keys) with human-readable part `hrp` holds,
    its checksum checked; ValueError if it is not one."""
    lower = text.lower()
    prefix, sep, data = lower.rpartition("1")
    if text not in (lower, text.upper()) or not sep or prefix != hrp or len(data) < 6:
        raise ValueError("not Bech32 of that kind")
    if any(c not in _BECH32 for c in data):
        raise ValueError("a character outside Bech32's alphabet")
    values = [_BECH32.index(c) for c in data]
    expanded = [ord(c) >> 5 for c in prefix] + [0] + [ord(c) & 31 for c in prefix]
    if _polymod(expanded + values) != 1:
        raise ValueError("bad checksum")
    acc = bits = 0
    decoded = bytearray()
    for value in values[:-6]:
        acc, bits = acc << 5 | value, bits + 5
        if bits >= 8:
            bits -= 8
            decoded.append(acc >> bits & 0xFF)
    if bits >= 5 or acc & ((1 << bits) - 1):
        raise ValueError("bad padding")
    return bytes(decoded)


def x25519_recipient_key(text: str) -> bytes:
    """The 32-byte public key of an `age1…` recipient."""
    text = text.strip()
    try:
        key = bech32_decode(text, "age")
    except ValueError as exc:
        raise InvalidArgument(f"invalid age recipient {text[:24]}…: {exc}") from None
    if len(key) != 32:
        raise InvalidArgument(f"invalid age recipient {text[:24]}…: not a 32-byte key")
    return key


def _stanza(recipient: bytes, file_key: bytes) -> bytes:
    """An X25519 recipient stanza wrapping `file_key` (age v1, "The X25519 recipient type")."""
    ephemeral = X25519PrivateKey.from_private_bytes(os.urandom(32))
    share = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    try:
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient))
    except ValueError:  # a point of low order: the shared secret would be all zeros
        raise InvalidArgument("an age recipient is not a usable X25519 key (low order)") from None
    wrap_key = hkdf(shared, share + recipient, X25519_LABEL)
    body = ChaCha20Poly1305(wrap_key).encrypt(bytes(12), file_key, None)
    return b"-> X25519 " + b64(share) + b"\n" + b64(body) + b"\n"


def header(recipients: list[bytes], file_key: bytes) -> bytes:
    """The header for `recipients` (raw X25519 public keys), its MAC made with `file_key`."""
    text = VERSION_LINE + b"\n" + b"".join(_stanza(r, file_key) for r in recipients) + b"---"
    mac = hmac.new(hkdf(file_key, b"", b"header"), text, hashlib.sha256).digest()
    return text + b" " + b64(mac) + b"\n"


def chunk_nonce(counter: int, last: bool) -> bytes:
    """A payload chunk's nonce: its 11-byte big-endian counter, then 1 for the last chunk."""
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def _hashed_on_its_thread(
    stack: contextlib.ExitStack,
) -> tuple[BlockSha256, Callable[[int], bytearray]]:
    """A threaded BlockSha256 that hands its blocks back, ended with `stack`, and what gives a
    buffer to fill: one it handed back, or a new one."""
    spare: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
    sha = BlockSha256(threaded=True, spare=spare)
    stack.callback(sha.close)

    def buffer(size: int) -> bytearray:
        try:
            return spare.get_nowait()
        except queue.Empty:
            return bytearray(size)

    return sha, buffer


def encrypt_stream(
    readinto: Callable[[memoryview], int],
    write: Callable[[memoryview], object],
    recipients: list[bytes],
) -> tuple[str, str]:
    """Encrypt everything `readinto` gives to `recipients` (raw X25519 keys), passing the age
    file to `write` (done with each view when it returns: its buffer is used again); returns
    the SHA-256 of the plaintext and of the ciphertext, each hashed on a thread of its own
    while the next block is read and encrypted."""
    if not recipients:
        raise InvalidArgument("no age recipients: the archive would leave the host unencrypted")
    file_key = os.urandom(16)
    nonce = os.urandom(16)
    aead = ChaCha20Poly1305(hkdf(file_key, nonce, b"payload"))
    with contextlib.ExitStack() as stack:  # each thread ended however this ends
        plain, plain_buffer = _hashed_on_its_thread(stack)
        cipher, cipher_buffer = _hashed_on_its_thread(stack)
        start = header(recipients, file_key) + nonce
        cipher.update(start)
        write(memoryview(start))
        counter = 0
        block = plain_buffer(BLOCK)
        filled = fill(readinto, block)
        while True:
            following = plain_buffer(BLOCK) if filled == BLOCK else None
            more = fill(readinto, following) if following is not None else 0
            # age's last chunk is flagged; it may be full, and is empty only if all of it is.
            out = cipher_buffer(CIPHER_BLOCK)
            view, sealed = memoryview(block), memoryview(out)
            at = done = 0
            while True:
                size = min(CHUNK, filled - at)
                last = not more and at + size == filled
                aead.encrypt_into(
                    chunk_nonce(counter, last),
                    view[at : at + size],
                    None,
                    sealed[done : done + size + TAG],
                )
                counter += 1
                at, done = at + size, done + size + TAG
                if at == filled:
                    break
            # a whole buffer is handed back once hashed; the last, short one is hashed as a copy
            plain.update(block if filled == BLOCK else bytes(block[:filled]))
            write(sealed[:done])
            cipher.update(out if done == CIPHER_BLOCK else bytes(out[:done]))
            if not more:
                break
            assert following is not None
            block, filled = following, more
    return plain.hexdigest(), cipher.hexdigest()


def fill(readinto: Callable[[memoryview], int], block: bytearray) -> int:
    """Fill `block` as far as the source goes (short only at its end)."""
    view = memoryview(block)
    at = 0
    while at < len(block) and (n := readinto(view[at:])):
        at += n
    return at
