"""Pipeline errors. Like jaco's own, each says where it is raised whether a retry could help
(`retryable`); Prefect retries a task only then (flows.tasks.retry_transient).

Everything here pickles (Prefect moves exceptions between processes; gRPC's own errors do
not pickle).
"""

from __future__ import annotations

from typing import Any

from jaco.public import JacoError


class PipelineError(JacoError):
    """A step failed for a reason a retry will not fix."""

    retryable = False


class VerifyFailed(PipelineError):
    """The stored backup is not what was taken: a damaged object, another archive or meta.json."""


class DrillFailed(PipelineError):
    """A restore drill did not prove the backup restorable."""


class StorageError(JacoError):
    """The object store failed; `retryable` says whether trying again could help."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.message, self.retryable))
