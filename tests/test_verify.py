"""The pipeline's verify step provoked, each of its trust checks in turn.

Verify decrypts the stored object with the operator's identity and compares it with what was
taken and encrypted: the ciphertext SHA-256, the plaintext SHA-256, then meta.json's fields.
An encryption that silently produced the wrong file cannot be made to happen here, so it is
simulated (the one stand-in in this module): encrypt writes a *valid* age file of another
archive — another real backup, or the real one with one meta.json field changed — and reports
that file's real ciphertext hash. Verify must name the first difference, and the run must
leave no trace of the backup in either store or catalog.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prefect import task
from prefect.cache_policies import NO_CACHE

import flows.backup_flow
import flows.tasks
from flows.backup_flow import backup_cluster
from flows.catalog import Catalog
from flows.storage import open_store
from jaco.public import JacoError, encrypt_file, sha256_file
from tests import archives as A
from tests.pipeline import BUCKET, params

Craft = Callable[[dict[str, Any], bytes, Path], tuple[dict[str, Any], bytes]]


def _field(name: str, value: Any) -> Craft:
    def craft(meta: dict[str, Any], snap: bytes, other: Path) -> tuple[dict[str, Any], bytes]:
        return {**meta, name: value}, snap

    return craft


def _other_snapshot(meta: dict[str, Any], snap: bytes, other: Path) -> tuple[dict[str, Any], bytes]:
    _, theirs = A.members(other)
    sha = hashlib.sha256(theirs).hexdigest()
    return {**meta, "snapshot_sha256": sha, "snapshot_size": len(theirs)}, theirs


def _whole_other(meta: dict[str, Any], snap: bytes, other: Path) -> tuple[dict[str, Any], bytes]:
    return A.members(other)


META = "'s meta.json has another {} than was taken"
CASES: list[tuple[str, Craft, str, bool]] = [
    # (what encrypt wrongly wrote, how, verify's words, reported as the taken plaintext)
    ("another archive", _whole_other, "decrypts to another archive than was taken", True),
    ("another cluster_id", _field("cluster_id", "f" * 16), META.format("cluster_id"), False),
    ("another snapshot_index", _field("snapshot_index", 1), META.format("snapshot_index"), False),
    ("another snapshot", _other_snapshot, META.format("snapshot_sha256"), False),
    ("another state_digest", _field("state_digest", "0" * 64), META.format("state_digest"), False),
]


@pytest.mark.parametrize(("label", "craft", "message", "lie"), CASES, ids=[c[0] for c in CASES])
def test_verify_names_what_the_stored_object_is_not(
    stored1: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    label: str,
    craft: Craft,
    message: str,
    lie: bool,
) -> None:
    cluster = stored1["cluster"]
    other = tmp_path / "other.tar.gz"  # another real backup of the same cluster
    cluster.ok("backup", "--output", str(other))

    def wrong_encrypt(source: Path, target: Path, recipients: list[str]) -> tuple[str, str]:
        meta, snap = craft(*A.members(source), other)
        written = A.build(
            source.with_name("wrong.tar.gz"),
            [A.regular("snapshot.bin", snap), A.regular("meta.json", A.meta_bytes(meta))],
        )
        plain_sha, cipher_sha = encrypt_file(written, target, recipients)
        # A lie about the plaintext is what only the plaintext check can catch.
        return (sha256_file(source) if lie else plain_sha), cipher_sha

    monkeypatch.setattr(flows.tasks, "encrypt_file", wrong_encrypt)
    failure = _failed_without_trace(stored1, tmp_path, "verify-" + label)
    assert message in failure, failure
    assert "corrupt or truncated" not in failure


def test_verify_deletes_a_backup_whose_archive_is_broken(
    stored1: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Encrypt wrote, and reported truly, an age file of the archive cut in half: the
    ciphertext and plaintext checksums hold, the archive reader refuses it. That proves the
    object is no restorable backup (an ArchiveError is damage, not a failure to look): the
    run leaves no trace of it."""

    def truncating_encrypt(source: Path, target: Path, recipients: list[str]) -> tuple[str, str]:
        cut = source.with_name("cut.tar.gz")
        cut.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
        return encrypt_file(cut, target, recipients)

    monkeypatch.setattr(flows.tasks, "encrypt_file", truncating_encrypt)
    failure = _failed_without_trace(stored1, tmp_path, "verify-archive-cut")
    assert "ArchiveError" in failure and "truncated" in failure, failure


def test_verify_deletes_a_backup_whose_ciphertext_does_not_decrypt(
    stored1: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Encrypt wrote an age file with a byte of its payload flipped, and reported that file's
    real checksums: the object is the one uploaded, the verify identity opens its header, and
    its payload fails age's authentication. That proves it no restorable backup (a
    DecryptionFailed other than a wrong key is damage): the run leaves no trace of it."""

    def damaging_encrypt(source: Path, target: Path, recipients: list[str]) -> tuple[str, str]:
        encrypt_file(source, target, recipients)
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        target.write_bytes(data)
        return sha256_file(source), sha256_file(target)

    monkeypatch.setattr(flows.tasks, "encrypt_file", damaging_encrypt)
    failure = _failed_without_trace(stored1, tmp_path, "verify-payload-damaged")
    assert "DecryptionFailed: the backup's ciphertext is damaged or truncated" in failure, failure


def test_a_decrypter_dying_on_a_damaged_object_still_finds_it_damaged(
    stored1: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A byte flipped in the stored object, and the decrypter dying on it (`the decrypter
    failed`, which alone is no proof of damage: a backup is kept for it). Verify still reads
    the object to its end and holds it to its checksum, which proves the damage: the run names
    it and leaves no trace (it was retried, then kept, unverified). The dying decrypter is a
    stand-in: a real one cannot be made to die on cue inside the flow."""

    def dying(ciphertext: Any, identities: Any, name: str = "") -> Any:
        ciphertext.read(1024)
        raise JacoError("the decrypter failed (exit 1)")

    monkeypatch.setenv("JACO_TASK_RETRIES", "0")
    _upload_damaged(monkeypatch, _flipped)
    monkeypatch.setattr(flows.tasks, "decrypt_and_read_archive", dying)
    failure = _failed_without_trace(stored1, tmp_path, "verify-dying-decrypter")
    assert "is damaged: its content does not match the ciphertext checksum" in failure, failure


def _failed_without_trace(stored1: dict[str, Any], tmp_path: Path, prefix: str) -> str:
    """One backup run under `prefix`, which must fail and leave nothing of the backup in the
    bucket, its catalog or the local copies; its failure message."""
    prefix = prefix.replace(" ", "-")
    store = open_store(f"s3://{BUCKET}")
    local = tmp_path / "local"
    state = backup_cluster(
        params(stored1["cluster"], stored1["keys"], local, prefix=prefix), return_state=True
    )
    assert state.is_failed()
    assert [o.key for o in store.list(f"{prefix}/") if "/catalog/" not in o.key] == []
    assert Catalog(store, prefix, "prod").backups() == []
    assert not list(local.rglob("*.age"))
    return str(state.message)


def _upload_damaged(
    monkeypatch: pytest.MonkeyPatch, damage: Callable[[bytearray, dict[str, str]], None]
) -> list[int]:
    """The flow's upload stores the encrypted backup with `damage` done to its bytes or its
    metadata; returns [damaged size, uploaded size], filled in by the upload."""
    sizes: list[int] = []

    def damaging_upload(
        store_url: str, s3: Any, path: Path, key: str, metadata: dict[str, str]
    ) -> float:
        data, changed = bytearray(path.read_bytes()), dict(metadata)
        damage(data, changed)
        sizes.extend((len(data), path.stat().st_size))
        damaged = path.with_name("damaged.age")
        damaged.write_bytes(data)
        return flows.tasks.upload(store_url, s3, damaged, key, changed)

    monkeypatch.setattr(
        flows.backup_flow,
        "upload_task",
        task(name="upload", cache_policy=NO_CACHE)(damaging_upload),
    )
    return sizes


def _flipped(data: bytearray, metadata: dict[str, str]) -> None:
    data[len(data) // 2] ^= 0x01


def _cut(data: bytearray, metadata: dict[str, str]) -> None:
    del data[-100:]


def _mislabelled(data: bytearray, metadata: dict[str, str]) -> None:
    metadata["ciphertext-sha256"] = "0" * 64  # the object intact, its checksum another's


def _unmarked(data: bytearray, metadata: dict[str, str]) -> None:
    del metadata["ciphertext-sha256"]


STORED: list[tuple[str, Callable[[bytearray, dict[str, str]], None], str]] = [
    ("a byte flipped", _flipped, "is damaged: its content does not match the ciphertext checksum"),
    ("cut short", _cut, "is damaged: {stored} bytes stored, {uploaded} uploaded"),
    ("no checksum", _unmarked, "carries no ciphertext checksum"),
    ("another checksum", _mislabelled, "is damaged: its content does not match the ciphertext"),
]


@pytest.mark.parametrize(("label", "damage", "message"), STORED, ids=[c[0] for c in STORED])
def test_verify_refuses_an_object_damaged_in_the_store(
    stored1: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    label: str,
    damage: Callable[[bytearray, dict[str, str]], None],
    message: str,
) -> None:
    """What S3 holds is not what was uploaded (a flipped byte, a short object, the checksum
    missing from its metadata): verify, reading it as it downloads, names it, and the run
    leaves no trace of the backup."""
    sizes = _upload_damaged(monkeypatch, damage)
    failure = _failed_without_trace(stored1, tmp_path, "stored-" + label)
    assert message.format(stored=sizes[0], uploaded=sizes[-1]) in failure, failure
