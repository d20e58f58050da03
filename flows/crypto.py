"""age encryption of archives with pyrage, streaming, and the proof that it worked.

`pyrage.encrypt_io` / `decrypt_io` stream in constant memory (the other pyrage calls hold the
whole file and the GIL). pyrage can report success after a failed final write, so an
encryption is only trusted after its ciphertext has been decrypted again and the plaintext's
SHA-256 matched. Keys are in age's own formats: `age1…` X25519 recipients, `ssh-ed25519 …`
public keys, and identity files of `AGE-SECRET-KEY-1…` lines (what `age-keygen` writes).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import IO, Any

import pyrage

from flows.errors import PipelineError, VerifyFailed

CHUNK = 1024 * 1024


def parse_recipient(text: str) -> Any:
    text = text.strip()
    try:
        if text.startswith("age1"):
            return pyrage.x25519.Recipient.from_str(text)
        if text.startswith("ssh-ed25519 "):
            return pyrage.ssh.Recipient.from_str(text)
    except pyrage.RecipientError as exc:
        raise PipelineError(f"invalid age recipient {text[:24]}…: {exc}") from None
    raise PipelineError(
        f"unsupported age recipient {text[:24]!r}: use an age1… X25519 key or ssh-ed25519"
    )


def load_identities(path: Path) -> list[Any]:
    """X25519 identities from an age identity file (comments and blank lines allowed)."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise PipelineError(f"cannot read the age identity file {path}: {exc.strerror}") from None
    identities = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                identities.append(pyrage.x25519.Identity.from_str(line))
            except pyrage.IdentityError:
                raise PipelineError(f"{path} holds a line that is not an age identity") from None
    if not identities:
        raise PipelineError(f"{path} holds no age identity")
    return identities


class HashingWriter:
    """A write-only sink that hashes (and optionally forwards) what it is given."""

    def __init__(self, forward: IO[bytes] | None = None) -> None:
        self.sha256 = hashlib.sha256()
        self.size = 0
        self._forward = forward

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.size += len(data)
        if self._forward is not None:
            self._forward.write(data)
        return len(data)

    def flush(self) -> None:
        if self._forward is not None:
            self._forward.flush()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def encrypt_file(source: Path, target: Path, recipients: list[str], extra: Any = None) -> None:
    """Encrypt to every recipient; written to a temp name, fsynced, renamed, mode 0600."""
    parsed = [parse_recipient(r) for r in recipients]
    if not parsed:
        raise PipelineError("no age recipients: the archive would leave the host unencrypted")
    if extra is not None:
        parsed.append(extra)
    tmp = target.with_name(f".{target.name}.partial")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with open(source, "rb") as src, os.fdopen(fd, "wb") as out:
            pyrage.encrypt_io(src, out, parsed)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def decrypt_to(source: Path, sink: IO[bytes] | HashingWriter, identities: list[Any]) -> None:
    try:
        with open(source, "rb") as src:
            pyrage.decrypt_io(src, sink, identities)
    except pyrage.DecryptError as exc:
        raise VerifyFailed(
            f"the backup does not decrypt with the verify identity ({exc}): wrong key, or the "
            "ciphertext is damaged"
        ) from None


def plaintext_sha256(ciphertext: Path, identities: list[Any]) -> str:
    sink = HashingWriter()
    decrypt_to(ciphertext, sink, identities)
    return sink.sha256.hexdigest()
