"""The pipeline's steps as retriable Prefect tasks.

Tasks pass paths and object keys, never large payloads. Each bounds the call it makes (gRPC
deadline, boto3 timeouts, Prefect's `timeout_seconds`), retries with exponential backoff and
jitter, and does not retry permanent errors (bad token, permission denied, corrupt data).
Secrets come from the environment (`JACO_TOKEN`, the AWS chain, `JACO_AGE_IDENTITY_FILE`),
never from parameters, logs or artifacts.
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyrage
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff

from flows.crypto import (
    HashingWriter,
    decrypt_and_read_archive,
    decrypt_to,
    encrypt_file,
    load_identities,
    sha256_file,
)
from flows.errors import PipelineError, VerifyFailed, is_transient
from flows.retention import RetentionPolicy, parse_key, to_keep
from flows.storage import open_store
from jaco.archive import read_archive
from jaco.backup import take_backup
from jaco.client import open_client
from jaco.errors import InvalidArgument, Unavailable

RETRIES = int(os.environ.get("JACO_TASK_RETRIES", "4"))
BACKOFF = float(os.environ.get("JACO_RETRY_BACKOFF", "2"))


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry_condition_fn: retry only what a retry can fix."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classify whatever the task raised
        return is_transient(exc)
    return True


RETRY: dict[str, Any] = {
    "cache_policy": NO_CACHE,  # every run must really back up; inputs are paths and keys
    "retries": RETRIES,
    "retry_delay_seconds": exponential_backoff(backoff_factor=BACKOFF),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_transient,
}


def identity_file() -> Path:
    path = os.environ.get("JACO_AGE_IDENTITY_FILE")
    if not path:
        raise PipelineError(
            "set JACO_AGE_IDENTITY_FILE to the age identity used to verify "
            "backups (it is never passed as a parameter)"
        )
    return Path(path)


def backup_key(prefix: str, meta: dict[str, Any]) -> str:
    day = dt.date.fromisoformat(meta["taken_at"][:10])
    return (
        f"{prefix.strip('/')}/{meta['cluster_id']}/{day:%Y/%m/%d}/"
        f"cluster-{day.isoformat()}-{meta['snapshot_index']}.tar.gz.age"
    )


@task(name="take-backup", timeout_seconds=900, **RETRY)
def take_backup_task(servers: list[str], workdir: str, timeout: float) -> dict[str, Any]:
    """The Backup RPC into a local archive; on UNAVAILABLE the next server is tried."""
    logger = get_run_logger()
    if not servers:
        raise InvalidArgument("no API servers given")
    token = os.environ.get("JACO_TOKEN")
    if not token:
        raise InvalidArgument("set JACO_TOKEN to an admin operator token")
    Path(workdir).mkdir(mode=0o700, parents=True, exist_ok=True)
    last: Exception | None = None
    for server in servers:
        output = Path(workdir) / f"backup-{os.getpid()}-{time.monotonic_ns()}.tar.gz"
        started = time.monotonic()
        try:
            with open_client(server, token, timeout=timeout) as client:
                result = take_backup(client, output, timeout)
        except Unavailable as exc:
            logger.warning("server %s unavailable (%s); trying the next one", server, exc.message)
            last = exc
            continue
        seconds = time.monotonic() - started
        logger.info(
            "backup at index %s from %s: %d bytes in %.2fs",
            result.meta["snapshot_index"],
            server,
            result.size,
            seconds,
        )
        return {
            "path": str(output),
            "meta": result.meta,
            "size": result.size,
            "server": server,
            "seconds": seconds,
        }
    assert last is not None
    raise last


@task(name="encrypt", timeout_seconds=1800, **RETRY)
def encrypt_task(archive: str, recipients: list[str]) -> dict[str, Any]:
    """age-encrypt to all recipients, then prove the ciphertext decrypts to the same bytes.

    The proof uses a throwaway identity made for this run and added as one more recipient:
    it needs no secret here, and its key is gone when the task ends. Whether the operator's
    own identity decrypts the stored object is for `verify` to prove, independently.
    """
    started = time.monotonic()
    source = Path(archive)
    target = source.with_name(source.name + ".age")
    proof = pyrage.x25519.Identity.generate()
    plain_sha, cipher_sha = encrypt_file(source, target, recipients, extra=proof.to_public())
    encrypt_seconds = time.monotonic() - started
    sink = HashingWriter()
    decrypt_to(target, sink, [proof], "this run's proof key")
    if sink.sha256.hexdigest() != plain_sha:
        target.unlink(missing_ok=True)
        raise PipelineError(
            "the ciphertext does not decrypt to the archive (the encryption "
            "silently failed); nothing was uploaded"
        )
    return {
        "path": str(target),
        "plaintext_sha256": plain_sha,
        "ciphertext_sha256": cipher_sha,
        "size": target.stat().st_size,
        "seconds": encrypt_seconds,
        "verify_seconds": time.monotonic() - started - encrypt_seconds,
    }


@task(name="upload", timeout_seconds=3600, **RETRY)
def upload_task(store_url: str, path: str, key: str, metadata: dict[str, str]) -> dict[str, Any]:
    started = time.monotonic()
    store = open_store(store_url)
    store.put(key, Path(path), metadata)
    get_run_logger().info("stored %s in %s", key, store.name)
    return {"store": store.name, "key": key, "seconds": time.monotonic() - started}


def download_checked(
    store_url: str, key: str, cipher: Path, expected_sha256: str | None = None
) -> tuple[dict[str, str], float]:
    """Download `key` to `cipher`; its SHA-256 must be the one recorded at upload (and
    `expected_sha256`, when the caller knows it). Returns the metadata and the seconds taken."""
    store = open_store(store_url)
    started = time.monotonic()
    metadata = store.get(key, cipher)
    seconds = time.monotonic() - started
    recorded = metadata.get("ciphertext-sha256")
    if recorded is None:
        raise VerifyFailed(f"{key} in {store.name} carries no ciphertext checksum")
    if sha256_file(cipher) != recorded:
        raise VerifyFailed(
            f"{key} in {store.name} is damaged: its content does not match the "
            "ciphertext checksum recorded at upload"
        )
    if expected_sha256 is not None and recorded != expected_sha256:
        raise VerifyFailed(f"{key} differs from what was uploaded (ciphertext SHA-256)")
    return metadata, seconds


@dataclass(frozen=True)
class FetchedBackup:
    plaintext: Path
    meta: dict[str, Any]
    download_seconds: float
    decrypt_seconds: float


def fetch_and_decrypt(store_url: str, key: str, directory: Path) -> FetchedBackup:
    """Download and check `key`, decrypt it with the operator's identity (hashing as it goes)
    and verify the archive. The plaintext lands in `directory`."""
    identities = load_identities(identity_file())
    cipher = directory / "backup.tar.gz.age"
    metadata, download_seconds = download_checked(store_url, key, cipher)
    started = time.monotonic()
    plain = directory / "backup.tar.gz"
    fd = os.open(plain, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        sink = HashingWriter(out)
        decrypt_to(cipher, sink, identities)
    cipher.unlink()
    if metadata.get("plaintext-sha256") != sink.sha256.hexdigest():
        raise VerifyFailed(f"{key} decrypts to another archive than the one uploaded")
    meta = read_archive(plain).meta
    return FetchedBackup(plain, meta, download_seconds, time.monotonic() - started)


@task(name="verify", timeout_seconds=3600, **RETRY)
def verify_task(store_url: str, key: str, expected: dict[str, Any]) -> dict[str, Any]:
    """Download, check the ciphertext checksum, decrypt, check archive, meta and snapshot."""
    started = time.monotonic()
    identities = load_identities(identity_file())
    with tempfile.TemporaryDirectory(prefix="jaco-verify-") as tmp:
        cipher = Path(tmp) / "backup.tar.gz.age"
        _, download_seconds = download_checked(
            store_url, key, cipher, expected["ciphertext_sha256"]
        )
        plain_sha, meta = decrypt_and_read_archive(cipher, identities)
    if plain_sha != expected["plaintext_sha256"]:
        raise VerifyFailed(f"{key} decrypts to another archive than was taken")
    for field in ("cluster_id", "snapshot_index", "snapshot_sha256", "state_digest"):
        if meta[field] != expected["meta"][field]:
            raise VerifyFailed(f"{key}'s meta.json has another {field} than was taken")
    return {"key": key, "seconds": time.monotonic() - started, "download_seconds": download_seconds}


@task(name="prune", timeout_seconds=900, **RETRY)
def prune_task(
    store_url: str, prefix: str, policy: RetentionPolicy, protect: str
) -> dict[str, Any]:
    """Apply the retention policy to one store; never touches `protect` or locked objects."""
    store = open_store(store_url)
    objects = list(store.list(prefix))
    backups = [b for b in (parse_key(o.key) for o in objects) if b is not None]
    keep = to_keep(backups, policy) | {protect}
    candidates = sorted(b.key for b in backups if b.key not in keep)
    locked = {key for key in candidates if store.is_locked(key)}  # asked only where it matters
    doomed = [key for key in candidates if key not in locked]
    if not policy.dry_run:
        for key in doomed:
            store.delete(key)
    get_run_logger().info(
        "%s: %s %d backups, kept %d, %d under object lock",
        store.name,
        "would delete" if policy.dry_run else "deleted",
        len(doomed),
        len(backups) - len(doomed),
        len(locked),
    )
    return {
        "store": store.name,
        "deleted": doomed,
        "kept": sorted(keep & {b.key for b in backups}),
        "locked": sorted(locked),
        "dry_run": policy.dry_run,
    }
