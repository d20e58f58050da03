"""`jaco restore --input BACKUP.tar.gz.age --identity KEY`: the pipeline's encrypted backups
restore as they are decrypted, as `jaco backup inspect` reads them. No decrypted copy of the
archive (which holds the cluster's CA key) is written anywhere: the snapshot goes straight
into the new data dir, as from a plain archive. A wrong key, a damaged or cut ciphertext, an
encrypted file that is not an archive: one line, nothing left in the data dir or beside it.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infra.localcluster import JACO, Cluster, Node, Result, cluster_of, run
from tests import archives as A
from tests.pipeline import age_keygen
from tests.refusal import refused


@pytest.fixture(scope="module")
def encrypted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Path, Path]]:
    """A backup encrypted with the age CLI, as an operator fetches it from S3, and its key."""
    root = tmp_path_factory.mktemp("encrypted")
    with cluster_of(root, 1) as cluster:
        cluster.ok("deploy", "web", "--image", "nginx:1", "--replicas", "2")
        plain = root / "cluster.tar.gz"
        cluster.ok("backup", "--output", str(plain))
        key = root / "ops.key"
        recipient = age_keygen(key)
        sealed = root / "cluster.tar.gz.age"
        subprocess.run(["age", "-r", recipient, "-o", str(sealed), str(plain)], check=True)
        plain.unlink()  # the operator never had it on disk
        yield cluster, sealed, key


def _restore(node: Node, archive: Path, *extra: str, env: dict[str, str] | None = None) -> Result:
    return run(
        [JACO, "restore", "--input", str(archive), "--name", node.name, *node.port_flags(),
         *extra],
        env=env,
        timeout=120,
    )  # fmt: skip


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_an_encrypted_backup_restores_as_it_is_decrypted(
    encrypted: tuple[Cluster, Path, Path], tmp_path: Path
) -> None:
    source, sealed, key = encrypted
    before = _files(sealed.parent)
    restored = Cluster(tmp_path / "restored")
    restored.root.mkdir()
    restored.token = source.token
    node = restored.new_node("r1")
    scratch = tmp_path / "tmpdir"  # $TMPDIR: nothing decrypted goes there either
    scratch.mkdir()
    result = _restore(node, sealed, "--identity", str(key), env={"TMPDIR": str(scratch)})
    assert result.code == 0, result.err
    assert "Restored cluster" in result.out
    assert _files(sealed.parent) == before, "restore wrote beside the backup"
    assert list(scratch.iterdir()) == [], "restore wrote to $TMPDIR"
    node.start()
    try:
        restored.wait_ready(["r1"])
        status = restored.ok("status", "--json").json()
        assert [d["name"] for d in status["deployments"]] == ["web"]
        assert status["cluster_id"] == source.ok("status", "--json").json()["cluster_id"]
    finally:
        restored.stop_all()


def _encrypting(plaintext: bytes) -> Callable[[Path, Path], Path]:
    def make(good: Path, out: Path) -> Path:
        recipient = (good.parent / "ops.key").read_text().split("public key: ")[1].split()[0]
        junk = out.with_suffix(".junk")
        junk.write_bytes(plaintext)
        subprocess.run(["age", "-r", recipient, "-o", str(out), str(junk)], check=True)
        junk.unlink()
        return out

    return make


CASES = [
    ("no identity", None, [], 2,
     r"cluster\.tar\.gz\.age is an age-encrypted backup: give --identity FILE"),
    ("another key", None, ["--identity", "{other}"], 14,
     r"the backup does not decrypt with the identity in .*other\.key .*wrong key, or the "
     r"ciphertext is damaged"),
    ("a byte flipped inside", A.flipped(0x01), ["--identity", "{key}"], 14,
     r"the backup's ciphertext is damaged or truncated"),
    ("cut in half", A.cut_in_half, ["--identity", "{key}"], 14,
     r"the backup's ciphertext is damaged or truncated"),
    ("an encrypted file that is no archive", _encrypting(b"\x1f\x8b" + bytes(range(256)) * 400),
     ["--identity", "{key}"], 12, r"cluster\.tar\.gz\.age is corrupt or truncated: its gzip "
     r"header names an unknown compression method$"),
    # the decrypter's plaintext is peeked at: not gzip from its first byte, not after its end
    ("an encrypted zipfile", _encrypting(b"PK\x03\x04" + b"x" * 5000),
     ["--identity", "{key}"], 12,
     r"cluster\.tar\.gz\.age is corrupt or truncated: it is not a gzip file$"),
]  # fmt: skip


@pytest.mark.parametrize(("label", "make", "flags", "code", "message"), CASES,
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_a_bad_encrypted_backup_is_refused_in_one_line_and_leaves_nothing(
    encrypted: tuple[Cluster, Path, Path],
    tmp_path: Path,
    label: str,
    make: Callable[[Path, Path], Path] | None,
    flags: list[str],
    code: int,
    message: str,
) -> None:
    _, good, key = encrypted
    other = tmp_path / "other.key"
    age_keygen(other)
    bad = good if make is None else make(good, tmp_path / good.name)
    digest = hashlib.sha256(bad.read_bytes()).hexdigest()
    before = _files(tmp_path)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    args = [f.format(key=key, other=other) for f in flags]
    refused(_restore(Node("r1", data_dir), bad, *args), code, message)
    assert list(data_dir.iterdir()) == [], "restore left something in the data dir"
    assert _files(tmp_path) == before
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == digest
