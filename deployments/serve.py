"""Serve every jaco deployment for the clusters in one configuration file.

    JACO_TOKEN=… JACO_AGE_IDENTITY_FILE=… python -m deployments.serve --config clusters.toml

For each cluster NAME it serves: `backup-cluster/backup-NAME` (cron), `drill-restore/
weekly-drill-NAME` (cron), `drill-restore/drill-NAME` (on demand: "Custom run" in the UI edits
its parameters) and `prune-backups/retention-NAME` (cron, when cluster_id is configured).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from prefect import serve

from deployments.config import ClusterConfig, load_config
from flows.backup_flow import backup_cluster
from flows.drill_flow import drill_restore
from flows.errors import PipelineError
from flows.params import BackupParams, DrillParams
from flows.prune_flow import prune_backups


def deployments_for(name: str, cluster: ClusterConfig) -> list[Any]:
    backup = BackupParams.model_validate(cluster.model_dump(include=set(BackupParams.model_fields)))
    drill = DrillParams(
        cluster=cluster.cluster,
        bucket=cluster.bucket,
        prefix=cluster.prefix,
        cluster_id=cluster.cluster_id,
        rejoin=cluster.drill_rejoin,
        workdir=str(Path(cluster.local_dir) / ".drills"),
    )
    tags = ["jaco", f"cluster:{name}"]
    made = [
        backup_cluster.to_deployment(
            name=f"backup-{name}",
            cron=cluster.backup_cron,
            tags=tags,
            parameters={"params": backup.model_dump()},
        ),
        drill_restore.to_deployment(
            name=f"weekly-drill-{name}",
            cron=cluster.drill_cron,
            tags=tags,
            parameters={"params": drill.model_dump()},
        ),
        drill_restore.to_deployment(
            name=f"drill-{name}",
            tags=[*tags, "on-demand"],
            parameters={"params": drill.model_dump()},
        ),
    ]
    if cluster.cluster_id:
        made.append(
            prune_backups.to_deployment(
                name=f"retention-{name}",
                cron=cluster.prune_cron,
                tags=tags,
                parameters={
                    "cluster_id": cluster.cluster_id,
                    "bucket": cluster.bucket,
                    "local_dir": cluster.local_dir,
                    "prefix": cluster.prefix,
                    "retention": cluster.retention.model_dump(),
                },
            )
        )
    return made


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("JACO_CLUSTERS_FILE", "/etc/jaco/clusters.toml")),
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except PipelineError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(2)
    made = [d for name, c in config.clusters.items() for d in deployments_for(name, c)]
    serve(*made)


if __name__ == "__main__":
    main()
