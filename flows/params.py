"""The parameters of the pipeline's flows, as pydantic models (the Prefect UI renders a form).

No secrets here: tokens, keys and credentials come from where each cluster's configuration
says (see flows.secrets), never from parameters.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from flows.retention import RetentionPolicy

CLUSTER_NAME = r"^[a-z0-9][a-z0-9-]{0,40}$"


class BackupParams(BaseModel):
    cluster: str = Field(
        description="A short name for the cluster (reports, concurrency limit).",
        pattern=CLUSTER_NAME,
    )
    servers: list[str] = Field(
        description="jacod API addresses HOST:PORT; any reachable one will do (tried in order).",
        min_length=1,
    )
    bucket: str = Field(description="S3 bucket for the encrypted backups.")
    prefix: str = Field("jaco", description="Key prefix inside the bucket.")
    recipients: list[str] = Field(
        description="age recipients (age1… or ssh-ed25519 public "
        "keys); any of their identities can decrypt.",
        min_length=1,
    )
    local_dir: str = Field(
        "/var/backups/jaco",
        description="Where the local encrypted copy (and the working files) live.",
    )
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)
    timeout_seconds: float = Field(300, gt=0, description="Deadline of the Backup RPC.")
    drill_every: int = Field(
        0,
        ge=0,
        description="Run a restore drill after every Nth "
        "successful backup of this cluster (0: never, 1: every backup).",
    )
    drill_driver: Literal["bwrap", "docker"] = Field(
        "bwrap", description="Sandbox driver for those drills."
    )


class DrillParams(BaseModel):
    cluster: str = Field(
        description="The cluster's short name (reports, history).", pattern=CLUSTER_NAME
    )
    bucket: str = Field(description="S3 bucket holding the encrypted backups.")
    prefix: str = Field("jaco", description="Key prefix inside the bucket.")
    cluster_id: str | None = Field(None, description="Only this cluster id's backups.")
    key: str | None = Field(None, description="A specific object key; default: the newest.")
    driver: Literal["bwrap", "docker"] = Field("bwrap", description="Sandbox driver.")
    rejoin: bool = Field(False, description="Also join a second sandboxed node (full drill).")
    workdir: str = Field("/var/lib/jaco-drills", description="Host scratch space (0700).")
    timeout_seconds: float = Field(900, gt=0)
