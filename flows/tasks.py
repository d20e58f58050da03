"""The pipeline's steps as Prefect tasks; flows call them through `retrying(...)`.

Tasks pass paths and object keys, never large payloads. Each bounds the call it makes (gRPC
deadline and keepalive, boto3 timeouts) and the whole run is bounded by its flow's timeout
(tasks carry none of their own: Prefect mistakes a run's timeout firing inside a task with a
timeout for the task's, and retries it), and `retrying` adds retries with
exponential backoff and jitter that skip errors whose `retryable` is false (bad token,
permission denied, corrupt data). The retry settings are read from the environment when a
flow runs, not when this module is imported. Secrets are read inside the task that needs
them, from the cluster's references (flows.secrets); never from parameters, never into logs
or artifacts.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from prefect.tasks import exponential_backoff

from flows.catalog import Catalog, stem_of
from flows.errors import VerifyFailed
from flows.params import Where
from flows.records import backups_root, newest_verified_in
from flows.retention import RetentionPolicy, parse_key, to_keep
from flows.secrets import ClusterSecrets, S3Settings
from flows.storage import BackupStore, open_store
from flows.stream import segments_prefix, segments_root
from jaco.public import (
    BackupMeta,
    ChunkReader,
    InvalidArgument,
    JacoError,
    Unavailable,
    decrypt_and_read_archive,
    encrypt_file,
    is_retryable,
    open_client,
    parse_identities,
    take_backup,
)

T = TypeVar("T", bound=Task[Any, Any])

# What is imported by now (Prefect, its dependencies, jaco) is a heap of long-lived objects that
# every full collection would scan again in the process that imports this module (a flow's run,
# the serving process, the stream runner; a test worker too): making an S3 client (botocore's
# models) took 0.15 s instead of 0.07 (docs/benchmarks.md, stop 52). Frozen, they are left out
# of collections; what is made after is collected as ever.
gc.freeze()


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect's retry_condition_fn: retry only what a retry can fix. Never a timeout: the
    run's own timeout reaches a task as a cancellation, and retrying it would swallow it."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - classify whatever the task raised
        if isinstance(exc, TimeoutError) or "Timeout" in type(exc).__name__:
            return False
        return is_retryable(exc)
    except BaseException:  # noqa: BLE001 - a cancellation
        return False
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


def backup_key(prefix: str, meta: BackupMeta) -> str:
    day = meta.taken_on
    return (
        f"{backups_root(prefix, meta.cluster_id)}{day:%Y/%m/%d}/"
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


@task(name="take-backup", cache_policy=NO_CACHE)
def take_backup_task(
    servers: list[str], workdir: Path, timeout: float, secrets: ClusterSecrets
) -> Taken:
    """The Backup RPC into a local archive; on UNAVAILABLE the next server is tried."""
    logger = get_run_logger()
    if not servers:
        raise InvalidArgument("no API servers given")
    token = secrets.read_token()
    last: Exception | None = None
    for server in servers:
        output = workdir / f"backup-{time.monotonic_ns()}.tar.gz"
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


@task(name="encrypt", cache_policy=NO_CACHE)
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


def upload(store_url: str, s3: S3Settings, path: Path, key: str, metadata: dict[str, str]) -> float:
    """Store the encrypted archive under `key`; returns the seconds it took."""
    started = time.monotonic()
    store = open_store(store_url, s3)
    store.put(key, path, metadata)
    get_run_logger().info("stored %s in %s", key, store.name)
    return time.monotonic() - started


# Two tasks over one function: the S3 upload runs while the local copy is written, and each
# shows in the UI under its own name.
upload_task = task(name="upload", cache_policy=NO_CACHE)(upload)
local_copy_task = task(name="local-copy", cache_policy=NO_CACHE)(upload)


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


@task(name="verify", cache_policy=NO_CACHE)
def verify_task(where: Where, key: str, taken: BackupMeta, encrypted: Encrypted) -> float:
    """Read the stored object as it downloads (one GET, nothing written), decrypt it straight
    into the archive reader, and check on the way: the ciphertext's size and checksums, the
    plaintext's, the archive's structure, meta.json and the snapshot's SHA-256. A store that
    fails midway is raised as such (retried), not as damage. Returns the seconds spent
    waiting for the store."""
    identities = parse_identities(where.secrets.read_identity(), "the verify identity")
    with contextlib.closing(open_store(where.s3_url, where.s3).open(key)) as backup:
        if "ciphertext-sha256" not in backup.metadata:
            raise VerifyFailed(f"{key} in {where.s3_url} carries no ciphertext checksum")
        if backup.size != encrypted.size:
            raise VerifyFailed(
                f"{key} is damaged: {backup.size} bytes stored, {encrypted.size} uploaded"
            )
        broken: JacoError | None = None
        try:
            # closing: a decrypter that failed leaves the download mid-object, drained below
            with contextlib.closing(iter(backup)) as chunks:
                plain_sha, meta = decrypt_and_read_archive(
                    ChunkReader(chunks), identities, key.rsplit("/", 1)[-1]
                )
        except JacoError as exc:  # a bad key or archive, or a decrypter that died
            broken = exc  # raised after the checksum, which names damage first
        except Exception:
            if backup.error is not None:
                raise backup.error from None
            raise
        backup.drain()  # the checksum needs it all (age need not read past its last chunk)
        if backup.error is not None:  # the store failed: that explains the rest
            raise backup.error from None
    check_ciphertext(key, backup.sha256, backup.metadata, encrypted.ciphertext_sha256)
    if broken is not None:
        raise broken
    if plain_sha != encrypted.plaintext_sha256:
        raise VerifyFailed(f"{key} decrypts to another archive than was taken")
    for field in ("cluster_id", "snapshot_index", "snapshot_sha256", "state_digest"):
        if getattr(meta, field) != getattr(taken, field):
            raise VerifyFailed(f"{key}'s meta.json has another {field} than was taken")
    return backup.seconds


@task(name="prune", cache_policy=NO_CACHE)
def prune_task(
    where: Where, store_url: str, cluster_id: str, policy: RetentionPolicy, protect: str | None
) -> dict[str, Any]:
    """Apply the retention policy to one store; never touches `protect` (the backup flow's:
    the backup it has just verified, the newest verified by then) or locked objects. Without
    `protect` (the prune flow), never the newest backup nor the newest still stored that its
    catalog records verified (newer unverified ones, kept by a verify that could not finish,
    must not push it out). The catalog of that store forgets what was deleted, and the change
    segments of backups no longer there go too (prune_chains)."""
    store = open_store(store_url, where.s3)
    prefix = backups_root(where.prefix, cluster_id)
    objects = list(store.list(prefix))
    backups = [b for b in (parse_key(o.key) for o in objects) if b is not None]
    if not backups:
        return {"store": store.name, "deleted": [], "kept": [], "locked": [], "dry_run": True,
                "segments_deleted": 0, "damaged_records": []}  # fmt: skip
    catalog = Catalog(store, where.prefix, where.cluster)
    damaged: list[str] = []
    records = catalog.records(damaged)  # a GET each: which backups verify proved
    keep = to_keep(backups, policy, {r.key for r in records if r.verified})
    keep |= {b.key for b in backups if catalog.record_key(b.key) in damaged}  # verified?
    for key in damaged:
        get_run_logger().warning("the catalog record %s is damaged: its backup is kept", key)
    if protect is not None:
        keep.add(protect)
    else:
        keep.add(max(backups, key=lambda b: (b.day, b.index)).key)
        verified = newest_verified_in(records, {b.key for b in backups}.__contains__)[0]
        keep |= {verified.key} if verified else set()
    candidates = sorted(b.key for b in backups if b.key not in keep)
    locked = {key for key in candidates if store.is_locked(key)}  # asked only where it matters
    doomed = [key for key in candidates if key not in locked]
    if not policy.dry_run:
        for key in doomed:
            store.delete(key)
        catalog.forget(doomed)
    remaining = {stem_of(b.key) for b in backups if b.key not in doomed}
    segments = prune_chains(store, where, remaining, policy.dry_run)
    get_run_logger().info(
        "%s: %s %d backups, kept %d, %d under object lock; %d change segments of backups gone",
        store.name,
        "would delete" if policy.dry_run else "deleted",
        len(doomed),
        len(backups) - len(doomed),
        len(locked),
        segments,
    )
    return {
        "store": store.name,
        "deleted": doomed,
        "kept": sorted(keep & {b.key for b in backups}),
        "locked": sorted(locked),
        "dry_run": policy.dry_run,
        "segments_deleted": segments,
        "damaged_records": damaged,
    }


def prune_chains(store: BackupStore, where: Where, remaining: set[str], dry_run: bool) -> int:
    """Delete the change segments (objects, then catalog records) of every chain whose full
    backup is not in this store: pruned now, or by a run that died before getting here. No
    restore can use them without their base. Locked objects stay; returns how many went."""
    catalog = Catalog(store, where.prefix, where.cluster)
    top = segments_root(where.prefix, where.cluster)
    bases = {o.key[len(top) :].split("/", 1)[0] for o in store.list(top)}
    deleted = 0
    for base in sorted(bases - remaining):
        for obj in list(store.list(segments_prefix(where.prefix, where.cluster, base))):
            if not store.is_locked(obj.key):
                deleted += 1
                if not dry_run:
                    store.delete(obj.key)
        if not dry_run:
            catalog.forget_chain(base)
    return deleted
