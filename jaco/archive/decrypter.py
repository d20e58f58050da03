"""`python -m jaco.archive.decrypter FD`: decrypt stdin into stdout with pyrage, in a process
of its own (jaco.archive.age.decrypting starts it).

pyrage holds the GIL while it decrypts: on a thread of the process that reads the plaintext
it kept gunzip, tar, the hashes and the copy into the new data dir from running beside it
(512 MiB: 2.4 s in one process, against 1.6 s for `age -d` then the read, one after the
other; docs/benchmarks.md, stop 31). The identities come on file descriptor FD, a pipe, never
in the argument list or the environment; only pyrage is imported. Exit 0; EXIT_NO_KEY if they
do not open the ciphertext, EXIT_DAMAGED if its payload is damaged or cut, each with pyrage's
words as the one line on stderr; EXIT_READER_LEFT if the plaintext's reader went away.
"""

from __future__ import annotations

import errno
import os
import sys

import pyrage

EXIT_NO_KEY, EXIT_DAMAGED, EXIT_READER_LEFT = 14, 15, 3
BLOCK = 1024 * 1024


def _end(code: int, words: object = "") -> None:
    if words:
        os.write(2, str(words).replace("\n", " ")[:300].encode() + b"\n")
    os._exit(code)  # nothing buffered is flushed again into a pipe that is gone


def main() -> None:
    with os.fdopen(int(sys.argv[1]), "r") as keys:
        identities = [pyrage.x25519.Identity.from_str(key) for key in keys.read().split()]
    source = os.fdopen(0, "rb", buffering=BLOCK, closefd=False)
    sink = os.fdopen(1, "wb", buffering=BLOCK, closefd=False)
    try:
        pyrage.decrypt_io(source, sink, identities)
        sink.flush()
    except pyrage.DecryptError as exc:
        _end(EXIT_NO_KEY, exc)
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            _end(EXIT_READER_LEFT)
        # pyrage reports a payload that fails authentication as a plain OSError
        _end(EXIT_DAMAGED if exc.errno is None else 1, exc)
    _end(0)


if __name__ == "__main__":
    main()
