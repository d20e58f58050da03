"""age encryption of archives with pyrage, streaming, hashed on the way through.

`pyrage.encrypt_io` / `decrypt_io` stream in constant memory (the other pyrage calls hold the
whole file). pyrage can report success after a failed final write, so an encryption is only
trusted once its ciphertext has been decrypted again and the plaintext's SHA-256 matched:
the pipeline's verify step does that on the uploaded object. Keys are in age's own
formats: `age1…` X25519 recipients, `ssh-ed25519 …` public keys, and identity files of
`AGE-SECRET-KEY-1…` lines (what `age-keygen` writes).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pyrage

from jaco.archive.format import Reserve, VerifiedArchive, read_archive, read_archive_stream
from jaco.archive.meta import BackupMeta
from jaco.errors import ArchiveError, InvalidArgument, JacoError
from jaco.files import CHUNK, BlockSha256, HashingReader, Readable, Writable, private_output

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
    fsynced (the stores make their own copies durable).
    """
    parsed = [parse_recipient(r) for r in recipients]
    if not parsed:
        raise InvalidArgument("no age recipients: the archive would leave the host unencrypted")
    # Unbuffered source: HashingReader already reads it in 1 MiB blocks.
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(open(source, "rb", buffering=0))
        out = stack.enter_context(private_output(target, durable=False))
        # Both hashes on threads of their own, beside pyrage (closed however this ends).
        reader = HashingReader(src, threaded=True)
        writer = HashingWriter(out, threaded=True)
        stack.callback(reader.close)
        stack.callback(writer.close)
        pyrage.encrypt_io(reader, writer, parsed)
        cipher_sha = writer.hexdigest()  # flushes the last block
    return reader.hexdigest(), cipher_sha


def decrypt_to(
    source: Path | Readable, sink: IO[bytes] | HashingWriter, identities: list[Any]
) -> str:
    """Decrypt `source` (a file, or a stream such as a pipe) into `sink`; returns the
    ciphertext's SHA-256, hashed as it is read."""
    try:
        with contextlib.ExitStack() as stack:
            src = (
                stack.enter_context(open(source, "rb", buffering=0))
                if isinstance(source, Path)
                else source
            )
            reader = HashingReader(src, threaded=True)  # hashed beside pyrage
            stack.callback(reader.close)
            pyrage.decrypt_io(reader, sink, identities)
            sink.flush()
            reader.drain()  # whatever age did not need is still part of the object
    except pyrage.DecryptError as exc:
        whose = identities.name if isinstance(identities, Identities) else "the identity given"
        raise DecryptionFailed(
            f"the backup does not decrypt with {whose} ({exc}): wrong key, or the ciphertext "
            "is damaged"
        ) from None
    except OSError as exc:
        if exc.errno is not None:  # the disk, not the data
            raise
        # pyrage reports a payload that fails authentication as a plain OSError
        raise DecryptionFailed(f"the backup's ciphertext is damaged or truncated ({exc})") from None
    return reader.hexdigest()


@dataclass
class Decryption:
    """What a decryption on a thread of its own found: complete once `decrypting` has ended."""

    ciphertext_sha256: str = ""
    plaintext_sha256: str = ""
    plaintext_size: int = 0
    seconds: float = 0.0  # from the start to the last byte decrypted


class _PipeEnd:
    """The decrypter's end of the pipe, and `copy` if there is one."""

    def __init__(self, fd: int, copy: IO[bytes] | None) -> None:
        self._pipe = os.fdopen(fd, "wb")
        self._copy = copy

    def write(self, data: bytes | bytearray) -> int:
        if self._copy is not None:
            self._copy.write(data)
        return self._pipe.write(data)

    def flush(self) -> None:
        self._pipe.flush()
        if self._copy is not None:
            self._copy.flush()

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError):  # the reader left: it says why
            self._pipe.close()


@contextlib.contextmanager
def decrypting(
    ciphertext: Path | Readable,
    identities: list[Any],
    copy: IO[bytes] | None = None,
) -> Iterator[tuple[IO[bytes], Decryption]]:
    """Decrypt `ciphertext` on a thread of its own into a pipe: yields the pipe's reading end
    and the Decryption, filled in once the block is left (both SHA-256, hashed on the way).

    Leaving the block reads the pipe to its end (the decrypter checks its last tag) and
    raises what the decryption raised. Leaving it with an ArchiveError raises the
    decryption's failure instead, if it had one: a damaged ciphertext explains the broken
    archive. `copy`, if given, gets the plaintext too."""
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError):  # 64 KiB by default: threads would take turns per chunk
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    found = Decryption()
    failure: list[BaseException] = []
    started = time.monotonic()

    end = _PipeEnd(write_fd, copy)
    pipe = os.fdopen(read_fd, "rb")

    def produce() -> None:
        try:
            sink = HashingWriter(end)
            found.ciphertext_sha256 = decrypt_to(ciphertext, sink, identities)
            found.plaintext_sha256 = sink.hexdigest()
            found.plaintext_size = sink.size
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            failure.append(exc)
        finally:
            end.close()  # the reader's end of file
            found.seconds = time.monotonic() - started

    producer = threading.Thread(target=produce, name="decrypt", daemon=True)
    try:
        producer.start()
    except BaseException:
        end.close()
        pipe.close()
        raise
    try:
        yield pipe, found
        while pipe.read(CHUNK):  # let the decrypter finish (and check its tag)
            pass
    except ArchiveError:
        pipe.close()  # a decrypter still writing stops
        producer.join()
        if failure and not isinstance(failure[0], BrokenPipeError):
            raise failure[0] from None
        raise
    finally:
        pipe.close()
        producer.join()
    if failure:
        raise failure[0]


def decrypt_and_read_archive(
    ciphertext: Path, identities: list[Any]
) -> tuple[str, str, BackupMeta]:
    """Decrypt straight into the archive reader: the plaintext never touches the disk.
    Returns the ciphertext's and the plaintext's SHA-256 and the verified meta.json."""
    with decrypting(ciphertext, identities) as (plain, found):
        meta = read_archive_stream(plain, name=ciphertext.name)
    return found.ciphertext_sha256, found.plaintext_sha256, meta


def read_backup(
    path: Path,
    identities: list[Any] | None,
    sink: IO[bytes] | None = None,
    reserve: Reserve | None = None,
) -> VerifiedArchive:
    """`read_archive` of a backup as the operator has it: a plain archive (`jaco backup`),
    or an age-encrypted one (the pipeline's `.tar.gz.age`) decrypted as it is read with
    `identities`; nothing decrypted is written but snapshot.bin into `sink`."""
    if not is_age_file(path):
        return read_archive(path, sink, reserve)
    if identities is None:
        raise InvalidArgument(
            f"{path} is an age-encrypted backup: give --identity FILE (or set "
            "JACO_AGE_IDENTITY_FILE) to decrypt it as it is read, or decrypt it with `age -d` first"
        )
    with decrypting(path, identities) as (plain, _):
        meta = read_archive_stream(plain, sink, path.name, reserve)
    return VerifiedArchive(meta, path.stat().st_size)


def inspect_backup(path: Path, identity_file: Path | None = None) -> VerifiedArchive:
    """Verify a backup as the operator has it (`read_backup`), the identity file read only
    if the backup is encrypted."""
    identities = None
    if identity_file is not None and is_age_file(path):
        identities = load_identities(identity_file)
    return read_backup(path, identities)
