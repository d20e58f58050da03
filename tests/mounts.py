"""Real small, read-only or failing filesystems for the tests of full, read-only and failing
disks (tmpfs mounts, ext4 on a loop device: the suite runs as root, as CI does)."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs at `path` (made), taken down lazily and without raising: a file a failing test
    left open does not keep it mounted, nor hide the test's own error."""
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def failing_disk(tmp_path: Path) -> Iterator[Path]:
    """An ext4 of 64 MiB on a loop device whose backing file lies on a 12 MiB tmpfs: once that
    is full, the disk's writes fail (ENOSPC from the loop device; a dying disk says EIO). Taken
    down as `tmpfs` is."""
    mounted = tmp_path / "disk"
    mounted.mkdir()
    with contextlib.ExitStack() as undo:
        backing = undo.enter_context(tmpfs(tmp_path / "backing", "size=12m"))
        image = backing / "disk.img"
        with open(image, "wb") as f:
            f.truncate(64 * 1024 * 1024)
        subprocess.run(
            ["mkfs.ext4", "-q", "-E", "lazy_itable_init=1,lazy_journal_init=1", "-J", "size=4",
             str(image)],
            check=True,
        )  # fmt: skip
        device = subprocess.run(
            ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
        ).stdout.strip()
        undo.callback(subprocess.run, ["losetup", "-d", device], check=False)
        subprocess.run(["mount", "-t", "ext4", device, str(mounted)], check=True)
        undo.callback(subprocess.run, ["umount", "-l", str(mounted)], check=False)
        yield mounted
