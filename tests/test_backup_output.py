"""`jaco backup --output`: what it refuses to write onto, what it says when it replaces a
file, and what a backup killed with SIGKILL leaves for the next one to clean up.

The targets are real: a character and a block device made with mknod, a directory, a FIFO, a
bound unix socket, symbolic links (one to /dev/stdout). The refusal must come before the
server is contacted: JACO_SERVER points at a listening socket of the test, which must never
see a connection (a FIFO would also hang a writer that opened it).
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infra.localcluster import JACO, Cluster, run, wait_for
from tests.netfaults import FaultyProxy
from tests.refusal import refused, silent_env, untouched


def _char_device(path: Path) -> str:
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
    return "a character device"


def _block_device(path: Path) -> str:
    os.mknod(path, 0o600 | stat.S_IFBLK, os.makedev(7, 0))  # what /dev/loop0 is
    return "a block device"


def _directory(path: Path) -> str:
    path.mkdir()
    (path / "keep").write_text("kept")
    return "a directory"


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return "a FIFO"


def _socket(path: Path) -> str:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    _SOCKETS.append(listener)
    return "a socket"


def _link_to_stdout(path: Path) -> str:
    path.symlink_to("/dev/stdout")
    return "a symbolic link"


def _link_to_a_file(path: Path) -> str:
    (path.parent / "real.tar.gz").write_bytes(b"an older archive")
    path.symlink_to(path.parent / "real.tar.gz")
    return "a symbolic link"


_SOCKETS: list[socket.socket] = []
TARGETS: list[Callable[[Path], str]] = [
    _char_device,
    _block_device,
    _directory,
    _fifo,
    _socket,
    _link_to_stdout,
    _link_to_a_file,
]


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    for s in _SOCKETS:
        s.close()
    _SOCKETS.clear()


def _snapshot(directory: Path) -> dict[str, tuple[int, int, int, int, str]]:
    """Every entry under `directory`: type and mode, inode, device, size, link target."""
    seen = {}
    for top, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = os.path.join(top, name)
            info = os.lstat(path)
            link = os.readlink(path) if stat.S_ISLNK(info.st_mode) else ""
            seen[path] = (info.st_mode, info.st_ino, info.st_rdev, info.st_size, link)
    return seen


@pytest.mark.parametrize("make", TARGETS, ids=lambda f: f.__name__.strip("_"))
def test_output_onto_what_is_not_a_regular_file_is_refused_before_the_server_is_asked(
    tmp_path: Path, silent_server: socket.socket, make: Callable[[Path], str]
) -> None:
    target = tmp_path / "out.tar.gz"
    kind = make(target)
    before = _snapshot(tmp_path)
    result = run([JACO, "backup", "--output", str(target)], env=silent_env(silent_server))
    refused(result, 2, re.escape(f"{target} is {kind}, not a regular file; refusing to replace it"))
    assert _snapshot(tmp_path) == before, "the target or its directory changed"
    assert untouched(silent_server), "the server was contacted"


def test_replacing_an_existing_archive_is_said_aloud(big: Cluster, tmp_path: Path) -> None:
    target = tmp_path / "cluster.tar.gz"
    target.write_bytes(b"yesterday's archive")
    result = big.ok("backup", "--output", str(target))
    assert f"replaced existing file {target}" in result.err
    assert target.stat().st_size > 1_000_000 and target.stat().st_mode & 0o777 == 0o600
    fresh = big.ok("backup", "--output", str(tmp_path / "new.tar.gz"))
    assert "replaced" not in fresh.err


def _partials(directory: Path) -> list[Path]:
    return [p for p in directory.iterdir() if ".partial-" in p.name]


@pytest.mark.parametrize("moment", ["partial file just created", "half a MB written"])
def test_backup_killed_leaves_a_partial_the_next_backup_removes(
    big: Cluster, tmp_path: Path, moment: str
) -> None:
    proxy = FaultyProxy(big.nodes["node-1"].api_port, delay_per_chunk=0.1)
    env = {**os.environ, "JACO_TOKEN": big.token, "JACO_SERVER": proxy.address}
    try:
        proc = subprocess.Popen(
            [JACO, "backup", "--output", str(tmp_path / "killed.tar.gz")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        least = 0 if moment.startswith("partial") else 500_000
        wait_for(
            lambda: any(p.stat().st_size >= least for p in _partials(tmp_path)),
            60,
            f"the backup to reach: {moment}",
        )
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        proxy.close()
    [left] = _partials(tmp_path)
    assert left.name == f".killed.tar.gz.partial-{proc.pid}"
    assert not (tmp_path / "killed.tar.gz").exists()

    # A live writer's partial in the same directory must survive the sweep.
    live = tmp_path / ".other.tar.gz.partial-1"
    with open(live, "wb") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        again = big.ok("backup", "--output", str(tmp_path / "killed.tar.gz"))
        assert live.exists()
    assert f"removed {left.name}" in again.err and "interrupted backup" in again.err
    assert not left.exists()
    assert big.ok("backup", "inspect", str(tmp_path / "killed.tar.gz")).code == 0
    live.unlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["killed.tar.gz"]
