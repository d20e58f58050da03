"""A site's configuration: one TOML file listing every cluster a fleet of workers backs up.

    [clusters.prod]                     # the cluster's name (reports, locks, the catalog)
    servers = ["node-1:7000", "node-2:7000"]
    bucket = "jaco-backups"
    recipients = ["age1…"]
    max_backup_age = "2h"               # the RPO objective: older than this, an alert
    max_drill_age = "8d"
    max_stream_lag = "5m"               # only where `jaco pipeline stream` runs for it
    [clusters.prod.secrets]             # references, never values (flows.secrets)
    token = "file:/etc/jaco/prod.token"
    verify_identity = "file:/etc/jaco/prod-verify.key"
    alert_webhook = "env:PROD_ALERT_URL"
    [clusters.prod.s3]
    endpoint = "https://s3.example.internal"

Durations are seconds or a number with s, m, h or d. Secrets are never in the file: only
where to read them.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, ValidationError

from flows.errors import PipelineError
from flows.params import CLUSTER_NAME, BackupParams, DrillParams, PruneParams, Where

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(value: Any) -> Any:
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", value)
        if not match:
            raise ValueError("use seconds or a number with s, m, h or d (e.g. 90m, 2h, 8d)")
        return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    return value


Duration = Annotated[float, BeforeValidator(_seconds), Field(gt=0)]


class ClusterConfig(BackupParams):
    backup_cron: str = Field("0 * * * *", description="When to back up (cron, UTC).")
    drill_cron: str = Field("0 4 * * 0", description="When to drill the newest backup.")
    prune_cron: str = Field("30 5 * * *", description="When to apply retention.")
    drill_rejoin: bool = Field(True, description="Scheduled drills also rejoin a second node.")
    drill_workdir: str | None = Field(None, description="Drill scratch space (local_dir/.drills).")
    max_backup_age: Duration = Field(
        7200, description="RPO objective: alert when the newest verified backup is older."
    )
    max_drill_age: Duration = Field(
        8 * 86400, description="Alert when the newest passing drill is older than this."
    )
    max_stream_lag: Duration | None = Field(
        None,
        description="Where `jaco pipeline stream` runs: alert when changes received longer ago "
        "than this are not stored yet, or the stream stopped reporting (e.g. 5m).",
    )
    backup_timeout: Duration = Field(2 * 3600, description="A backup run longer than this fails.")
    drill_timeout: Duration = Field(3600, description="A drill run longer than this fails.")

    def backup_params(self) -> BackupParams:
        return BackupParams.model_validate(self.model_dump(include=set(BackupParams.model_fields)))

    def drill_params(self, rejoin: bool | None = None) -> DrillParams:
        over: dict[str, Any] = {"rejoin": self.drill_rejoin if rejoin is None else rejoin}
        if self.drill_workdir:
            over["workdir"] = self.drill_workdir
        return self.drill(**over)

    def prune_params(self) -> PruneParams:
        return PruneParams(
            **self.model_dump(include=set(Where.model_fields)), retention=self.retention
        )


class WatchdogConfig(BaseModel):
    name: str = Field(
        "jaco-watchdog",
        description="The watchdog's deployment name: one per site on a Prefect server.",
        pattern=CLUSTER_NAME,
    )
    interval_seconds: Duration = Field(300, description="How often the watchdog looks.")
    realert_seconds: Duration = Field(3600, description="Repeat an alert this often.")


class SiteConfig(BaseModel):
    clusters: dict[str, ClusterConfig]
    watchdog: WatchdogConfig = Field(default_factory=WatchdogConfig)


def site_config_path() -> Path:
    """Where the site's configuration is unless told otherwise."""
    return Path(os.environ.get("JACO_CLUSTERS_FILE", "/etc/jaco/clusters.toml"))


def load_config(path: Path) -> SiteConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PipelineError(f"cannot read {path}: {exc}") from None
    clusters = raw.get("clusters")
    tables = list(clusters.items()) if isinstance(clusters, dict) else []
    for name, cluster in tables:
        if isinstance(cluster, dict):
            cluster.setdefault("cluster", name)
    unknown = _unknown(raw, SiteConfig) + [
        f"clusters.{name}.{key}"
        for name, cluster in tables
        for key in _unknown(cluster, ClusterConfig)
    ]
    if unknown:
        raise PipelineError(
            f"{path} is not a valid jaco site configuration: unknown key "
            f"{', '.join(unknown)} (a misspelt key would otherwise mean its default)"
        )
    try:
        return SiteConfig.model_validate(raw)
    except ValidationError as exc:
        raise PipelineError(f"{path} is not a valid jaco site configuration:\n{exc}") from None


def _unknown(raw: Any, model: type[BaseModel]) -> list[str]:
    """The keys of the table `raw` that `model` has no field for, those of its nested tables
    (s3, secrets, retention, watchdog) included; `clusters` is the caller's."""
    if not isinstance(raw, dict):
        return []  # not a table: the validation's to refuse
    found = []
    for key, value in raw.items():
        field = model.model_fields.get(key)
        if field is None:
            found.append(key)
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            found += [f"{key}.{inner}" for inner in _unknown(value, field.annotation)]
    return found
