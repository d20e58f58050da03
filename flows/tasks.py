"""The pipeline's steps as Prefect tasks; flows call them through `retrying(...)`.

Tasks pass paths and object keys, never large payloads. Each bounds the call it makes (gRPC
deadline, boto3 timeouts, Prefect's `timeout_seconds`), and `retrying` adds retries with
exponential backoff and jitter that skip errors whose `retryable` is false (bad token,
permission denied, corrupt data). The retry settings are read from the environment when a
flow runs, not when this module is imported. Secrets come from the environment
(`JACO_TOKEN`, the AWS chain, `JACO_AGE_IDENTITY_FILE`), never from parameters, logs or
artifacts.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff

from flows.errors import PipelineError, VerifyFailed
from flows.retention import RetentionPolicy, parse_key, to_keep
from flows.storage import open_store
from jaco.public import (
    ArchiveError,
    BackupMeta,
    DecryptionFailed,
    HashingWriter,
    InvalidArgument,
    Unavailable,
    create_private,
    decrypt_and_read_archive,
    decrypt_to,
    encrypt_file,
    is_retryable,
    load_identities,
    open_client,
    read_archive,
    sha256_file,
    take_backup,
)

T = TypeVar("T", bound=Task[Any, Any])


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry_condition_fn: retry only what a retry can fix."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classify whatever the task raised
        return is_retryable(exc)
    return True


def retrying(step: T) -> T:
    """`step` with the pipeline's retry policy (JACO_TASK_RETRIES, default 4;
    JACO_RETRY_BACKOFF seconds, default 2, doubling, with jitter)."""
    return step.with_options(  # type: ignore[return-value]
        retries=int(os.environ.get("JACO_TASK_RETRIES", "4")),
        retry_delay_seconds=exponential_backoff(
            backoff_factor=float(os.environ.get("JACO_RETRY_BACKOFF", "2"))
        ),
        retry_jitter_factor=0.5,
        retry_condition_fn=retry_transient,
    )


def identity_file() -> Path:
    path = os.environ.get("JACO_AGE_IDENTITY_FILE")
    if not path:
        raise PipelineError(
            "set JACO_AGE_IDENTITY_FILE to the age identity used to verify "
            "backups (it is never passed as a parameter)"
        )
    return Path(path)


def backup_key(prefix: str, meta: BackupMeta) -> str:
    day = meta.taken_on
    return (
        f"{prefix.strip('/')}/{meta.cluster_id}/{day:%Y/%m/%d}/"
        f"cluster-{day.isoformat()}-{meta.snapshot_index}.tar.gz.age"
    )


@dataclass(frozen=True)
class Taken:
    path: Path
    meta: BackupMeta
    size: int
    server: str
    seconds: float


@dataclass(frozen=True)
class Encrypted:
    path: Path
    plaintext_sha256: str
    ciphertext_sha256: str
    size: int
    seconds: float


@task(name="take-backup", timeout_seconds=900, cache_policy=NO_CACHE)
def take_backup_task(servers: list[str], workdir: str, timeout: float) -> Taken:
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
            result.meta.snapshot_index,
            server,
            result.size,
            seconds,
        )
        return Taken(output, result.meta, result.size, server, seconds)
    assert last is not None
    raise last


@task(name="encrypt", timeout_seconds=1800, cache_policy=NO_CACHE)
def encrypt_task(archive: Path, recipients: list[str]) -> Encrypted:
    """age-encrypt to all recipients, hashing plaintext and ciphertext on the way through.

    That the stored object decrypts, with the operator's own identity, to exactly this
    plaintext (SHA-256) is what `verify` proves after the upload; a backup that fails it is
    deleted from every store. (Decrypting here as well, with a throwaway key, proved nothing
    more and cost a second pass over the file.)
    """
    started = time.monotonic()
    target = archive.with_name(archive.name + ".age")
    plain_sha, cipher_sha = encrypt_file(archive, target, recipients)
    return Encrypted(
        target, plain_sha, cipher_sha, target.stat().st_size, time.monotonic() - started
    )


@task(name="upload", timeout_seconds=3600, cache_policy=NO_CACHE)
def upload_task(store_url: str, path: Path, key: str, metadata: dict[str, str]) -> float:
    """Store the encrypted archive under `key`; returns the seconds it took."""
    started = time.monotonic()
    store = open_store(store_url)
    store.put(key, path, metadata)
    get_run_logger().info("stored %s in %s", key, store.name)
    return time.monotonic() - started


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
    meta: BackupMeta
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
    with create_private(plain) as out:
        sink = HashingWriter(out)
        try:
            cipher_sha = decrypt_to(cipher, sink, identities)
        except DecryptionFailed:
            check_ciphertext(key, sha256_file(cipher), metadata)  # damage, if that is why
            raise
    cipher.unlink()
    check_ciphertext(key, cipher_sha, metadata)
    if metadata.get("plaintext-sha256") != sink.hexdigest():
        raise VerifyFailed(f"{key} decrypts to another archive than the one uploaded")
    meta = read_archive(plain).meta
    return FetchedBackup(plain, meta, download_seconds, time.monotonic() - started)


@task(name="verify", timeout_seconds=3600, cache_policy=NO_CACHE)
def verify_task(store_url: str, key: str, taken: BackupMeta, encrypted: Encrypted) -> float:
    """Download, decrypt straight into the archive reader, and check on the way: ciphertext
    and plaintext checksums, archive structure, meta.json and the snapshot's SHA-256.
    Returns the seconds the download took."""
    identities = load_identities(identity_file())
    with tempfile.TemporaryDirectory(prefix="jaco-verify-") as tmp:
        cipher = Path(tmp) / "backup.tar.gz.age"
        metadata, download_seconds = download(store_url, key, cipher)
        try:
            cipher_sha, plain_sha, meta = decrypt_and_read_archive(cipher, identities)
        except (DecryptionFailed, ArchiveError):
            check_ciphertext(key, sha256_file(cipher), metadata, encrypted.ciphertext_sha256)
            raise
    check_ciphertext(key, cipher_sha, metadata, encrypted.ciphertext_sha256)
    if plain_sha != encrypted.plaintext_sha256:
        raise VerifyFailed(f"{key} decrypts to another archive than was taken")
    for field in ("cluster_id", "snapshot_index", "snapshot_sha256", "state_digest"):
        if getattr(meta, field) != getattr(taken, field):
            raise VerifyFailed(f"{key}'s meta.json has another {field} than was taken")
    return download_seconds


@task(name="find-backup", cache_policy=NO_CACHE)
def find_backup_task(store_url: str, prefix: str) -> str:
    backups = [b for b in (parse_key(o.key) for o in open_store(store_url).list(prefix)) if b]
    if not backups:
        raise PipelineError(f"no backup under {store_url}/{prefix}")
    return max(backups, key=lambda b: (b.day, b.index)).key


@task(name="prune", timeout_seconds=900, cache_policy=NO_CACHE)
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
