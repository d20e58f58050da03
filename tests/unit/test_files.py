"""jaco.files: atomic private writes, refusing what is not a regular file, hashing readers."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from jaco.errors import InvalidArgument, JacoError
from jaco.files import (
    STAGING,
    anonymous_file,
    check_output_target,
    disk_full,
    private_output,
    staged_dir,
    sweep_partials,
    write_private,
)
from jaco.streams import Bounded, ChunkReader, HashingReader


def test_private_output_replaces_atomically_with_mode_0600(tmp_path: Path) -> None:
    target = tmp_path / "out"
    write_private(target, b"old")
    with pytest.raises(RuntimeError), private_output(target) as out:
        out.write(b"half")
        raise RuntimeError("the writer failed")
    assert target.read_bytes() == b"old"  # the previous content stands
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp file left
    with private_output(target) as out:
        out.write(b"new")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


@pytest.mark.parametrize("kind", ["char device", "fifo", "directory", "symlink", "socket"])
def test_output_onto_anything_but_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "target"
    if kind == "char device":
        os.mknod(target, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # a real /dev/null
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "directory":
        target.mkdir()
    elif kind == "symlink":
        target.symlink_to(tmp_path / "elsewhere")
    else:
        server = socket.socket(socket.AF_UNIX)
        server.bind(str(target))
    before = os.lstat(target)
    with pytest.raises(InvalidArgument, match="not a regular file; refusing to replace it"):
        write_private(target, b"secret")
    after = os.lstat(target)
    assert (after.st_mode, after.st_ino, after.st_rdev) == (
        before.st_mode,
        before.st_ino,
        before.st_rdev,
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    assert check_output_target(tmp_path / "absent") is False


def test_sweep_removes_partials_of_dead_writers_only(tmp_path: Path) -> None:
    target = tmp_path / "archive.tar.gz"
    code = (
        "import os, sys; from pathlib import Path; from jaco.files import private_output\n"
        "with private_output(Path(sys.argv[1])) as out:\n"
        "    out.write(b'x'); out.flush(); print('writing', flush=True); os.kill(os.getpid(), 9)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True)
    assert done.returncode == -9 and b"writing" in done.stdout
    dead = [p for p in tmp_path.iterdir() if ".partial-" in p.name]
    assert len(dead) == 1  # what kill -9 left
    with private_output(tmp_path / "other") as out:
        assert sweep_partials(tmp_path) == dead  # the live writer's file is left alone
        out.write(b"y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]


def test_hashing_reader_over_chunks_and_files() -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    chunks = [data[i : i + 32 * 1024] for i in range(0, len(data), 32 * 1024)]
    seen: list[int] = []
    reader = HashingReader(ChunkReader(iter(chunks), seen.append))
    out = b"".join(iter(lambda: reader.read(8192), b""))
    assert out == data and sum(seen) == len(data)
    assert reader.hexdigest() == hashlib.sha256(data).hexdigest() and reader.size == len(data)
    big = HashingReader(io.BytesIO(data))
    assert big.read(2 * 1024 * 1024) == data[: 2 * 1024 * 1024]  # a big read passes through
    big.drain()
    assert big.hexdigest() == hashlib.sha256(data).hexdigest()


def test_staged_dir_is_put_in_place_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.mkdir()  # an empty directory is replaced
    with staged_dir(target) as staging:
        (staging / "node.json").write_text("{}")
        assert staging.name == f".data.restore-{os.getpid()}"
        assert stat.S_IMODE(staging.stat().st_mode) == 0o700
    assert [p.name for p in target.iterdir()] == ["node.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    with pytest.raises(JacoError, match="Directory not empty"), staged_dir(target) as staging:
        (staging / "other").write_text("x")
    with pytest.raises(RuntimeError), staged_dir(tmp_path / "fresh") as staging:
        raise RuntimeError("the builder failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing left either time
    assert (target / "node.json").read_text() == "{}"


def test_sweep_removes_staged_dirs_of_dead_builders_only(tmp_path: Path) -> None:
    code = (
        "import os, sys; from pathlib import Path; from jaco.files import staged_dir\n"
        "with staged_dir(Path(sys.argv[1])) as d:\n"
        "    (d / 'etcd').mkdir(); print('building', flush=True); os.kill(os.getpid(), 9)"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "data")], capture_output=True)
    assert done.returncode == -9 and b"building" in done.stdout
    [dead] = tmp_path.iterdir()
    with staged_dir(tmp_path / "data") as live:
        assert sweep_partials(tmp_path, STAGING, "data") == [dead]
        assert sweep_partials(tmp_path, STAGING, "data") == []  # the live one stays
        assert live.is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_anonymous_file_has_no_name(tmp_path: Path) -> None:
    with anonymous_file(tmp_path) as scratch:
        scratch.write(b"plaintext")
        scratch.flush()
        assert list(tmp_path.iterdir()) == []
        assert Path(f"/proc/self/fd/{scratch.fileno()}").read_bytes() == b"plaintext"


def test_bounded_reads_its_part_of_a_stream_and_leaves_the_rest() -> None:
    stream = io.BytesIO(b"backup-bytes|segment")
    part = Bounded(stream, 12)
    assert part.read(5) == b"backu" and part.read() == b"p-bytes" and part.read(9) == b""
    assert part.left == 0 and stream.read() == b"|segment"
    short = Bounded(io.BytesIO(b"abc"), 10)
    assert short.read() == b"abc" and short.left == 7  # what was missing is counted


@pytest.mark.parametrize(
    ("code", "full"), [(errno.ENOSPC, True), (errno.EDQUOT, True), (errno.EACCES, False)]
)
def test_a_full_disk_or_a_used_up_quota_is_no_room(code: int, full: bool) -> None:
    """A quota used up stops a write as a full disk does: said as one, not raised."""
    assert disk_full(OSError(code, os.strerror(code))) is full
    assert not disk_full(ValueError("not an OSError"))
