"""The exceptions jaco raises for expected failures.

Each carries a message an operator can act on and the exit code the CLI uses; anything
that is not a JacoError is a bug and is allowed to show a traceback.
"""

from __future__ import annotations


class JacoError(Exception):
    """An expected failure with an operator-facing message."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(JacoError):
    exit_code = 2


class NotFound(JacoError):
    exit_code = 3


class AlreadyExists(JacoError):
    exit_code = 4


class Unauthenticated(JacoError):
    exit_code = 5


class PermissionDenied(JacoError):
    exit_code = 6


class Unavailable(JacoError):
    """The server or its store cannot answer now; trying again later may work."""

    exit_code = 7


class Conflict(JacoError):
    """A concurrent change won; the operation did not happen."""

    exit_code = 8


class DataDirError(JacoError):
    """The node's data dir is not in the state the command needs (empty, initialised, ...)."""

    exit_code = 9


class DaemonRunning(JacoError):
    exit_code = 10


class TrustError(JacoError):
    """The server could not be authenticated (wrong CA, fingerprint mismatch)."""

    exit_code = 11


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
}


def grpc_code_name(error: JacoError) -> str:
    for cls in type(error).__mro__:
        if cls in GRPC_CODES:
            return GRPC_CODES[cls]
    return "FAILED_PRECONDITION"


def from_grpc_code(code_name: str, message: str) -> JacoError:
    for cls, name in GRPC_CODES.items():
        if name == code_name:
            return cls(message)
    if code_name == "DEADLINE_EXCEEDED":
        return Unavailable(f"the server did not answer in time: {message}")
    return JacoError(message)
