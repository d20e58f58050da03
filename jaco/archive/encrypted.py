"""Encrypted backups read as they are decrypted: `jaco restore` and `jaco backup inspect` of
a `.tar.gz.age`, the pipeline's verify, the drill. No decrypted archive is written.

The decryption runs in a process of its own (jaco.archive.decrypter), fed the ciphertext by a
thread of this one; this process reads the plaintext from its pipe, hashed on the way: verify
and the drill compare it with what the pipeline recorded (their flows hash the ciphertext as
it downloads, flows.download).
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

from jaco.archive.age import PIPE_BYTES, DecryptionFailed, Identities, is_age_file, load_identities
from jaco.archive.decrypter import EXIT_DAMAGED, EXIT_NO_KEY, EXIT_READER_LEFT
from jaco.archive.format import Reserve, VerifiedArchive, read_archive, read_archive_stream
from jaco.archive.meta import BackupMeta
from jaco.errors import ArchiveError, InvalidArgument, JacoError
from jaco.streams import CHUNK, BlockSha256, Readable, spliced


@dataclass
class Decryption:
    """What a decryption found: complete once `decrypting` has ended."""

    plaintext_sha256: str = ""
    plaintext_size: int = 0
    seconds: float = 0.0  # from the start to the plaintext's last byte
    spliced: int = 0  # ciphertext bytes the kernel moved to the decrypter (jaco.streams.spliced)


class _Plaintext:
    """The decrypter's output as the caller reads it (igzip reads with readinto), hashed on
    the way and copied to `copy` if there is one. The hash runs on a thread of its own, fed a
    copy of each block (the caller's buffer is used again): on the thread that reads it, it
    held up the archive's reading behind it, 1.3-1.9 s of a 2 GiB drill (docs/benchmarks.md,
    stop 41)."""

    def __init__(
        self, raw: io.BufferedReader, copy: IO[bytes] | None, found: Decryption, hashes: bool
    ) -> None:
        self._raw, self._copy, self._found = raw, copy, found
        self._sha = BlockSha256(threaded=True) if hashes else None
        self._started = time.monotonic()

    def readinto(self, buffer: memoryview) -> int:
        # At most a CHUNK: igzip asks for 8 MiB, and the hash's queue holds four copies of
        # what each read returned (up to 32 MiB of 8 MiB copies). Counted in bytes, whatever
        # the caller's view is of.
        view = memoryview(buffer).cast("B")[:CHUNK]
        if not view:
            return 0  # asked for nothing: not the plaintext's end
        n = self._raw.readinto(view)
        if not n:
            if not self._found.seconds:
                self._found.seconds = time.monotonic() - self._started
            return 0
        if self._sha is not None:
            self._sha.update(bytes(view[:n]))
        if self._copy is not None:
            self._copy.write(view[:n])
        self._found.plaintext_size += n
        return n

    def peek(self, n: int = 1) -> bytes:
        """What the next read returns first, not consumed (nor hashed, nor copied)."""
        return self._raw.peek(n)

    def read(self, n: int = -1) -> bytes:
        """`n` bytes (-1: a CHUNK), fewer only at the plaintext's end."""
        block = memoryview(bytearray(CHUNK if n < 0 else n))
        got = 0
        while got < len(block) and (more := self.readinto(block[got:])):
            got += more
        return bytes(block[:got])

    def finish(self) -> None:
        """Read (and hash) what the caller did not need."""
        block = memoryview(bytearray(CHUNK))
        while self.readinto(block):
            pass
        if self._sha is not None:
            self._found.plaintext_sha256 = self._sha.hexdigest()

    def close(self) -> None:
        """End the hashing thread, whether or not the plaintext was read to its end."""
        if self._sha is not None:
            self._sha.close()


def _pump(source: Path | Readable, child: subprocess.Popen[bytes], found: Decryption) -> None:
    """Feed the ciphertext to the decrypter, spliced as far as it can be (`spliced`), the rest
    copied. If the decrypter stops reading, the rest is still read when it ended well (age
    need not read what follows its last chunk: it is part of the object all the same, and a
    stream may carry more after it), not when it failed."""
    with contextlib.ExitStack() as stack:
        src = (
            stack.enter_context(open(source, "rb", buffering=0))
            if isinstance(source, Path)
            else source
        )
        sink = child.stdin
        assert sink is not None
        try:
            found.spliced = spliced(src, sink.fileno()) or 0
            while block := src.read(CHUNK):
                sink.write(block)
        except BrokenPipeError:
            if child.wait() != 0:
                return
            while src.read(CHUNK):
                pass
        with contextlib.suppress(BrokenPipeError):
            sink.close()


@contextlib.contextmanager
def decrypting(
    ciphertext: Path | Readable,
    identities: list[Any],
    copy: IO[bytes] | None = None,
    hashes: bool = True,
) -> Iterator[tuple[IO[bytes], Decryption]]:
    """Decrypt `ciphertext` in a process of its own (jaco.archive.decrypter: the decryption
    stays off this process's GIL) fed by a thread of this one: yields the plaintext to read
    and the Decryption, filled in once the block is left (the plaintext's SHA-256, hashed on
    the way unless `hashes` is False: a core-second per GiB; `copy` gets the plaintext too).
    The ciphertext is the caller's to hash, as it reads it (until stop 33 this hashed it too,
    for callers that all hashed it already or did not need it).

    Leaving the block reads the plaintext to its end and raises a decryption's failure.
    Leaving it with an ArchiveError raises the decryption's failure instead, if it had one:
    a damaged ciphertext explains the broken archive."""
    words = tempfile.TemporaryFile()  # a file: a long traceback cannot block
    keys_read, keys_write = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "jaco.archive.decrypter", str(keys_read)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=words,
            pass_fds=(keys_read,),
        )
    except BaseException:
        os.close(keys_write)
        words.close()
        raise
    finally:
        os.close(keys_read)
    assert child.stdin is not None and child.stdout is not None
    for end in (child.stdin, child.stdout):  # 64 KiB by default: the processes would take turns
        with contextlib.suppress(OSError):
            fcntl.fcntl(end.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    with os.fdopen(keys_write, "w") as keys:  # the secret goes through a pipe, not argv or env
        keys.write("\n".join(str(identity) for identity in identities))
    found = Decryption()
    failure: list[BaseException] = []

    def pump() -> None:
        try:
            _pump(ciphertext, child, found)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread
            failure.append(exc)
            with contextlib.suppress(OSError):
                child.stdin.close()  # type: ignore[union-attr]

    feeder = threading.Thread(target=pump, name="decrypt-feed", daemon=True)
    plain = _Plaintext(cast(io.BufferedReader, child.stdout), copy, found, hashes)
    broken: ArchiveError | None = None
    try:
        try:
            feeder.start()
            yield cast(IO[bytes], plain), found
            plain.finish()
        except ArchiveError as exc:
            broken = exc
        finally:
            plain.close()
            _stop(child, feeder)
        if failure:  # the ciphertext could not be read: that also cut any plaintext short
            raise failure[0] from None
        # Any exit but 0 is the decrypter's failure (a wrong key, a damaged payload, or it
        # died: killed, an I/O error, cutting the plaintext short), which explains a broken
        # archive; but EXIT_READER_LEFT after one is the archive's reader stopping there.
        code = child.returncode
        if code and (broken is None or code != EXIT_READER_LEFT):
            raise _failed(code, words, identities) from None
        if broken is not None:
            raise broken
    finally:
        words.close()


def _stop(child: subprocess.Popen[bytes], feeder: threading.Thread) -> None:
    """The plaintext's reader is done: the decrypter ends (a broken pipe if it had more to
    write), and so does its feeder."""
    if child.stdout is not None and not child.stdout.closed:
        child.stdout.close()
    child.wait()
    if feeder.ident is not None:
        feeder.join()


def _failed(code: int, stderr: IO[bytes], identities: list[Any]) -> JacoError:
    stderr.seek(0)  # the child wrote through the same open file
    said = stderr.read(64 * 1024).decode(errors="replace").strip().splitlines()
    words = said[-1][:300] if said else f"exit {code}"
    if code == EXIT_NO_KEY:
        whose = identities.name if isinstance(identities, Identities) else "the identity given"
        return DecryptionFailed(
            f"the backup does not decrypt with {whose} ({words}): wrong key, or the ciphertext "
            "is damaged"
        )
    if code == EXIT_DAMAGED:
        return DecryptionFailed(f"the backup's ciphertext is damaged or truncated ({words})")
    return JacoError(f"the decrypter failed ({words})")


def decrypt_and_read_archive(
    ciphertext: Path | Readable, identities: list[Any], name: str = ""
) -> tuple[str, BackupMeta]:
    """Decrypt straight into the archive reader: the plaintext never touches the disk.
    Returns the plaintext's SHA-256 and the verified meta.json. `name` (default: the file's)
    names it in errors."""
    if isinstance(ciphertext, Path):
        name = name or ciphertext.name
    with decrypting(ciphertext, identities) as (plain, found):
        meta = read_archive_stream(plain, name=name or "the backup")
    return found.plaintext_sha256, meta


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
    with decrypting(path, identities, hashes=False) as (plain, _):  # nothing to hold it to
        meta = read_archive_stream(plain, sink, path.name, reserve)
    return VerifiedArchive(meta, path.stat().st_size)


def identities_for(path: Path, identity_file: Path | None) -> list[Any] | None:
    """The identities in `identity_file`, read only if the backup at `path` is encrypted:
    --identity may come from JACO_AGE_IDENTITY_FILE, set for other work."""
    if identity_file is None or not is_age_file(path):
        return None
    return load_identities(identity_file)


def inspect_backup(path: Path, identity_file: Path | None = None) -> VerifiedArchive:
    """Verify a backup as the operator has it (`read_backup`)."""
    return read_backup(path, identities_for(path, identity_file))
