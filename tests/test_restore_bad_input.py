"""`jaco restore` and `jaco backup inspect` against hostile and broken archives.

Each case: a one-line error naming the problem, exit code != 0, no traceback, and the data
dir exactly as it was (an empty directory stays empty; a missing one is not created).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infra.localcluster import JACO, Cluster, Node, cluster_of, run
from jaco.archive.snapshot_file import read_snapshot_state
from tests import archives as A
from tests.refusal import refused


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Path]]:
    root = tmp_path_factory.mktemp("source")
    with cluster_of(root, 1) as cluster:
        cluster.ok("deploy", "web", "--image", "nginx:1", "--replicas", "2")
        archive = root / "good.tar.gz"
        cluster.ok("backup", "--output", str(archive))
        yield cluster, archive


def _meta_variant(change: Callable[[dict], None]) -> Callable[[Path, Path], Path]:  # type: ignore[type-arg]
    def make(good: Path, out: Path) -> Path:
        meta, snap = A.members(good)
        change(meta)
        return A.build(
            out, [A.regular("snapshot.bin", snap), A.regular("meta.json", A.meta_bytes(meta))]
        )

    return make


def _digest_of_version(version: int, archive_format: int) -> Callable[[Path, Path], Path]:
    """meta.json of `archive_format` holding the true state digest of `version`, read from the
    snapshot itself: right for its format only when the format holds that version."""

    def make(good: Path, out: Path) -> Path:
        meta, snap = A.members(good)
        snapshot = out.with_name("snapshot.db")
        snapshot.write_bytes(snap)
        state = read_snapshot_state(snapshot, version=version)
        snapshot.unlink()
        meta.update(format=archive_format, state_digest=state.state_digest)
        first = [A.regular("snapshot.bin", snap), A.regular("meta.json", A.meta_bytes(meta))]
        return A.build(out, first if archive_format != 1 else first[::-1])

    return make


def _rehashed(
    change: Callable[[bytes], bytes], trailer: bool = True
) -> Callable[[Path, Path], Path]:
    """A snapshot.bin changed, with meta.json's size and SHA-256 made to match it, and the
    SHA-256 etcd appends to a snapshot too (`trailer`): only a reading of the store itself
    can tell. Without `trailer`, `change` gets and returns the whole file, trailer included."""

    def make(good: Path, out: Path) -> Path:
        meta, snap = A.members(good)
        snap = A.etcd_trailed(change(snap[:-32])) if trailer else change(snap)
        meta.update(snapshot_size=len(snap), snapshot_sha256=hashlib.sha256(snap).hexdigest())
        return A.build(
            out, [A.regular("snapshot.bin", snap), A.regular("meta.json", A.meta_bytes(meta))]
        )

    return make


def _flipped(trailed: bool) -> Callable[[Path, Path], Path]:
    """A byte of snapshot.bin flipped, meta.json as it was. With `trailed`, etcd's trailer is
    made to match the change: only meta.json's SHA-256 of the snapshot can tell."""

    def make(good: Path, out: Path) -> Path:
        meta, snap = A.members(good)
        flipped = bytearray(snap[:-32] if trailed else snap)
        flipped[len(flipped) // 3] ^= 0x01
        snap = A.etcd_trailed(bytes(flipped)) if trailed else bytes(flipped)
        return A.build(
            out, [A.regular("snapshot.bin", snap), A.regular("meta.json", A.meta_bytes(meta))]
        )

    return make


def _with_entries(extra: Callable[[dict, bytes], list]) -> Callable[[Path, Path], Path]:  # type: ignore[type-arg]
    def make(good: Path, out: Path) -> Path:
        meta, snap = A.members(good)
        return A.build(out, extra(meta, snap))

    return make


def _appended(good: Path, out: Path) -> Path:
    out.write_bytes(good.read_bytes() + b"junk")
    return out


def _not_gzip(good: Path, out: Path) -> Path:
    out.write_bytes(b"this is not an archive\n")
    return out


def _wrong_digest(meta: dict) -> None:  # type: ignore[type-arg]
    meta["state_digest"] = "0" * 64


CASES: list[tuple[str, Callable[[Path, Path], Path], str]] = [
    (
        "truncated gzip",
        A.cut_in_half,
        "is corrupt or truncated: its gzip stream is cut short, or bytes were added after it$",
    ),
    # Depending on where it lands, the flip breaks inflate, the gzip CRC or the snapshot hash.
    (
        "flipped byte in the compressed stream",
        A.flipped(0xFF),
        "is corrupt or truncated: (its compressed data is damaged|its content does not match the "
        "CRC that gzip recorded)|does not match the SHA-256",
    ),
    (
        "data appended after the archive",
        _appended,
        # 4 bytes: too few for a second gzip member's header, so alike a cut stream
        "is corrupt or truncated: its gzip stream is cut short, or bytes were added after it$",
    ),
    (
        "flipped byte in snapshot.bin",
        _flipped(trailed=False),
        "snapshot.bin does not match the SHA-256 etcd appended to it",
    ),
    (
        "flipped byte in snapshot.bin, etcd's trailer matching",
        _flipped(trailed=True),
        "snapshot.bin does not match the SHA-256 in meta.json",
    ),
    ("not gzip at all", _not_gzip, "is corrupt or truncated: it is not a gzip file$"),
    (
        "meta.json missing a field",
        _meta_variant(lambda m: m.pop("snapshot_index")),
        "lacks the field 'snapshot_index'",
    ),
    (
        "meta.json wrong type",
        _meta_variant(lambda m: m.update(snapshot_index="7")),
        "field 'snapshot_index' has the wrong type",
    ),
    (
        "meta.json not JSON",
        _with_entries(
            lambda m, s: [A.regular("snapshot.bin", s), A.regular("meta.json", b"{nope")]
        ),
        "meta.json is not valid: it is not a JSON object",
    ),
    (
        "another major version",
        _meta_variant(lambda m: m.update(jaco_version="2.0.0")),
        "restore needs the same major version",
    ),
    (
        "unknown format",
        _meta_variant(lambda m: m.update(format=9)),
        r"format 9 is not supported \(this jaco reads formats 1, 2, 3\)",
    ),
    (
        "format 3 holding a version 1 digest",
        _digest_of_version(1, 3),
        "does not hold exactly what was backed up",
    ),
    (
        "format 2 holding a version 2 digest",
        _digest_of_version(2, 2),
        "does not hold exactly what was backed up",
    ),
    (
        "state digest not matching content",
        _meta_variant(_wrong_digest),
        "does not hold exactly what was backed up",
    ),
    (
        "a snapshot of zeros (hashes recomputed to match)",
        _rehashed(lambda snap: b"\0" * len(snap)),
        "snapshot.bin is not an etcd snapshot: its first page is not a bbolt meta page",
    ),
    (
        "a snapshot that is not an etcd store (hashes recomputed to match)",
        _rehashed(lambda snap: snap[:4096] + b"\0" * (len(snap) - 4096)),
        "snapshot.bin is not a readable jaco store",
    ),
    (
        "a snapshot with its page tree cut short (hashes recomputed to match)",
        _rehashed(lambda snap: snap[: len(snap) // 2 // 4096 * 4096]),
        "snapshot.bin is not a readable jaco store: .*truncated",
    ),
    (
        "etcd's SHA-256 at the end of snapshot.bin not matching, meta.json's matching",
        _rehashed(lambda snap: snap[:-32] + bytes(32), trailer=False),
        "snapshot.bin does not match the SHA-256 etcd appended to it",
    ),
    (
        "etcd's SHA-256 at the end of snapshot.bin missing, meta.json's matching",
        _rehashed(lambda snap: snap[:-32], trailer=False),
        "snapshot.bin does not end with the SHA-256 etcd appends to every snapshot",
    ),
    (
        "meta.json naming another index (hashes matching)",
        _meta_variant(lambda m: m.update(snapshot_index=m["snapshot_index"] + 1)),
        "snapshot.bin is at index",
    ),
    (
        "meta.json naming another cluster",
        _meta_variant(lambda m: m.update(cluster_id="f" * 16)),
        "holds another cluster than meta.json names",
    ),
    (
        "meta.json naming another CA (hashes matching)",
        _meta_variant(lambda m: m.update(ca_fingerprint="c" * 64)),
        "the snapshot's cluster CA is not the one meta.json names",
    ),
    (
        "meta.json counts that lie, its digest matching",
        _meta_variant(lambda m: m["counts"].update(deployments=m["counts"]["deployments"] + 1)),
        "does not hold the record counts meta.json names",
    ),
    (
        "an extra member",
        _with_entries(
            lambda m, s: [
                A.regular("snapshot.bin", s),
                A.regular("meta.json", A.meta_bytes(m)),
                A.regular("extra.sh", b"rm -rf /"),
            ]
        ),
        "unexpected member 'extra.sh'",
    ),
    (
        "a missing member",
        _with_entries(lambda m, s: [A.regular("snapshot.bin", s)]),
        "the archive lacks meta.json",
    ),
    (
        "meta before snapshot in a format 3 archive",
        _with_entries(
            lambda m, s: [A.regular("meta.json", A.meta_bytes(m)), A.regular("snapshot.bin", s)]
        ),
        "meta.json comes before snapshot.bin in a format 3 archive",
    ),
    (
        "a member named ../x",
        _with_entries(lambda m, s: [A.regular("snapshot.bin", s), A.regular("../x", b"owned")]),
        "unexpected member '../x'",
    ),
    (
        "an absolute member",
        _with_entries(lambda m, s: [A.regular("/etc/cron.d/x", b"owned")]),
        "unexpected member '/etc/cron.d/x'",
    ),
    (
        "a symlink member",
        _with_entries(
            lambda m, s: [
                A.special("snapshot.bin", tarfile.SYMTYPE, "/etc/shadow"),
                A.regular("meta.json", A.meta_bytes(m)),
            ]
        ),
        "member 'snapshot.bin' is not a regular file",
    ),
    (
        "a device member",
        _with_entries(
            lambda m, s: [
                A.special("snapshot.bin", tarfile.CHRTYPE),
                A.regular("meta.json", A.meta_bytes(m)),
            ]
        ),
        "member 'snapshot.bin' is not a regular file",
    ),
    (
        "a member claiming a huge size",
        _with_entries(
            lambda m, s: [
                A.regular("snapshot.bin", s, size=2**40),
                A.regular("meta.json", A.meta_bytes(m)),
            ]
        ),
        "snapshot.bin is larger than any snapshot jaco writes",
    ),
    (
        "a huge meta.json",
        _with_entries(lambda m, s: [A.regular("meta.json", b" " * (2 << 20))]),
        "meta.json is larger than any real one",
    ),
]


# etcd's SHA-256 is checked with the archive: inspect refuses those too.
GZIP_WORDS = re.compile(r"b'|Error -\d|gzipped")  # what gzip and zlib would have said
RESTORE_ONLY = {c[0] for c in CASES if "hashes" in c[0] and "zeros" not in c[0]} | {
    "state digest not matching content",
    "format 3 holding a version 1 digest",
    "format 2 holding a version 2 digest",
    "meta.json naming another cluster",
    "meta.json naming another CA (hashes matching)",
    "meta.json counts that lie, its digest matching",
}
# Refused by the snapshot checks: an ArchiveError, exit code 12.
SNAPSHOT_CHECKS = RESTORE_ONLY | {c[0] for c in CASES if "etcd's SHA-256" in c[0]}


def _restore(node: Node, archive: Path) -> tuple[int, str]:
    result = run(
        [JACO, "restore", "--input", str(archive), "--name", node.name, *node.port_flags()],
        timeout=120,
    )
    assert "Traceback" not in result.err + result.out
    return result.code, result.err


@pytest.mark.parametrize(("label", "make", "message"), CASES, ids=[c[0] for c in CASES])
def test_restore_refuses_bad_archive(
    source: tuple[Cluster, Path],
    tmp_path: Path,
    label: str,
    make: Callable[[Path, Path], Path],
    message: str,
) -> None:
    _, good = source
    bad = make(good, tmp_path / "bad.tar.gz")
    digest = hashlib.sha256(bad.read_bytes()).hexdigest()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    node = Node("r1", data_dir)
    code, err = _restore(node, bad)
    assert code != 0
    lines = err.splitlines()
    assert len(lines) == 1, f"not one line on stderr: {err}"
    assert re.search(message, lines[0]), err
    assert not GZIP_WORDS.search(lines[0]), err
    if label in SNAPSHOT_CHECKS:
        assert code == 12, err
    assert list(data_dir.iterdir()) == [], "restore left something in the data dir"
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == digest
    if label not in RESTORE_ONLY:  # inspect checks the archive, not the store inside
        inspect = run([JACO, "backup", "inspect", str(bad)])
        assert inspect.code != 0 and len(inspect.err.splitlines()) == 1, inspect.err
        assert re.search(message, inspect.err), inspect.err
        assert not GZIP_WORDS.search(inspect.err), inspect.err


def test_inspect_prints_verified_meta(source: tuple[Cluster, Path]) -> None:
    _, good = source
    meta, _ = A.members(good)
    result = run([JACO, "backup", "inspect", str(good), "--json"])
    assert result.code == 0, result.err
    shown = result.json()
    assert shown["verified"] is True
    for key in (
        "cluster_id",
        "snapshot_index",
        "snapshot_term",
        "jaco_version",
        "taken_at",
        "leader_at_snapshot",
        "snapshot_sha256",
        "state_digest",
        "counts",
    ):
        assert shown[key] == meta[key]
    assert shown["counts"]["deployments"] == 1 and shown["counts"]["replicas"] == 2


def test_restore_refuses_missing_or_directory_input(tmp_path: Path) -> None:
    node = Node("r1", tmp_path / "data")
    code, err = _restore(node, tmp_path / "nope.tar.gz")
    assert code != 0 and "nope.tar.gz does not exist" in err
    code, err = _restore(node, tmp_path)
    assert code != 0 and "is not a regular file" in err
    assert not node.data_dir.exists()


def test_restore_refuses_non_empty_data_dir(source: tuple[Cluster, Path], tmp_path: Path) -> None:
    _, good = source
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    keep = data_dir / "precious"
    keep.write_text("do not touch")
    code, err = _restore(Node("r1", data_dir), good)
    assert code != 0 and "is not empty; refusing to overwrite it" in err
    assert [p.name for p in data_dir.iterdir()] == ["precious"]
    assert keep.read_text() == "do not touch"


def test_restore_refuses_running_daemon(source: tuple[Cluster, Path]) -> None:
    cluster, good = source
    node = cluster.nodes["node-1"]
    before = sorted(os.listdir(node.data_dir))
    code, err = _restore(Node("node-1", node.data_dir), good)
    assert code != 0 and "jacod is running on" in err
    assert sorted(os.listdir(node.data_dir)) == before
    assert cluster.ok("status", "--json").json()["deployments"][0]["name"] == "web"


@pytest.mark.parametrize("archive_format", [1, 2])
def test_older_formats_still_restore(
    source: tuple[Cluster, Path], tmp_path: Path, archive_format: int
) -> None:
    """Archives of older jaco restore as before: format 1 (meta.json first) and format 2, both
    holding the state digest of version 1."""
    cluster, good = source
    assert A.members(good)[0]["format"] == 3
    old = _digest_of_version(1, archive_format)(good, tmp_path / "old.tar.gz")
    restored = Cluster(tmp_path / "restored")
    restored.root.mkdir()
    restored.token = cluster.token
    node = restored.new_node("r1")
    code, err = _restore(node, old)
    assert code == 0, err
    node.start()
    try:
        restored.wait_ready(["r1"])
        assert restored.ok("status", "--json").json()["deployments"][0]["name"] == "web"
    finally:
        restored.stop_all()


def test_an_installation_without_its_compiled_reader_refuses_in_one_line(
    source: tuple[Cluster, Path], tmp_path: Path
) -> None:
    """jaco installed without jaco._native (a failed build, a wheel for another platform):
    restore says what is missing and what to do, in one line, exit 16; the data dir stays
    empty."""
    _, good = source
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    node = Node("r1", data_dir)
    without = (
        "import sys; sys.modules['jaco._native'] = None; from jaco.cli.main import main; main()"
    )
    result = run(
        [sys.executable, "-c", without, "restore", "--input", str(good), "--name", "r1",
         *node.port_flags()],
        timeout=120,
    )  # fmt: skip
    refused(result, 16, r"lacks its compiled snapshot reader \(jaco\._native\): reinstall jaco")
    assert list(data_dir.iterdir()) == []


def test_a_plain_archive_restores_whatever_identity_the_environment_names(
    source: tuple[Cluster, Path], tmp_path: Path
) -> None:
    """--identity comes from JACO_AGE_IDENTITY_FILE too, which may be set for other work: a
    plain archive's restore does not read it (here it does not exist)."""
    _, good = source
    node = Node("r1", tmp_path / "data")
    result = run(
        [JACO, "restore", "--input", str(good), "--name", node.name, *node.port_flags()],
        env={"JACO_AGE_IDENTITY_FILE": str(tmp_path / "absent.key")},
        timeout=120,
    )
    assert result.code == 0, result.err
    assert (node.data_dir / "etcd" / "member" / "snap" / "db").is_file()
