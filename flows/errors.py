"""Pipeline errors, split by what a retry can do about them.

Prefect retries a task when `is_transient` says so; a bad token, a permission problem or a
corrupt archive fails the run at once with its message. Everything here pickles (Prefect
moves exceptions between processes; gRPC's own errors do not pickle).
"""

from __future__ import annotations

from typing import Any

from jaco.archive import ArchiveError, IncompatibleVersion
from jaco.errors import (
    InvalidArgument,
    JacoError,
    NotFound,
    PermissionDenied,
    TrustError,
    Unauthenticated,
)


class PipelineError(JacoError):
    """A step failed for a reason a retry will not fix."""


class VerifyFailed(PipelineError):
    """The stored backup is not what was taken: wrong key, damaged object, bad archive."""


class StorageError(JacoError):
    """The object store failed; `permanent` says whether a retry could help."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.permanent))


PERMANENT: tuple[type[BaseException], ...] = (
    Unauthenticated,
    PermissionDenied,
    InvalidArgument,
    NotFound,
    TrustError,
    ArchiveError,
    IncompatibleVersion,
    PipelineError,
)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, StorageError):
        return not exc.permanent
    return not isinstance(exc, PERMANENT)
