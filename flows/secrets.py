"""Where each cluster's secrets come from: references, never values.

A site configuration names, per cluster, the *source* of its operator token, its age verify
identity, its S3 credentials and its alert webhook:

- `env:NAME`        the value of the environment variable NAME of the process running the flow
- `file:/path`      the content of a file (mode 0600, on the worker)
- `prefect:NAME`    a Prefect Secret block named NAME

Parameters, logs, artifacts and argument lists only ever carry the reference; `resolve` reads
the value inside the task that needs it. So one worker can serve many clusters, each with
its own token (a token pins one cluster's CA) and its own keys.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field

from flows.errors import PipelineError

SecretRef = Annotated[
    str,
    Field(
        pattern=r"^(env:[A-Za-z_][A-Za-z0-9_]*|file:/\S+|prefect:[a-z0-9][a-z0-9-]{0,62})$",
        description="env:NAME, file:/path or prefect:SECRET-BLOCK (never the secret itself)",
    ),
]


def resolve(ref: str, what: str) -> str:
    """The secret `ref` points at; PipelineError (naming the reference, never a value) if it
    cannot be read."""
    kind, _, where = ref.partition(":")
    if kind == "env":
        value = os.environ.get(where, "")
        if not value:
            raise PipelineError(f"{what}: the environment variable {where} is not set")
        return value.strip()
    if kind == "file":
        try:
            value = Path(where).read_text()
        except OSError as exc:
            raise PipelineError(f"{what}: cannot read {where}: {exc.strerror}") from None
        if not value.strip():
            raise PipelineError(f"{what}: {where} is empty")
        return value.strip()
    if kind == "prefect":
        from prefect.blocks.system import Secret

        try:
            value = str(Secret.load(where).get())  # type: ignore[union-attr]
        except ValueError:
            raise PipelineError(f"{what}: there is no Prefect Secret block {where!r}") from None
        return value.strip()
    raise PipelineError(f"{what}: {ref!r} is not a secret reference (env:, file: or prefect:)")


class ClusterSecrets(BaseModel):
    """References to one cluster's secrets. The defaults are the single-cluster setup's
    environment variables."""

    token: SecretRef = Field(
        "env:JACO_TOKEN", description="An admin operator token of this cluster."
    )
    verify_identity: SecretRef | None = Field(
        None,
        description="An age identity that can decrypt this cluster's backups (one of the "
        "recipients). Default: the file named by JACO_AGE_IDENTITY_FILE.",
    )
    alert_webhook: SecretRef | None = Field(
        None, description="Where this cluster's alerts are POSTed. Default: JACO_ALERT_WEBHOOK."
    )

    def read_token(self) -> str:
        return resolve(self.token, "the operator token")

    def read_identity(self) -> str:
        """The age identity file's content (AGE-SECRET-KEY-1… lines)."""
        if self.verify_identity is not None:
            return resolve(self.verify_identity, "the verify identity")
        path = os.environ.get("JACO_AGE_IDENTITY_FILE")
        if not path:
            raise PipelineError(
                "no verify identity: set verify_identity for this cluster (file:, env: or "
                "prefect:) or JACO_AGE_IDENTITY_FILE to the age identity used to verify backups"
            )
        return resolve(f"file:{path}", "the verify identity")

    def webhook(self) -> str | None:
        if self.alert_webhook is not None:
            return resolve(self.alert_webhook, "the alert webhook")
        return os.environ.get("JACO_ALERT_WEBHOOK") or None


class S3Settings(BaseModel):
    """How to reach one cluster's bucket. Credentials are references; unset ones come from
    the standard AWS chain (environment, profile, instance role)."""

    endpoint: str | None = Field(
        None, description="An S3-compatible endpoint URL (default: AWS, or AWS_ENDPOINT_URL_S3)."
    )
    region: str | None = Field(None, description="The bucket's region.")
    profile: str | None = Field(None, description="An AWS profile name (~/.aws/config).")
    access_key_id: SecretRef | None = None
    secret_access_key: SecretRef | None = None
