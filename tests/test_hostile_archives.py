"""Archives built to exhaust a reader: memory, time, disk, or the operator's terminal.

Each archive goes through `jaco backup inspect` and `jaco restore` as real processes under a
memory limit and a wall-clock bound: a one-line refusal, exit 12, nothing left in the data
dir, beside it, or in $TMPDIR. The healthy archive must still inspect and restore under the
very same limits, so the limit proves the bombs were refused, not that everything fails
under it. The limit is RLIMIT_DATA (the heap and every private writable mapping: what a
reader loading a 1 GiB header spends), not RLIMIT_AS: etcd's own `snapshot restore` maps its
10 GiB backend as address space by design, and would fail under any address-space limit.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infra.localcluster import JACO, Node, Result, cluster_of, run
from tests import archives as A
from tests.refusal import refused

MEMORY_LIMIT = 512 * 1024 * 1024  # half what the bombs below declare
SECONDS = 10.0  # a refusal after the first few KiB of the stream, plus interpreter start-up
GiB = 1024**3
LIMITED = ["prlimit", f"--data={MEMORY_LIMIT}", "--"]  # what _jaco runs jaco under


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("source")
    with cluster_of(root, 1) as cluster:
        cluster.ok("deploy", "web", "--image", "nginx:1", "--replicas", "2")
        archive = root / "good.tar.gz"
        cluster.ok("backup", "--output", str(archive))
        yield archive


def _jaco(args: list[str], tmp: Path) -> tuple[Result, float]:
    """`jaco ARGS` under the memory limit (RLIMIT_DATA), with TMPDIR=tmp; its result and its
    duration. The limit is set by util-linux's prlimit, which then runs jaco, not by a
    preexec_fn: that forks this process, where gRPC's poller runs, and gRPC's fork handlers
    then have the child log `epoll_wait error: Bad file descriptor` to the stderr under test
    before its exec (grpc/grpc#43055; docs/testing.md)."""
    started = time.monotonic()
    proc = subprocess.run(
        [*LIMITED, JACO, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp)},
        timeout=60,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr), time.monotonic() - started


def _gnu_longname(out: Path, good: Path) -> Path:
    return A.bomb(out, A.header("././@LongLink", tarfile.GNUTYPE_LONGNAME, GiB), GiB)


def _gnu_longlink(out: Path, good: Path) -> Path:
    return A.bomb(out, A.header("././@LongLink", tarfile.GNUTYPE_LONGLINK, GiB), GiB)


def _pax_huge_header(out: Path, good: Path) -> Path:
    records = A.pax_record("path", "snapshot.bin")
    return A.bomb(out, A.pax_header(records, declared=GiB)[: tarfile.BLOCKSIZE], GiB)


def _pax_record_lies(out: Path, good: Path) -> Path:
    records = b"999999999999 path=snapshot.bin\n"
    return _raw(out, A.pax_header(records) + _member("snapshot.bin", A.bolt_head() * 4))


def _pax_sparse(out: Path, good: Path) -> Path:
    records = b"".join(
        A.pax_record(k, v)
        for k, v in (
            ("GNU.sparse.size", str(60 * GiB)),
            ("GNU.sparse.numblocks", "1"),
            ("GNU.sparse.offset", str(60 * GiB - 1)),
            ("GNU.sparse.numbytes", "1"),
            ("path", "snapshot.bin"),
        )
    )
    return _raw(out, A.pax_header(records) + _member("snapshot.bin", b"\1"))


def _pax_global(out: Path, good: Path) -> Path:
    records = A.pax_record("comment", "x")
    head = A.header("pax_global_header", tarfile.XGLTYPE, len(records), tarfile.USTAR_FORMAT)
    return _raw(out, head + records.ljust(tarfile.BLOCKSIZE, b"\0"))


def _gzip_bomb(out: Path, good: Path) -> Path:
    return A.bomb(out, A.header("snapshot.bin", tarfile.REGTYPE, 8 * GiB), 8 * GiB)


def _member(name: str, data: bytes) -> bytes:
    block = data + b"\0" * (-len(data) % tarfile.BLOCKSIZE)
    return A.header(name, tarfile.REGTYPE, len(data)) + block


def _raw(out: Path, tar: bytes) -> Path:
    out.write_bytes(gzip.compress(tar + b"\0" * 2 * tarfile.BLOCKSIZE))
    return out


def _nested_meta(depth: int) -> Callable[[Path, Path], Path]:
    def make(out: Path, good: Path) -> Path:
        _, snap = A.members(good)
        return A.build(out, [A.regular("snapshot.bin", snap), A.regular("meta.json", b"[" * depth)])

    return make


def _meta_with(**fields: object) -> Callable[[Path, Path], Path]:
    def make(out: Path, good: Path) -> Path:
        meta, snap = A.members(good)
        meta.update(fields)
        return A.build(
            out, [A.regular("snapshot.bin", snap), A.regular("meta.json", A.meta_bytes(meta))]
        )

    return make


BOMBS: list[tuple[str, Callable[[Path, Path], Path], str]] = [
    ("GNU long name of 1 GiB", _gnu_longname, "GNU long name"),
    ("GNU long link name of 1 GiB", _gnu_longlink, "GNU long link"),
    ("pax header of 1 GiB", _pax_huge_header, "pax header of 1073741824 bytes"),
    ("pax record claiming 1 TB", _pax_record_lies, "malformed pax header"),
    ("pax-sparse snapshot.bin of 60 GiB", _pax_sparse, "sparse"),
    ("global pax header", _pax_global, "global pax header"),
    ("gzip bomb: 8 GiB of zeros as snapshot.bin", _gzip_bomb, "not an etcd snapshot"),
    ("meta.json of 200 000 '['", _nested_meta(200_000), "meta.json is larger than any real"),
    ("meta.json of 60 000 nested '['", _nested_meta(60_000), "meta.json is not valid"),
    (
        "meta.json naming a cluster in rich markup",
        _meta_with(cluster_id="[bold red blink]pwned[/]"),
        "field 'cluster_id' has the wrong type or form",
    ),
    (
        "meta.json naming a leader with ANSI escapes",
        _meta_with(leader_at_snapshot="\x1b[2J\x1b[31mnode"),
        "field 'leader_at_snapshot' has the wrong type or form",
    ),
    (
        "meta.json with a version carrying a link",
        _meta_with(jaco_version="1.0.0[link=https://evil.example]"),
        "field 'jaco_version' has the wrong type or form",
    ),
    (
        "meta.json counting a table named in markup",
        _meta_with(counts={"[blink]x": 1}),
        "field 'counts.*' has the wrong type or form",
    ),
]


def _left_behind(*dirs: Path) -> list[str]:
    return [str(p) for d in dirs for p in d.rglob("*")]


@pytest.mark.parametrize(("label", "make", "message"), BOMBS, ids=[b[0] for b in BOMBS])
def test_hostile_archive_is_refused_within_bounds(
    good: Path, tmp_path: Path, label: str, make: Callable[[Path, Path], Path], message: str
) -> None:
    bad = make(tmp_path / "bad.tar.gz", good)
    tmpdir, parent = tmp_path / "tmp", tmp_path / "node"
    tmpdir.mkdir()
    parent.mkdir()
    data_dir = parent / "data"
    data_dir.mkdir()
    node = Node("r1", data_dir)

    inspect, seconds = _jaco(["backup", "inspect", str(bad)], tmpdir)
    refused(inspect, 12, message)
    assert seconds < SECONDS, f"inspect took {seconds:.1f} s"

    restore, seconds = _jaco(
        ["restore", "--input", str(bad), "--name", "r1", *node.port_flags()], tmpdir
    )
    refused(restore, 12, message)
    assert seconds < SECONDS, f"restore took {seconds:.1f} s"
    assert _left_behind(tmpdir, data_dir) == []
    assert [p.name for p in parent.iterdir()] == ["data"]


def test_the_memory_limit_is_real() -> None:
    """The bound the refusals above are held to: a process run as _jaco runs jaco cannot take
    more than MEMORY_LIMIT (else every bomb would pass however much memory it made jaco take)."""
    grab = f"bytearray({MEMORY_LIMIT})"
    assert run([sys.executable, "-c", grab]).code == 0  # the same allocation, unlimited
    limited = run([*LIMITED, sys.executable, "-c", grab])
    assert limited.code != 0 and "MemoryError" in limited.err, limited


def test_healthy_archive_inspects_and_restores_under_the_same_limits(
    good: Path, tmp_path: Path
) -> None:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    inspect, _ = _jaco(["backup", "inspect", "--json", str(good)], tmpdir)
    assert inspect.code == 0, inspect.err
    assert json.loads(inspect.out)["verified"] is True
    node = Node("r1", tmp_path / "data")
    restore, _ = _jaco(
        ["restore", "--input", str(good), "--name", "r1", *node.port_flags()], tmpdir
    )
    assert restore.code == 0, restore.err
    assert (node.data_dir / "node.json").is_file()
    assert _left_behind(tmpdir) == []


def test_unknown_meta_fields_never_reach_the_terminal(good: Path, tmp_path: Path) -> None:
    """meta.json may carry fields a later jaco adds; they are ignored, never printed."""
    bad = _meta_with(note="\x1b[2J[bold red blink]hi")(tmp_path / "extra.tar.gz", good)
    for args in (["backup", "inspect", str(bad)], ["backup", "inspect", "--json", str(bad)]):
        shown = run([JACO, *args])
        assert shown.code == 0, shown.err
        assert "\x1b" not in shown.out + shown.err and "blink" not in shown.out
