"""jaco's own age v1 (jaco.archive.age_v1). The writer: what it writes is age, read back by the
`age` CLI (Go) and by pyrage (rage) at every chunk and block boundary, to each of several
recipients; each file has keys of its own; a recipient is only taken with its Bech32 checksum
right. The reader (the decrypter's): it reads what age and rage write, and refuses a payload
cut, lengthened or changed, an empty or unflagged last chunk, and a header changed, malformed
or without end, each with its reason."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import os
import subprocess
from pathlib import Path

import pyrage
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from jaco.archive.age import DecryptionFailed, Identities, encrypt_file, parse_identities
from jaco.archive.age_v1 import (
    BLOCK,
    CHUNK,
    TAG,
    b64,
    bech32_decode,
    header,
    x25519_recipient_key,
)
from jaco.archive.age_v1_read import (
    HEADER_MAX,
    LINE_MAX,
    AgeError,
    decrypt_stream,
    identity_keys,
)
from jaco.archive.encrypted import decrypting
from jaco.errors import InvalidArgument, JacoError
from tests.keys import age_keygen, ssh_keygen

# age's payload: chunks of 64 KiB, the last flagged, full or short, empty only when all is.
SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK + CHUNK]
SIZES += [16 * BLOCK + 1]  # more blocks than the hashing threads queue: their buffers reused


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
    recipient = age_keygen(tmp_path / "key")
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
    recipients = [age_keygen(key) for key in keys]
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
    # X25519 and no other: rage would add a grease stanza
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
    with pytest.raises(InvalidArgument, match="invalid age recipient .*not a 32-byte key"):
        x25519_recipient_key(_bech32_of("age", os.urandom(31)))
    identity = str(pyrage.x25519.Identity.generate())
    secret = bech32_decode(identity, "age-secret-key-")
    assert len(secret) == 32
    with pytest.raises(InvalidArgument, match="invalid age recipient"):
        x25519_recipient_key(identity)


def test_an_ssh_recipient_is_still_pyrage_s(tmp_path: Path) -> None:
    """With any ssh-ed25519 recipient the whole file is pyrage's (X25519 stanzas beside an
    ssh-ed25519 one are written by rage, not by age_v1, which knows only X25519)."""
    ssh = ssh_keygen(tmp_path / "ssh")
    recipient = age_keygen(tmp_path / "key")
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(CHUNK * 2 + 1))
    cipher = tmp_path / "cipher.age"
    plain_sha, _ = encrypt_file(plain, cipher, [recipient, ssh])
    assert plain_sha == hashlib.sha256(plain.read_bytes()).hexdigest()
    stanzas = [line.split()[1] for line in _header_lines(cipher.read_bytes()) if line[:3] == b"-> "]
    assert stanzas[:2] == [b"X25519", b"ssh-ed25519"]  # (rage adds a "grease" stanza after)
    assert _age_decrypt(cipher, tmp_path / "key") == plain.read_bytes()
    assert _age_decrypt(cipher, tmp_path / "ssh") == plain.read_bytes()


# -- the reader (the decrypter's) ----------------------------------------------------------


def _decrypt(data: bytes, identities: list[X25519PrivateKey]) -> bytes:
    source, out = io.BytesIO(data), bytearray()
    size = decrypt_stream(source.readline, source.readinto, out.extend, identities)
    assert size == len(out)
    return bytes(out)


def _failure(
    data: bytes, identities: list[X25519PrivateKey], written: bytearray | None = None
) -> AgeError:
    source, out = io.BytesIO(data), bytearray() if written is None else written
    with pytest.raises(AgeError) as caught:
        decrypt_stream(source.readline, source.readinto, out.extend, identities)
    return caught.value


@pytest.fixture
def key(tmp_path: Path) -> tuple[str, list[X25519PrivateKey]]:
    recipient = age_keygen(tmp_path / "key")
    return recipient, identity_keys((tmp_path / "key").read_text().splitlines()[-1])


def _sealed_by_age(tmp_path: Path, recipient: str, plaintext: bytes) -> bytes:
    (tmp_path / "p").write_bytes(plaintext)
    subprocess.run(["age", "-r", recipient, "-o", str(tmp_path / "c"), str(tmp_path / "p")],
                   check=True)  # fmt: skip
    return (tmp_path / "c").read_bytes()


@pytest.mark.parametrize("size", SIZES)
def test_it_reads_what_age_and_rage_write(
    tmp_path: Path, key: tuple[str, list[X25519PrivateKey]], size: int
) -> None:
    recipient, identities = key
    plaintext = os.urandom(size)
    assert _decrypt(_sealed_by_age(tmp_path, recipient, plaintext), identities) == plaintext
    by_rage = pyrage.encrypt(plaintext, [pyrage.x25519.Recipient.from_str(recipient)])
    assert b"-grease" in by_rage  # a stanza of a type it passes over
    assert _decrypt(bytes(by_rage), identities) == plaintext


def _payload(data: bytes) -> int:
    return _payload_at(data) + 16  # the first chunk, after the nonce


def test_a_payload_cut_lengthened_or_changed_is_damaged(
    tmp_path: Path, key: tuple[str, list[X25519PrivateKey]]
) -> None:
    recipient, identities = key
    plaintext = os.urandom(2 * BLOCK + CHUNK)  # 33 chunks, the last full
    data = _sealed_by_age(tmp_path, recipient, plaintext)
    start, sealed_chunk = _payload(data), CHUNK + TAG
    cases = {
        "cut at a chunk's end": data[:-sealed_chunk],
        "cut at a block's end": data[: start + 16 * sealed_chunk],
        "cut inside a chunk": data[:-100],
        "cut to less than a tag": data[: start + 32 * sealed_chunk + 7],
        "cut in the nonce": data[: start - 3],
        "nothing after the nonce": data[:start],
        "a byte more": data + b"\0",
        "a tag's worth more": data + bytes(16),
        "its last chunk again": data + data[-sealed_chunk:],
        "a payload byte changed": _flip(data, start + 5 * sealed_chunk + 9),
        "the nonce changed": _flip(data, start - 1),
    }
    for case, damaged in cases.items():
        written = bytearray()
        failure = _failure(damaged, identities, written)
        assert failure.damaged, (case, failure)
        assert "payload" in str(failure), (case, failure)
        # only whole blocks whose every chunk was authenticated reach the reader
        assert len(written) % BLOCK == 0 and written == plaintext[: len(written)], case


def _other_b64(line: bytes, at: int) -> bytes:
    """`line` with the base64 character at `at` replaced by the next one of the alphabet: still
    base64 (a bit flip could make it + / or @ and be refused for that instead)."""
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    return line[:at] + bytes([alphabet[(alphabet.index(line[at]) + 1) % 64]]) + line[at + 1 :]


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def _seal(file_key: bytes, chunks: list[tuple[bytes, bool]], recipient: bytes) -> bytes:
    """An age file whose chunks and last flags the test chooses."""
    nonce = os.urandom(16)
    aead = ChaCha20Poly1305(
        HKDF(algorithm=hashes.SHA256(), length=32, salt=nonce, info=b"payload").derive(file_key)
    )
    body = b"".join(
        aead.encrypt(i.to_bytes(11, "big") + (b"\x01" if last else b"\x00"), chunk, None)
        for i, (chunk, last) in enumerate(chunks)
    )
    return header([recipient], file_key) + nonce + body


def test_an_empty_or_unflagged_last_chunk_is_refused(
    key: tuple[str, list[X25519PrivateKey]],
) -> None:
    recipient, identities = key
    raw, file_key, full = x25519_recipient_key(recipient), os.urandom(16), os.urandom(CHUNK)
    assert _decrypt(_seal(file_key, [(full, False), (b"x", True)], raw), identities) == full + b"x"
    assert _decrypt(_seal(file_key, [(b"", True)], raw), identities) == b""  # all of it empty
    refused = {
        "an empty last chunk after a full one": [(full, False), (b"", True)],
        "the last chunk not flagged": [(full, False), (b"x", False)],
        "a short chunk before the last": [(b"x", False), (full, True)],
        "a full chunk flagged before the last": [(full, True), (b"x", True)],
        "no chunk": [],
    }
    for case, chunks in refused.items():
        failure = _failure(_seal(file_key, chunks, raw), identities)
        assert failure.damaged, (case, failure)


def test_a_header_changed_malformed_or_unbounded_is_refused_before_the_payload(
    tmp_path: Path, key: tuple[str, list[X25519PrivateKey]]
) -> None:
    recipient, identities = key
    data = _sealed_by_age(tmp_path, recipient, os.urandom(1000))
    lines = data[: _payload_at(data)].split(b"\n")
    version, stanza, body, mac = lines[0], lines[1], lines[2], lines[3]
    payload = data[_payload_at(data) :]

    def built(*header_lines: bytes) -> bytes:
        return b"\n".join(header_lines) + b"\n" + payload

    other = X25519PrivateKey.generate()
    zero_share = b"-> X25519 " + b64(bytes(32))
    share31 = b"-> X25519 " + b64(os.urandom(31))
    cases = {
        "no identity matched": [
            (data, [other]),
            (built(version, stanza, _other_b64(body, 5), mac), identities),
            (built(version, _other_b64(stanza, 15), body, mac), identities),
        ],
        "MAC does not match": [
            (built(version, b"-> other-kind arg", b"", stanza, body, mac), identities),
            (built(version, stanza, body, b"--- " + b64(os.urandom(32))), identities),
        ],
        "not an age v1 file": [(b"age-encryption.org/v2\n" + data[22:], identities)],
        "not age's base64": [
            (built(version, stanza, body, mac[:-1] + b"B"), identities),  # not canonical
            (built(version, stanza, body, mac + b"="), identities),
            (built(version, stanza, body, b"--- " + b"A" * 45), identities),  # 45: no length
            (built(version, stanza, body[:-1] + b".", mac), identities),
        ],
        "malformed line": [
            (built(version, b"-> ", b"", stanza, body, mac), identities),
            (built(version, b"-> a\tb", b"", stanza, body, mac), identities),
            (built(version, b"x " + stanza, body, mac), identities),
        ],
        "malformed X25519 stanza": [
            (built(version, stanza + b" more", body, mac), identities),
            (built(version, stanza, b64(os.urandom(33)), mac), identities),  # age: 32 bytes
            (built(version, share31, body, mac), identities),
            # wherever it stands: after the stanza that opens it, too
            (built(version, stanza, body, stanza + b" more", body, mac), identities),
        ],
        "low order": [(built(version, zero_share, body, mac), identities)],
        "over 64 columns": [(built(version, stanza, b"A" * 65, mac), identities)],
        "line over its bound": [(built(version, b"-> " + b"a" * LINE_MAX, mac), identities)],
        "cut short": [(data[: _payload_at(data) - 10], identities)],
    }
    for words, attempts in cases.items():
        for sealed, who in attempts:
            failure = _failure(sealed, who)
            assert words in str(failure) and not failure.damaged, (words, failure)


def test_the_header_is_read_within_its_bound(key: tuple[str, list[X25519PrivateKey]]) -> None:
    """Stanzas without end: refused once 1 MiB is read, not read on."""
    _, identities = key
    endless = b"age-encryption.org/v1\n" + b"-> grease a\n\n" * (HEADER_MAX // 12 + 10_000)
    source = io.BytesIO(endless)
    with pytest.raises(AgeError, match="the header is over its bound"):
        decrypt_stream(source.readline, source.readinto, bytearray().extend, identities)
    assert HEADER_MAX <= source.tell() <= HEADER_MAX + LINE_MAX


def test_two_identities_try_every_stanza_and_a_malformed_one_is_refused(tmp_path: Path) -> None:
    """age's order: each identity tries the stanzas in turn. A file for the second identity is
    read; one that also holds a malformed X25519 stanza is refused, whatever the order of the
    identities (age refuses it where it meets it first); a low-order share, where an identity
    meets it before its own stanza, as age does. Its MAC right: made by a file key's holder."""
    first, second = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    raw = second.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    file_key = os.urandom(16)
    good = _seal(file_key, [(b"plain", True)], raw)
    assert _decrypt(good, [first, second]) == b"plain"
    lines = good[: _payload_at(good)].split(b"\n")
    payload = good[_payload_at(good) :]

    def crafted(*extra: bytes) -> bytes:
        text = b"\n".join([lines[0], lines[1], lines[2], *extra]) + b"\n---"
        key = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"", info=b"header")
        mac = hmac.new(key.derive(file_key), text, hashlib.sha256).digest()
        return text + b" " + b64(mac) + b"\n" + payload

    malformed = crafted(lines[1] + b" more", lines[2])
    for order in ([first, second], [second, first]):
        assert "malformed X25519 stanza" in str(_failure(malformed, order))
    low_order = crafted(b"-> X25519 " + b64(bytes(32)), b64(os.urandom(32)))
    assert "low order" in str(_failure(low_order, [first, second]))
    assert _decrypt(low_order, [second, first]) == b"plain"  # its own stanza first: age reads it


def test_identities_and_recipients_of_the_wrong_kind_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(AgeError, match="not an age X25519 identity: bad checksum"):
        identity_keys("AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ")
    recipient = str(pyrage.x25519.Identity.generate().to_public())
    assert _bech32_of("age", x25519_recipient_key(recipient)) == recipient  # the test's encoder
    with pytest.raises(AgeError, match="not an age X25519 identity: not a 32-byte key"):
        identity_keys(_bech32_of("age-secret-key-", os.urandom(31)).upper())
    low_order = "age1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqq5cu47z"
    assert x25519_recipient_key(low_order) == bytes(32)
    plain = tmp_path / "plain"
    plain.write_bytes(b"x" * 100)
    with pytest.raises(InvalidArgument, match="not a usable X25519 key"):
        encrypt_file(plain, tmp_path / "cipher.age", [low_order])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain"]  # nothing left behind


def _bech32_of(hrp: str, data: bytes) -> str:
    """Bech32 (BIP 173) of `data`, the test's own encoder."""
    values, acc, bits = [], 0, 0
    for byte in data:
        acc, bits = acc << 8 | byte, bits + 8
        while bits >= 5:
            bits -= 5
            values.append(acc >> bits & 31)
    if bits:
        values.append(acc << (5 - bits) & 31)
    check = 1
    for value in [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp] + values + [0] * 6:
        top = check >> 25
        check = (check & 0x1FFFFFF) << 5 ^ value
        for i, generator in enumerate((0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)):
            check ^= generator if top >> i & 1 else 0
    check ^= 1
    alphabet = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
    return (
        hrp
        + "1"
        + "".join(alphabet[v] for v in values + [check >> 5 * (5 - i) & 31 for i in range(6)])
    )


def test_an_identity_that_is_not_one_is_the_caller_s_failure_not_the_backup_s(
    tmp_path: Path, key: tuple[str, list[X25519PrivateKey]]
) -> None:
    """The decrypter exits 1 for it, not 14: verify takes 14 for a backup that does not
    decrypt, and deletes it."""
    recipient, _ = key
    cipher = tmp_path / "cipher.age"
    cipher.write_bytes(_sealed_by_age(tmp_path, recipient, b"plain"))
    bad = Identities("a mistyped identity")
    bad.append(_bech32_of("age-secret-key-", os.urandom(31)).upper())
    with pytest.raises(JacoError) as caught:
        with decrypting(cipher, bad) as (plain, _):
            plain.read(10)
    assert not isinstance(caught.value, DecryptionFailed), caught.value
    assert "the decrypter failed (an identity is not an age X25519 identity" in str(caught.value)
