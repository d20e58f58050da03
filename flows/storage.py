"""Where encrypted backups are kept: one small interface, an S3 and a local-directory backend.

Like restic's backends, the pipeline does not care where bytes go. Keys are '/'-separated;
objects carry string metadata. S3 uses the standard AWS configuration unless the cluster's
`S3Settings` name an endpoint, profile or credential references, and multipart uploads with
per-part checksums; an upload either completes whole or leaves nothing (s3transfer aborts the
multipart upload on failure; `sweep_uploads` removes those of a worker that died). Every error
is a StorageError that says whether a retry could help.
"""

from __future__ import annotations

import builtins
import datetime as dt
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from flows.download import Download, Resuming
from flows.errors import StorageError
from flows.s3client import _s3_client, _s3_error
from flows.secrets import S3Settings
from jaco.public import WriteBehind, private_output, sweep_partials, write_private

CHUNK = 1024 * 1024
DOWNLOAD_QUEUE = 16  # chunks of 256 KiB a download holds before they are written


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    modified: dt.datetime
    tag: str = ""  # changes whenever the object is written again; "": none (always read)


class BackupStore(Protocol):
    name: str
    location: str  # the name, and where it is served from (one bucket name, many endpoints)

    def put(self, key: str, path: Path, metadata: dict[str, str]) -> None: ...
    def get(self, key: str, path: Path) -> dict[str, str]: ...
    def open(self, key: str) -> Download: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes | None: ...
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> Iterator[StoredObject]: ...
    def is_locked(self, key: str) -> bool: ...
    def exists(self, key: str) -> bool: ...
    def sweep(self, prefix: str) -> builtins.list[str]: ...


class S3Store:
    def __init__(
        self,
        bucket: str,
        settings: S3Settings | None = None,
        connect_timeout: float = 5,
        read_timeout: float = 60,
    ) -> None:
        from boto3.s3.transfer import TransferConfig

        self.bucket = bucket
        self.name = f"s3://{bucket}"
        try:
            self.client = _s3_client(settings or S3Settings(), connect_timeout, read_timeout)
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001 - a missing profile, a malformed endpoint
            raise StorageError(f"S3 client for {self.name}: {exc}", retryable=False) from None
        self.location = f"{self.client.meta.endpoint_url} {self.name}"
        # boto3's defaults (8 MiB parts, 10 threads) unless JACO_S3_PART_MIB says otherwise:
        # measured in bench/, leaner settings were slower than the reference. A download's
        # queue of received chunks waiting for the file is 16 (4 MiB), not 100: the same
        # speed from 64 MB to 2 GiB, a peak 26 MiB above the process's instead of 54.
        part = int(float(os.environ.get("JACO_S3_PART_MIB", "8")) * 1024 * 1024)
        self.transfer = TransferConfig(
            multipart_threshold=part, multipart_chunksize=part, max_io_queue=DOWNLOAD_QUEUE
        )

    def put(self, key: str, path: Path, metadata: dict[str, str]) -> None:
        try:
            self.client.upload_file(
                str(path),
                self.bucket,
                key,
                Config=self.transfer,
                # Each part carries boto3's default CRC32 checksum, checked by the server; the
                # object as a whole is checked by verify against its recorded SHA-256.
                ExtraArgs={"Metadata": metadata, "ContentType": "application/octet-stream"},
            )
        except Exception as exc:  # noqa: BLE001 - boto3 raises many types; classify them
            raise _s3_error(exc, f"upload of {key}") from None

    def get(self, key: str, path: Path) -> dict[str, str]:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
            self.client.download_file(self.bucket, key, str(path), Config=self.transfer)
        except Exception as exc:  # noqa: BLE001
            raise _s3_error(exc, f"download of {key}") from None
        return dict(head.get("Metadata", {}))

    def open(self, key: str) -> Download:
        """`key` read in order as it arrives (verify decrypts it, the drill feeds it to its
        sandbox): one GET, resumed from where it stopped (a Range GET) if it is cut."""
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            raise _s3_error(exc, f"download of {key}") from None

        def reopen(at: int) -> Any:  # the rest of the same object (its ETag), or an error
            rest = f"bytes={at}-"
            return self.client.get_object(
                Bucket=self.bucket, Key=key, Range=rest, IfMatch=reply["ETag"]
            )["Body"]

        body = Resuming(reply["Body"], reopen, lambda exc: _s3_error(exc, f"download of {key}"))
        metadata = dict(reply.get("Metadata", {}))
        return Download(key, metadata, reply["ContentLength"], iter(body), body.close)

    def put_bytes(self, key: str, data: bytes) -> None:
        """A small object in one PUT (atomic in S3: readers see the old one or the new one)."""
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType="application/json"
            )
        except Exception as exc:  # noqa: BLE001
            raise _s3_error(exc, f"write of {key}") from None

    def get_bytes(self, key: str) -> bytes | None:
        """A small object's content, or None if there is none."""
        try:
            return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except Exception as exc:  # noqa: BLE001
            error = _s3_error(exc, f"read of {key}")
            if "NoSuchKey" in error.message or " 404" in error.message:
                return None
            raise error from None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            raise _s3_error(exc, f"delete of {key}") from None

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            error = _s3_error(exc, f"head of {key}")
            if "NoSuchKey" in error.message or " 404" in error.message:
                return False
            raise error from None
        return True

    def is_locked(self, key: str) -> bool:
        """Under S3 object lock (retention not yet expired, or a legal hold)?"""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except Exception as exc:  # noqa: BLE001
            raise _s3_error(exc, f"head of {key}") from None
        until = head.get("ObjectLockRetainUntilDate")
        if until is not None and until > dt.datetime.now(dt.UTC):
            return True
        return bool(head.get("ObjectLockLegalHoldStatus") == "ON")

    def list(self, prefix: str) -> Iterator[StoredObject]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    etag = obj.get("ETag", "")  # none: never served from memory
                    tag = etag and f"{etag} {obj['Size']} {obj['LastModified'].isoformat()}"
                    yield StoredObject(obj["Key"], obj["Size"], obj["LastModified"], tag)
        except StorageError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _s3_error(exc, f"listing of {prefix}") from None

    def sweep(self, prefix: str) -> builtins.list[str]:
        """Abort the multipart uploads under `prefix` that a dead run left (each holds parts
        the bucket bills for; none is ever completed). Call it only while holding the
        cluster's lock: then no live upload can be under `prefix`."""
        swept = []
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for upload in page.get("Uploads", []):
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    swept.append(f"an unfinished upload of s3://{self.bucket}/{upload['Key']}")
        except Exception as exc:  # noqa: BLE001
            raise _s3_error(exc, f"listing of unfinished uploads under {prefix}") from None
        return swept


class LocalStore:
    """A directory with the same key layout; metadata in a sidecar `.meta` file."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.name = self.location = str(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise StorageError(f"key {key!r} escapes {self.root}", retryable=False)
        return path

    def put(self, key: str, path: Path, metadata: dict[str, str]) -> None:
        """The metadata sidecar, then the object, each written atomically and durably: a
        crash leaves the object whole or absent (a lone sidecar is never listed)."""
        target = self._path(key)
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_private(_sidecar(target), json.dumps(metadata, sort_keys=True).encode())
            with open(path, "rb") as source, private_output(target) as out:
                # On disk a window at a time, and gone from memory once there: the copy is
                # read again only by a restore, maybe days later (jaco.files.WriteBehind)
                behind = WriteBehind(out)
                while chunk := source.read(CHUNK):
                    out.write(chunk)
                    out.flush()
                    behind.wrote()
        except OSError as exc:
            _sidecar(target).unlink(missing_ok=True)
            raise StorageError(
                f"local copy to {target} failed: {exc.strerror}", retryable=exc.errno != 28
            ) from None

    def get(self, key: str, path: Path) -> dict[str, str]:
        source = self._path(key)
        try:
            metadata = json.loads(_sidecar(source).read_text())
            shutil.copyfile(source, path)
        except FileNotFoundError:
            raise StorageError(f"{key} is not in {self.root}", retryable=False) from None
        except (OSError, ValueError) as exc:
            raise StorageError(f"reading {key} from {self.root} failed: {exc}") from None
        return dict(metadata)

    def open(self, key: str) -> Download:
        source = self._path(key)
        try:
            metadata = json.loads(_sidecar(source).read_text())
            handle = open(source, "rb")  # noqa: SIM115 - closed by the Download
        except FileNotFoundError:
            raise StorageError(f"{key} is not in {self.root}", retryable=False) from None
        except (OSError, ValueError) as exc:
            raise StorageError(f"reading {key} from {self.root} failed: {exc}") from None

        def chunks() -> Iterator[bytes]:
            with handle:
                try:
                    while chunk := handle.read(CHUNK):
                        yield chunk
                except (OSError, ValueError) as exc:  # ValueError: closed while read
                    raise StorageError(f"reading {key} from {self.root} failed: {exc}") from None

        size = os.fstat(handle.fileno()).st_size
        return Download(key, dict(metadata), size, chunks(), handle.close)

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            write_private(target, data)
        except OSError as exc:
            raise StorageError(
                f"writing {target} failed: {exc.strerror}", retryable=exc.errno != 28
            ) from None

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"reading {key} from {self.root} failed: {exc}") from None

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        _sidecar(path).unlink(missing_ok=True)

    def is_locked(self, key: str) -> bool:
        return False  # a directory has no object lock

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> Iterator[StoredObject]:
        """Every object whose key starts with `prefix` (not sidecars, not temp files)."""
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        for path in sorted(base.rglob("*")):
            if not path.is_file() or path.name.startswith(".") or path.name.endswith(".meta"):
                continue
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix):
                stat = path.stat()
                modified = dt.datetime.fromtimestamp(stat.st_mtime, dt.UTC)
                # No tag: a replaced file can come back with the inode, size and (on a coarse
                # clock) mtime of the one before, and a local read costs next to nothing.
                yield StoredObject(key, stat.st_size, modified)

    def sweep(self, prefix: str) -> builtins.list[str]:
        """Remove the temp files of copies a dead run was writing under `prefix`."""
        base = self.root / prefix
        if not base.is_dir():
            return []
        swept: list[Path] = []
        for directory in [base, *(p for p in base.rglob("*") if p.is_dir())]:
            swept += sweep_partials(directory)
        return [f"an unfinished local copy {p}" for p in swept]


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".meta")


def open_store(url: str, s3: S3Settings | None = None) -> BackupStore:
    """`s3://BUCKET` or `file:///DIR` (a plain path also means a directory)."""
    if url.startswith("s3://"):
        bucket = url[len("s3://") :].strip("/")
        if not bucket or "/" in bucket:
            raise StorageError(f"invalid S3 store {url!r}: use s3://BUCKET", retryable=False)
        return S3Store(bucket, s3)
    path = url[len("file://") :] if url.startswith("file://") else url
    return LocalStore(Path(path))
