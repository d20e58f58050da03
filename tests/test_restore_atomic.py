"""`jaco restore` killed with SIGKILL at several moments: the data dir is as it was, no
plaintext snapshot survives outside it, jacod refuses the dir cleanly, and a retry removes
what the dead attempt left (and says so), restores, and the node starts READY.

The archive holds ~35 MB of incompressible state, so each moment lasts long enough to be
caught by polling: the staging directory appearing, the snapshot being written, etcd's store
being written.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infra.localcluster import JACO, JACOD, Cluster, Node, cluster_of, run
from tests.conftest import fill
from tests.mounts import tmpfs
from tests.refusal import refused


@pytest.fixture(scope="module")
def large(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Path]]:
    root = tmp_path_factory.mktemp("large")
    with cluster_of(root, 1) as cluster:
        fill(cluster, 45)
        archive = root / "large.tar.gz"
        cluster.ok("backup", "--output", str(archive))
        yield cluster, archive


def _written_files(pid: int) -> list[tuple[str, int]]:
    """Files the process holds open: (where, size), read from /proc."""
    found = []
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                where = os.readlink(f"/proc/{pid}/fd/{fd}")
                if where.startswith("/") and not where.startswith(("/dev", "/proc")):
                    found.append((where, os.stat(f"/proc/{pid}/fd/{fd}").st_size))
    return found


def _under(root: Path, name: str) -> list[Path]:
    try:
        return list(root.rglob(name))
    except OSError:  # a directory vanished while it was walked
        return []


def _snapshot_being_written(pid: int, roots: tuple[Path, Path]) -> bool:
    return any(
        size > 1_000_000 and where.startswith(tuple(str(r) for r in roots))
        for where, size in _written_files(pid)
    )


# What the test waits for before the kill, seen from outside the process.
MOMENTS: dict[str, Callable[[int, Path, Path], bool]] = {
    "a staging directory appears": lambda pid, parent, tmp: any(
        p.name != "data" for p in [*parent.iterdir(), *tmp.iterdir()]
    ),
    "the snapshot is being written": lambda pid, parent, tmp: _snapshot_being_written(
        pid, (parent, tmp)
    ),
    "etcd's store appears": lambda pid, parent, tmp: bool(_under(parent, "db")),
}


def _sizes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in _under(root, "*") if p.is_file()}


def _stragglers(marker: str) -> list[str]:
    """Processes still running whose command line names `marker` (e.g. an etcdctl restore
    the killed jaco had started)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                if marker.encode() in cmdline:
                    found.append(cmdline.decode(errors="replace"))
    return found


def _kill_restore_when(
    moment: Callable[[int, Path, Path], bool], node: Node, archive: Path, tmp: Path
) -> None:
    proc = subprocess.Popen(
        [JACO, "restore", "--input", str(archive), "--name", node.name, *node.port_flags()],
        env={**os.environ, "TMPDIR": str(tmp)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    parent = node.data_dir.parent
    deadline = time.monotonic() + 60
    try:
        while not moment(proc.pid, parent, tmp):
            assert proc.poll() is None, f"restore ended before the moment: {proc.stderr}"
            assert time.monotonic() < deadline, "the moment never came"
            time.sleep(0.002)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
        assert proc.stderr is not None
        proc.stderr.close()


@pytest.mark.parametrize("moment", list(MOMENTS), ids=list(MOMENTS))
def test_restore_killed_leaves_the_data_dir_as_it_was(
    large: tuple[Cluster, Path], tmp_path: Path, moment: str
) -> None:
    cluster, archive = large
    parent, tmp = tmp_path / "var-lib", tmp_path / "tmp"
    parent.mkdir()
    tmp.mkdir()
    node = Node("r1", parent / "data")
    node.data_dir.mkdir()

    _kill_restore_when(MOMENTS[moment], node, archive, tmp)

    time.sleep(0.2)  # a child that outlived the kill (etcd's restore tool) would still run
    assert _stragglers(str(parent)) == [], "a process of the dead restore lives on"
    before = _sizes(parent)
    time.sleep(1)
    assert _sizes(parent) == before, "something still writes after the kill"
    assert list(node.data_dir.iterdir()) == [], "the data dir was touched"
    assert _under(parent, "snapshot.bin") + _under(tmp, "*") == [], "plaintext left behind"
    left = [p.name for p in parent.iterdir() if p.name != "data"]
    assert all(name.startswith(".data.restore-") for name in left), left
    for name in left:  # only the half-built data dir: etcd's store, the node's PKI
        staging = parent / name
        assert staging.stat().st_mode & 0o777 == 0o700  # as private as the data dir
        files = [p.relative_to(staging) for p in staging.rglob("*") if p.is_file()]
        assert all(f.parts[0] in ("etcd", "pki") for f in files), files

    # jacod does not take the dir for a node, nor claim it half-primed
    refused(
        run([JACOD, "--name", "r1", "--data-dir", str(node.data_dir)]),
        9,
        "holds no initialised node",
    )

    retry = run(
        [JACO, "restore", "--input", str(archive), "--name", "r1", *node.port_flags()],
        env={"TMPDIR": str(tmp)},
    )
    assert retry.code == 0, retry.err
    for name in left:
        assert f"removed {parent / name}, left by an interrupted restore" in retry.err
    assert sorted(p.name for p in parent.iterdir()) == ["data"]
    assert list(tmp.iterdir()) == []

    restored = Cluster(tmp_path)
    restored.token = cluster.token
    restored.nodes["r1"] = node
    node.start()
    try:
        restored.wait_ready(["r1"])
        names = {d["name"] for d in restored.ok("status", "--json").json()["deployments"]}
        assert "bulk44" in names
    finally:
        node.stop()


def test_restore_refuses_an_archive_the_disk_cannot_hold(
    large: tuple[Cluster, Path], tmp_path: Path
) -> None:
    with tmpfs(tmp_path / "small", "size=48m") as small:
        node = Node("r1", small / "data")
        result = run(
            [JACO, "restore", "--input", str(large[1]), "--name", "r1", *node.port_flags()],
            env={"TMPDIR": str(tmp_path)},
        )
        refused(result, 1, "restoring this backup needs .* bytes but the filesystem holding")
        assert list(small.iterdir()) == [] and list(tmp_path.iterdir()) == [small]


def test_jacod_names_a_dir_that_is_not_a_primed_node(tmp_path: Path) -> None:
    """Restore leaves no half-primed dir; anything else without node.json is named as such."""
    data = tmp_path / "data"
    result = run([JACOD, "--name", "r1", "--data-dir", str(data)])
    refused(result, 9, "holds no initialised node .no node.json.: run `jaco cluster init`")
    (data / "etcd").mkdir(parents=True)
    result = run([JACOD, "--name", "r1", "--data-dir", str(data)])
    refused(result, 9, "is not empty but holds no node.json")
