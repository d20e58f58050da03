"""The exceptions jaco raises for expected failures.

Each carries a message an operator can act on, the exit code the CLI uses, and whether trying
again could help (`retryable`: the pipeline retries only those). Anything that is not a
JacoError is a bug and is allowed to show a traceback.
"""

from __future__ import annotations

from typing import Any


class JacoError(Exception):
    """An expected failure with an operator-facing message."""

    exit_code = 1
    retryable = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefect moves exceptions between processes; keep them picklable with their message.
        return (type(self), (self.message,))


class InvalidArgument(JacoError):
    exit_code = 2
    retryable = False


class NotFound(JacoError):
    exit_code = 3
    retryable = False


class AlreadyExists(JacoError):
    exit_code = 4
    retryable = False


class Unauthenticated(JacoError):
    exit_code = 5
    retryable = False


class PermissionDenied(JacoError):
    exit_code = 6
    retryable = False


class Unavailable(JacoError):
    """The server or its store cannot answer now; trying again later may work."""

    exit_code = 7


class LearnerPending(Unavailable):
    """An earlier node is still catching up as an etcd learner (etcd admits one at a time).
    A join's token is consumed only once its node is added: the same join may be sent again."""


class Conflict(JacoError):
    """A concurrent change won; the operation did not happen."""

    exit_code = 8


class DataDirError(JacoError):
    """The node's data dir is not in the state the command needs (empty, initialised, ...)."""

    exit_code = 9
    retryable = False


class DaemonRunning(JacoError):
    exit_code = 10
    retryable = False


class TrustError(JacoError):
    """The server could not be authenticated (wrong CA, fingerprint mismatch)."""

    exit_code = 11
    retryable = False


class ArchiveError(JacoError):
    """The archive is unreadable, incomplete, tampered with or not a jaco backup."""

    exit_code = 12
    retryable = False


class IncompatibleVersion(JacoError):
    exit_code = 13
    retryable = False


class Compacted(JacoError):
    """The revision asked for is older than etcd's compaction: the changes after it are gone
    from the store's history (a change stream must start again from a new full backup)."""

    exit_code = 15
    retryable = False


class InstallationError(JacoError):
    """This installation of jaco is incomplete (its compiled part is missing): no retry helps,
    a reinstall does."""

    exit_code = 16
    retryable = False


# The gRPC status code each error travels as (by name, so this module needs no gRPC).
GRPC_CODES: dict[type[JacoError], str] = {
    InvalidArgument: "INVALID_ARGUMENT",
    NotFound: "NOT_FOUND",
    AlreadyExists: "ALREADY_EXISTS",
    Unauthenticated: "UNAUTHENTICATED",
    PermissionDenied: "PERMISSION_DENIED",
    Unavailable: "UNAVAILABLE",
    Conflict: "ABORTED",
    DataDirError: "FAILED_PRECONDITION",
    Compacted: "OUT_OF_RANGE",
    InstallationError: "FAILED_PRECONDITION",
}


# The error's class travels too, as trailing metadata, so that the client tells apart errors
# that share a status code, and jacod's own UNAVAILABLE from a transport failure.
ERROR_METADATA = "jaco-error"
BY_NAME: dict[str, type[JacoError]] = {cls.__name__: cls for cls in (*GRPC_CODES, LearnerPending)}


def grpc_code_name(error: JacoError) -> str:
    for cls in type(error).__mro__:
        if cls in GRPC_CODES:
            return GRPC_CODES[cls]
    return "FAILED_PRECONDITION"


def from_grpc_code(code_name: str, message: str, error_name: str = "") -> JacoError:
    named = BY_NAME.get(error_name)
    if named is not None and grpc_code_name(named(message)) == code_name:
        return named(message)
    for cls, name in GRPC_CODES.items():
        if name == code_name:
            return cls(message)
    if code_name == "DEADLINE_EXCEEDED":
        return Unavailable(f"the server did not answer in time: {message}")
    return JacoError(message)


def is_retryable(exc: BaseException) -> bool:
    """Could trying again help? JacoErrors say so themselves; anything else (a dropped
    connection, a timeout from a library) is treated as transient."""
    return bool(getattr(exc, "retryable", True))
