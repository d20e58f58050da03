"""`python -m jaco.archive.decrypter FD`: decrypt stdin into stdout, in a process of its own
(jaco.archive.encrypted.decrypting starts it), with jaco.archive.age_v1's reader.

A decryption on a thread of the process that reads the plaintext kept gunzip, tar, the hashes
and the copy into the new data dir from running beside it while pyrage held the GIL (512 MiB:
2.4 s in one process, against 1.6 s for `age -d` then the read, one after the other;
docs/benchmarks.md, stop 31), hence a process. Since stop 45 it is OpenSSL's ChaCha20-Poly1305
(`cryptography`), not pyrage: 0.2 s of CPU per 512 MiB against 0.7 s. The identities come on
file descriptor FD, a pipe, never in the argument list or the environment. Exit 0; EXIT_NO_KEY
if they do not open the ciphertext (no stanza for them, or a header malformed or changed),
EXIT_DAMAGED if its payload is damaged, cut short or followed by more, each with the reason as
the one line on stderr; EXIT_READER_LEFT if the plaintext's reader went away; 1 for anything
else (an identity that is not one: the caller's failure, not the backup's).
"""

from __future__ import annotations

import errno
import io
import os
import sys

from jaco.archive.age_v1_read import AgeError, decrypt_stream, identity_keys

EXIT_NO_KEY, EXIT_DAMAGED, EXIT_READER_LEFT = 14, 15, 3
HEADER_BUFFER = 64 * 1024


def _end(code: int, words: object = "") -> None:
    if words:
        os.write(2, str(words).replace("\n", " ")[:300].encode() + b"\n")
    os._exit(code)  # nothing buffered is flushed again into a pipe that is gone


def _write_all(view: memoryview) -> None:
    while view:
        view = view[os.write(1, view) :]


class _Stdin:
    """stdin: its header read a line at a time through a buffer, then the payload straight
    into the caller's blocks, what the buffer still holds first. A BufferedReader's
    `readinto` copied nearly every byte through its own buffer (the blocks are not a multiple
    of what a pipe gives): 0.55 s of 2.2 s of the decrypter's CPU per 2 GiB."""

    def __init__(self) -> None:
        self._raw = io.FileIO(0, closefd=False)
        self._buffered = io.BufferedReader(self._raw, HEADER_BUFFER)
        self.readline = self._buffered.readline
        self._held: memoryview | None = None

    def readinto(self, view: memoryview) -> int:
        if self._held is None:  # the header has been read: take what its buffer holds
            self._held = memoryview(self._buffered.read1(len(self._buffered.peek(1))))
        if self._held:
            n = min(len(view), len(self._held))
            view[:n], self._held = self._held[:n], self._held[n:]
            return n
        return self._raw.readinto(view) or 0


def main() -> None:
    with os.fdopen(int(sys.argv[1]), "r") as keys:
        text = keys.read()
    try:
        identities = identity_keys(text)
    except AgeError as exc:  # the caller's keys, not the backup's fault: not exit 14
        _end(1, exc)
    try:
        source = _Stdin()
        decrypt_stream(source.readline, source.readinto, _write_all, identities)
    except AgeError as exc:
        _end(EXIT_DAMAGED if exc.damaged else EXIT_NO_KEY, exc)
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            _end(EXIT_READER_LEFT)
        _end(1, exc)
    _end(0)


if __name__ == "__main__":
    main()
