"""age encryption of archives, streaming, hashed on the way through: to X25519 recipients by
jaco.archive.age_v1 (OpenSSL's primitives), to any ssh-ed25519 recipient by pyrage.

`pyrage.encrypt_io` streams in constant memory (the other pyrage calls hold the whole file).
A writer can report success after a failed final write, so an encryption is only trusted once
its ciphertext has been decrypted again (jaco.archive.decrypter) and the plaintext's SHA-256
matched: the pipeline's verify step does that on the uploaded object. Keys are in age's own
formats: `age1…` X25519 recipients, `ssh-ed25519 …` public keys, and identity files of
`AGE-SECRET-KEY-1…` lines (what `age-keygen` writes).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pyrage

from jaco.archive.age_v1 import encrypt_stream, x25519_recipient_key
from jaco.errors import InvalidArgument, JacoError
from jaco.files import ReadOnce, private_output
from jaco.streams import CHUNK, BlockSha256, HashingReader, Writable

PIPE_BYTES = 1024 * 1024  # Linux's default pipe-max-size
AGE_MAGIC = b"age-encryption.org/v1\n"


class DecryptionFailed(JacoError):
    """The ciphertext does not decrypt with the identity given: wrong key, or damage."""

    exit_code = 14
    retryable = False


def is_age_file(path: Path) -> bool:
    """Does the file start like an age file (its binary format's header line)?"""
    try:
        with open(path, "rb") as f:
            return f.read(len(AGE_MAGIC)) == AGE_MAGIC
    except OSError:
        return False


def parse_recipient(text: str) -> Any:
    text = text.strip()
    try:
        if text.startswith("age1"):
            return pyrage.x25519.Recipient.from_str(text)
        if text.startswith("ssh-ed25519 "):
            return pyrage.ssh.Recipient.from_str(text)
    except pyrage.RecipientError as exc:
        raise InvalidArgument(f"invalid age recipient {text[:24]}…: {exc}") from None
    raise InvalidArgument(
        f"unsupported age recipient {text[:24]!r}: use an age1… X25519 key or ssh-ed25519"
    )


class Identities(list[Any]):
    """X25519 identities, and whose they are for messages ("the verify identity", "the
    identity in ops.key")."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name


def load_identities(path: Path) -> Identities:
    """X25519 identities from an age identity file (comments and blank lines allowed)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidArgument(f"cannot read the age identity file {path}: {exc.strerror}") from None
    identities = parse_identities(text, str(path))
    identities.name = f"the identity in {path}"
    return identities


def parse_identities(text: str, source: str = "the identity") -> Identities:
    """X25519 identities from the text of an age identity file (what age-keygen writes)."""
    identities = Identities(source)
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                identities.append(pyrage.x25519.Identity.from_str(line))
            except pyrage.IdentityError:
                raise InvalidArgument(
                    f"{source} holds a line that is not an age identity"
                ) from None
    if not identities:
        raise InvalidArgument(f"{source} holds no age identity")
    return identities


class HashingWriter:
    """A write-only sink that hashes (and optionally forwards) what it is given, in 1 MiB
    blocks: `flush` passes on what is still buffered. With `threaded`, the blocks are hashed
    on a thread of their own (`close` it when done)."""

    def __init__(self, forward: Writable | None = None, threaded: bool = False) -> None:
        self.sha256 = BlockSha256(threaded)
        self.size = 0
        self._forward = forward
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        self.size += len(data)
        if len(self._buffer) >= CHUNK:
            self._pass_on()
        return len(data)

    def _pass_on(self) -> None:
        if self._buffer:
            self.sha256.update(self._buffer)
            if self._forward is not None:
                self._forward.write(self._buffer)
            self._buffer = bytearray()

    def flush(self) -> None:
        self._pass_on()
        if self._forward is not None:
            self._forward.flush()

    def hexdigest(self) -> str:
        """The SHA-256 of everything written (passes on what is buffered first)."""
        self._pass_on()
        return self.sha256.hexdigest()

    def close(self) -> None:
        self.sha256.close()


def encrypt_file(source: Path, target: Path, recipients: list[str]) -> tuple[str, str]:
    """Encrypt to every recipient; written to a temp name and renamed, mode 0600.

    Returns the SHA-256 of the plaintext and of the ciphertext, hashed on the way through.
    The file is the pipeline's scratch copy, uploaded and deleted within the run: it is not
    fsynced (the stores make their own copies durable). To X25519 recipients alone it is
    encrypted with OpenSSL's ChaCha20-Poly1305 (jaco.archive.age_v1, 1.4x quicker than
    pyrage); to any ssh-ed25519 recipient, with pyrage.
    """
    parsed = [parse_recipient(r) for r in recipients]
    if not parsed:
        raise InvalidArgument("no age recipients: the archive would leave the host unencrypted")
    # Unbuffered source: both paths read it in 1 MiB blocks.
    with contextlib.ExitStack() as stack:
        # Read once (`jaco backup` left it on disk, not in memory), a window at a time
        src = ReadOnce(stack.enter_context(open(source, "rb", buffering=0)))
        out = stack.enter_context(private_output(target, durable=False))
        if all(isinstance(p, pyrage.x25519.Recipient) for p in parsed):
            keys = [x25519_recipient_key(r) for r in recipients]
            return encrypt_stream(src.readinto, out.write, keys)
        # Both hashes on threads of their own, beside pyrage (closed however this ends).
        reader = HashingReader(src, threaded=True)
        writer = HashingWriter(out, threaded=True)
        stack.callback(reader.close)
        stack.callback(writer.close)
        pyrage.encrypt_io(reader, writer, parsed)
        cipher_sha = writer.hexdigest()  # flushes the last block
    return reader.hexdigest(), cipher_sha
