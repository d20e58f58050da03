"""The parameters of the pipeline's flows, as pydantic models (the Prefect UI renders a form).

No secrets here: each cluster's token, keys, S3 credentials and alert webhook are references
(flows.secrets), read by the task that needs them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from flows.retention import RetentionPolicy
from flows.secrets import ClusterSecrets, S3Settings

CLUSTER_NAME = r"^[a-z0-9][a-z0-9-]{0,40}$"
CLUSTER_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
Driver = Literal["auto", "bwrap", "docker", "inline"]


class Where(BaseModel):
    """Where one cluster's backups live, and how to reach them."""

    cluster: str = Field(
        description="A short name for the cluster (reports, locks, the catalog).",
        pattern=CLUSTER_NAME,
    )
    bucket: str = Field(description="S3 bucket for the encrypted backups.")
    prefix: str = Field("jaco", description="Key prefix inside the bucket.")
    local_dir: str = Field(
        "/var/backups/jaco",
        description="Where the local encrypted copy (and the working files) live.",
    )
    s3: S3Settings = Field(default_factory=S3Settings)
    secrets: ClusterSecrets = Field(default_factory=ClusterSecrets)
    cluster_id: str | None = Field(
        None,
        description="The cluster's id, if known; otherwise learned on the first backup and "
        "pinned in the catalog. A server answering with another id fails the run.",
        pattern=CLUSTER_ID,
    )

    @property
    def s3_url(self) -> str:
        return f"s3://{self.bucket}"

    @property
    def local_url(self) -> str:
        return f"file://{self.local_dir}"


class BackupParams(Where):
    servers: list[str] = Field(
        description="jacod API addresses HOST:PORT; any reachable one will do (tried in order).",
        min_length=1,
    )
    recipients: list[str] = Field(
        description="age recipients (age1… or ssh-ed25519 public "
        "keys); any of their identities can decrypt.",
        min_length=1,
    )
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)
    timeout_seconds: float = Field(300, gt=0, description="Deadline of the Backup RPC.")
    wait_seconds: float = Field(
        900, gt=0, description="How long to wait for a backup of the cluster already running."
    )
    drill_every: int = Field(
        0,
        ge=0,
        description="Run a restore drill after every Nth "
        "successful backup of this cluster (0: never, 1: every backup).",
    )
    drill_driver: Driver = Field(
        "auto", description="Sandbox for those drills (auto: docker where an engine answers)."
    )

    def drill(self, **over: Any) -> DrillParams:
        """A drill of this cluster's backups, where this backup keeps its working files."""
        values: dict[str, Any] = {
            **self.model_dump(include=set(Where.model_fields)),
            "servers": self.servers,
            "driver": self.drill_driver,
            "workdir": str(Path(self.local_dir) / ".drills"),
        }
        return DrillParams(**{**values, **over})


class DrillParams(Where):
    key: str | None = Field(None, description="A specific object key; default: the newest.")
    driver: Driver = Field(
        "auto",
        description="Sandbox: docker, bwrap, auto (docker where an engine answers), or inline "
        "(only when the run is itself a drill container of a Docker work pool).",
    )
    rejoin: bool = Field(False, description="Also join a second sandboxed node (full drill).")
    servers: list[str] = Field(
        default_factory=list,
        description="The live cluster's jacod API addresses. With them, a backup extended by "
        "change segments is also restored to a random revision of its window, and the result "
        "compared with the live cluster's state at that revision.",
    )
    workdir: str = Field("/var/lib/jaco-drills", description="Host scratch space (0700).")
    timeout_seconds: float = Field(900, gt=0)


class PruneParams(Where):
    retention: RetentionPolicy = Field(default_factory=RetentionPolicy)


class StreamSettings(BaseModel):
    segment_seconds: float = Field(5.0, gt=0, description="Cut a segment at least this often.")
    segment_bytes: int = Field(4 * 1024 * 1024, gt=0, description="... or at this size.")
    rebase_seconds: float = Field(60.0, gt=0, description="How often to look for a newer backup.")
    retry_max_seconds: float = Field(30.0, gt=0, description="Longest wait between retries.")
    max_queued_bytes: int = Field(
        64 * 1024 * 1024,
        gt=0,
        description="Sealed segments held for a failing store, at most; then reading pauses.",
    )
    heartbeat_seconds: float = Field(15.0, gt=0, description="How often to write stream.json.")
    full_backup_retry_seconds: float = Field(
        60.0, gt=0, description="The wait after a failed full backup; doubled after each."
    )
    full_backup_retry_max_seconds: float = Field(
        3600.0, gt=0, description="The longest wait between two full backups that fail."
    )
