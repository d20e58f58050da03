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
from jaco.archive import ArchiveError, read_archive
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
    """age-encrypt to all recipients, hashing plaintext and ciphertext on the way through.

    That the stored object decrypts, with the operator's own identity, to exactly this
    plaintext (SHA-256) is what `verify` proves after the upload; a backup that fails it is
    deleted from every store. (Decrypting here as well, with a throwaway key, proved nothing
    more and cost a second pass over the file.)
    """
    started = time.monotonic()
    source = Path(archive)
    target = source.with_name(source.name + ".age")
    plain_sha, cipher_sha = encrypt_file(source, target, recipients)
    return {
        "path": str(target),
        "plaintext_sha256": plain_sha,
        "ciphertext_sha256": cipher_sha,
        "size": target.stat().st_size,
        "seconds": time.monotonic() - started,
    }


@task(name="upload", timeout_seconds=3600, **RETRY)
def upload_task(store_url: str, path: str, key: str, metadata: dict[str, str]) -> dict[str, Any]:
    started = time.monotonic()
    store = open_store(store_url)
    store.put(key, Path(path), metadata)
    get_run_logger().info("stored %s in %s", key, store.name)
    return {"store": store.name, "key": key, "seconds": time.monotonic() - started}


def download(store_url: str, key: str, cipher: Path) -> tuple[dict[str, str], float]:
    """Download `key` to `cipher` (boto3's parallel ranged GETs); it must carry the ciphertext
    checksum recorded at upload. Returns the metadata and the seconds taken."""
    store = open_store(store_url)
    started = time.monotonic()
    metadata = store.get(key, cipher)
    seconds = time.monotonic() - started
    if "ciphertext-sha256" not in metadata:
        raise VerifyFailed(f"{key} in {store.name} carries no ciphertext checksum")
    return metadata, seconds


def check_ciphertext(
    key: str, actual: str, metadata: dict[str, str], expected: str | None = None
) -> None:
    """The downloaded ciphertext's SHA-256 (hashed while decrypting) against the one recorded
    at upload, and against `expected` when the caller knows what was uploaded."""
    if actual != metadata["ciphertext-sha256"]:
        raise VerifyFailed(
            f"{key} is damaged: its content does not match the ciphertext checksum recorded "
            "at upload"
        )
    if expected is not None and actual != expected:
        raise VerifyFailed(f"{key} differs from what was uploaded (ciphertext SHA-256)")


@dataclass(frozen=True)
class FetchedBackup:
    plaintext: Path
    meta: dict[str, Any]
    download_seconds: float
    decrypt_seconds: float


def fetch_and_decrypt(store_url: str, key: str, directory: Path) -> FetchedBackup:
    """Download and check `key`, decrypt it with the operator's identity (hashing both sides
    as it goes) and verify the archive. The plaintext lands in `directory`."""
    identities = load_identities(identity_file())
    cipher = directory / "backup.tar.gz.age"
    metadata, download_seconds = download(store_url, key, cipher)
    started = time.monotonic()
    plain = directory / "backup.tar.gz"
    fd = os.open(plain, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        sink = HashingWriter(out)
        try:
            cipher_sha = decrypt_to(cipher, sink, identities)
        except VerifyFailed:
            check_ciphertext(key, sha256_file(cipher), metadata)  # damage, if that is why
            raise
    cipher.unlink()
    check_ciphertext(key, cipher_sha, metadata)
    if metadata.get("plaintext-sha256") != sink.hexdigest():
        raise VerifyFailed(f"{key} decrypts to another archive than the one uploaded")
    meta = read_archive(plain).meta
    return FetchedBackup(plain, meta, download_seconds, time.monotonic() - started)


@task(name="verify", timeout_seconds=3600, **RETRY)
def verify_task(store_url: str, key: str, expected: dict[str, Any]) -> dict[str, Any]:
    """Download, decrypt straight into the archive reader, and check on the way: ciphertext
    and plaintext checksums, archive structure, meta.json and the snapshot's SHA-256."""
    started = time.monotonic()
    identities = load_identities(identity_file())
    with tempfile.TemporaryDirectory(prefix="jaco-verify-") as tmp:
        cipher = Path(tmp) / "backup.tar.gz.age"
        metadata, download_seconds = download(store_url, key, cipher)
        try:
            cipher_sha, plain_sha, meta = decrypt_and_read_archive(cipher, identities)
        except (VerifyFailed, ArchiveError):
            check_ciphertext(key, sha256_file(cipher), metadata, expected["ciphertext_sha256"])
            raise
    check_ciphertext(key, cipher_sha, metadata, expected["ciphertext_sha256"])
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
