"""The S3 client of a store, and what its errors mean (flows.storage)."""

from __future__ import annotations

import functools
import threading
from typing import Any

from flows.errors import StorageError
from flows.secrets import S3Settings, resolve

_PERMANENT_S3_CODES = {
    "AccessDenied",
    "NoSuchBucket",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccountProblem",
    "InvalidBucketName",
    "NoSuchKey",
    "404",
    "403",
}


def _s3_error(exc: BaseException, what: str) -> StorageError:
    from botocore.exceptions import (
        ClientError,
        NoCredentialsError,
        PartialCredentialsError,
        ProfileNotFound,
    )

    if isinstance(exc, NoCredentialsError | PartialCredentialsError | ProfileNotFound):
        return StorageError(f"S3 {what}: {exc}", retryable=False)  # configuration, not weather

    # upload_file wraps S3's answer in S3UploadFailedError (the ClientError is its context):
    # without unwrapping, a refusal for good (bad credentials) looked transient and was retried.
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ClientError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        exc = cause
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        message = exc.response.get("Error", {}).get("Message", "") or code
        return StorageError(
            f"S3 {what}: {code} {message}".strip(), retryable=code not in _PERMANENT_S3_CODES
        )
    return StorageError(f"S3 {what}: {exc}")


def _s3_client(settings: S3Settings, connect_timeout: float, read_timeout: float) -> Any:
    import boto3
    from botocore.config import Config

    keys: dict[str, str] = {}
    if settings.access_key_id and settings.secret_access_key:
        keys = {
            "aws_access_key_id": resolve(settings.access_key_id, "the S3 access key id"),
            "aws_secret_access_key": resolve(settings.secret_access_key, "the S3 secret key"),
        }
    # A session per store (boto3's default one caches credentials for the whole process, and
    # one worker serves clusters with different credentials), all sharing one loader of the
    # service's model: 9 ms and 0.5 MiB a store instead of 140 ms and 12 MiB (the metrics
    # endpoint keeps a store per bucket and settings; a flow opens several).
    with _LOADER_LOCK:
        session = boto3.session.Session(
            profile_name=settings.profile, botocore_session=_botocore_session(), **keys
        )
        paths = _loader().search_paths  # each boto3 session adds its data directory again
        paths[:] = list(dict.fromkeys(paths))
    return session.client(
        "s3",
        endpoint_url=settings.endpoint,
        region_name=settings.region,
        config=Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
    )


_LOADER_LOCK = threading.Lock()


@functools.cache
def _loader() -> Any:
    """botocore's loader of service models, the part of a session that costs (the S3 model
    parsed: 12 MiB): one for the process, made without a session (whose profile, perhaps one
    AWS_PROFILE names and a store's settings override, is no concern of the loader's)."""
    import botocore.loaders

    return botocore.loaders.create_loader()


def _botocore_session() -> Any:
    import botocore.session

    session = botocore.session.Session()
    session.register_component("data_loader", _loader())
    return session
