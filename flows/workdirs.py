"""Scratch space of a run that a crash cannot strand, and the sweep that removes a dead run's.

A run's working files (the plaintext archive before encryption, a downloaded backup) live in
a directory of their own under `.work/`, held under an flock for the run's whole life: the
kernel drops the lock the moment the process dies, however it dies, so the next run knows
for sure which directories are dead and removes them (and says what it removed).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

LOCK = ".lock"
YOUNG_SECONDS = 60  # a directory this new may not hold its lock yet


@contextlib.contextmanager
def run_workdir(base: Path, label: str) -> Iterator[Path]:
    """A fresh 0700 directory under `base`, removed when the block ends."""
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=base))
    lock = open(directory / LOCK, "wb")  # noqa: SIM115 - held for the block
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        lock.close()


def sweep_workdirs(base: Path) -> list[str]:
    """Remove what dead runs left under `base`; returns what was removed, for the report."""
    removed: list[str] = []
    if not base.is_dir():
        return removed
    for entry in sorted(base.iterdir()):
        with contextlib.suppress(FileNotFoundError):
            if entry.is_dir() and not entry.is_symlink():
                if _dead(entry):
                    size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
                    shutil.rmtree(entry, ignore_errors=True)
                    removed.append(f"{entry} ({size} bytes left by a dead run)")
            elif time.time() - entry.lstat().st_mtime > YOUNG_SECONDS:
                # Loose files are never written here by this version: an older one's leftovers.
                entry.unlink()
                removed.append(f"{entry} (left by an earlier version)")
    return removed


def _dead(directory: Path) -> bool:
    try:
        fd = os.open(directory / LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return time.time() - directory.stat().st_mtime > YOUNG_SECONDS
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True
