"""The per-site configuration of the scheduled and on-demand runs: one TOML file.

Secrets are never in it: JACO_TOKEN, the AWS chain and JACO_AGE_IDENTITY_FILE come from the
environment of the process that serves the deployments.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from flows.errors import PipelineError
from flows.params import BackupParams


class ClusterConfig(BackupParams):
    backup_cron: str = Field("0 * * * *", description="When to back up (cron, UTC).")
    drill_cron: str = Field("0 4 * * 0", description="When to drill the newest backup.")
    prune_cron: str = Field("30 5 * * *", description="When to apply retention.")
    cluster_id: str | None = Field(None, description="For retention: which cluster's backups.")
    drill_rejoin: bool = Field(True, description="Scheduled drills also rejoin a second node.")


class SiteConfig(BaseModel):
    clusters: dict[str, ClusterConfig]


def load_config(path: Path) -> SiteConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PipelineError(f"cannot read {path}: {exc}") from None
    for name, cluster in raw.get("clusters", {}).items():
        cluster.setdefault("cluster", name)
    try:
        return SiteConfig.model_validate(raw)
    except ValidationError as exc:
        raise PipelineError(f"{path} is not a valid jaco site configuration:\n{exc}") from None
