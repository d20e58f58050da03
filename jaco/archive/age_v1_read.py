"""age v1's reader over OpenSSL's primitives (jaco.archive.age_v1 has the format's pieces and
the writer): the decrypter's, for restore of a `.tar.gz.age`, verify and the drill.

It is bounded before it spends anything (a header line 4 KiB, the header 1 MiB), holds base64
to age's canonical unpadded form, compares the header's MAC in constant time, authenticates
every 64 KiB chunk before its plaintext is passed on, and refuses a payload cut short,
followed by more, or whose last chunk is not flagged, or empty after others. It reads what
`age` and rage write (tests/unit/test_age_v1.py holds it to both).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from jaco.archive.age_v1 import (
    BLOCK,
    CHUNK,
    CIPHER_BLOCK,
    TAG,
    VERSION_LINE,
    X25519_LABEL,
    b64,
    bech32_decode,
    chunk_nonce,
    fill,
    hkdf,
)

LINE_MAX = 4096  # a header line; age's own are under 100 bytes
HEADER_MAX = 1024 * 1024  # the whole header: thousands of recipients
_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
_VCHAR = frozenset(range(33, 127))  # what a stanza's arguments are made of


class AgeError(Exception):
    """An age file that does not decrypt, in one line: `damaged` when its payload fails
    (cut, changed, or more after its last chunk); otherwise its header (no identity opens
    it, or it is malformed or changed)."""

    def __init__(self, words: str, damaged: bool = False) -> None:
        super().__init__(words)
        self.damaged = damaged


def _unb64(text: bytes, what: str) -> bytes:
    """age's base64, strictly: the standard alphabet, no padding, canonical."""
    if not set(text) <= _B64 or len(text) % 4 == 1:
        raise AgeError(f"the header's {what} is not age's base64")
    data = base64.b64decode(text + b"=" * (-len(text) % 4))
    if b64(data) != text:
        raise AgeError(f"the header's {what} is not age's base64")
    return data


def identity_keys(text: str) -> list[X25519PrivateKey]:
    """The X25519 identities of `AGE-SECRET-KEY-1…` lines, one or more separated by space."""
    keys = []
    for word in text.split():
        try:
            secret = bech32_decode(word, "age-secret-key-")
        except ValueError as exc:
            raise AgeError(f"an identity is not an age X25519 identity: {exc}") from None
        if len(secret) != 32:
            raise AgeError("an identity is not an age X25519 identity: not a 32-byte key")
        keys.append(X25519PrivateKey.from_private_bytes(secret))
    return keys


Stanza = tuple[list[bytes], bytes]  # its arguments, its body


def read_header(readline: Callable[[int], bytes]) -> tuple[bytes, list[Stanza], bytes]:
    """The header read off a stream line by line, bounded (LINE_MAX, HEADER_MAX): what its MAC
    covers, its stanzas (arguments, body) and its MAC."""
    first = readline(LINE_MAX)
    if first != VERSION_LINE + b"\n":
        raise AgeError("not an age v1 file")
    text = bytearray(first)  # grown in place: a bytes += copied the header for every line
    stanzas: list[Stanza] = []
    while True:
        line = _header_line(readline, len(text))
        if line.startswith(b"--- "):
            mac = _unb64(line[4:-1], "MAC")
            if len(mac) != 32:
                raise AgeError("the header's MAC is not 32 bytes")
            return bytes(text) + b"---", stanzas, mac
        text += line
        args = line[3:-1].split(b" ")
        if not line.startswith(b"-> ") or not all(arg and set(arg) <= _VCHAR for arg in args):
            raise AgeError("the header holds a malformed line")
        body: list[bytes] = []
        while True:
            piece = _header_line(readline, len(text))
            text += piece
            if len(piece) > 65:
                raise AgeError("the header holds a stanza line over 64 columns")
            body.append(_unb64(piece[:-1], "stanza body"))
            if len(piece) < 65:
                break
        stanzas.append((args, b"".join(body)))


def _header_line(readline: Callable[[int], bytes], so_far: int) -> bytes:
    line = readline(LINE_MAX)
    if not line.endswith(b"\n"):
        too_long = len(line) >= LINE_MAX
        raise AgeError(
            "the header holds a line over its bound" if too_long else "the header is cut short"
        )
    if so_far + len(line) > HEADER_MAX:
        raise AgeError("the header is over its bound (1 MiB)")
    return line


def file_key(
    mac_text: bytes,
    stanzas: list[Stanza],
    mac: bytes,
    identities: list[X25519PrivateKey],
) -> bytes:
    """The file key that one of `identities` unwraps from an X25519 stanza, the header's MAC
    checked with it; other stanza types are passed over. Every X25519 stanza must be well
    formed, wherever it stands (age's spec: a body of exactly 32 bytes; `age -d` refuses one
    where it meets it), and each identity tries them in turn, as `age -d` does: a low-order
    share it meets before its own stanza is refused."""
    x25519 = []
    for args, body in stanzas:
        if args[0] != b"X25519":
            continue
        if len(args) != 2 or len(body) != 32:
            raise AgeError("the header holds a malformed X25519 stanza")
        share = _unb64(args[1], "X25519 share")
        if len(share) != 32:
            raise AgeError("the header holds a malformed X25519 stanza")
        x25519.append((share, body))
    for identity in identities:
        ours = identity.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        for share, body in x25519:
            try:
                shared = identity.exchange(X25519PublicKey.from_public_bytes(share))
            except ValueError:
                raise AgeError("the header holds an X25519 share of low order") from None
            wrap_key = hkdf(shared, share + ours, X25519_LABEL)
            try:
                key = ChaCha20Poly1305(wrap_key).decrypt(bytes(12), body, None)
            except InvalidTag:
                continue
            expected = hmac.new(hkdf(key, b"", b"header"), mac_text, hashlib.sha256).digest()
            if not hmac.compare_digest(expected, mac):
                raise AgeError("the header's MAC does not match: it was changed")
            return key
    raise AgeError("no identity matched any of the recipients")


def decrypt_stream(
    readline: Callable[[int], bytes],
    readinto: Callable[[memoryview], int],
    write: Callable[[memoryview], object],
    identities: list[X25519PrivateKey],
) -> int:
    """Decrypt an age file read off a stream (its header by `readline`, its payload by
    `readinto`) with `identities`, writing the plaintext to `write` 1 MiB at a time; returns
    the plaintext's size. Every chunk is authenticated before its plaintext is written; the
    last must be flagged as last and nothing may follow it (AgeError, `damaged`)."""
    mac_text, stanzas, mac = read_header(readline)
    key = file_key(mac_text, stanzas, mac, identities)
    nonce = bytearray(16)
    if fill(readinto, nonce) != 16:
        raise AgeError("the payload is cut short before its nonce", damaged=True)
    aead = ChaCha20Poly1305(hkdf(key, bytes(nonce), b"payload"))
    sealed, following = bytearray(CIPHER_BLOCK), bytearray(CIPHER_BLOCK)
    plain = bytearray(BLOCK)
    filled = fill(readinto, sealed)
    counter = size = 0
    while True:
        more = fill(readinto, following) if filled == CIPHER_BLOCK else 0
        view, out = memoryview(sealed), memoryview(plain)
        at = done = 0
        while at < filled or not counter:
            piece = min(CHUNK + TAG, filled - at)
            last = not more and at + piece == filled
            if piece < TAG or (piece == TAG and (counter or not last)):
                raise AgeError("the payload is cut short or has an empty chunk", damaged=True)
            try:
                aead.decrypt_into(
                    chunk_nonce(counter, last),
                    view[at : at + piece],
                    None,
                    out[done : done + piece - TAG],
                )
            except InvalidTag:
                raise AgeError(
                    f"payload chunk {counter} fails authentication: changed, cut short, or "
                    "followed by more",
                    damaged=True,
                ) from None
            counter += 1
            at, done = at + piece, done + piece - TAG
        write(out[:done])
        size += done
        if not more:
            return size
        sealed, following, filled = following, sealed, more
