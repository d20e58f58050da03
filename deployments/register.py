"""Register a site's deployments on a Prefect work pool, for a fleet of workers.

    prefect work-pool create jaco --type process
    python -m deployments.register --config /etc/jaco/clusters.toml --pool jaco
    prefect worker start --pool jaco        # on as many hosts as you like

Every worker of the pool can run any cluster's backup, drill or retention; the same cluster is
never backed up twice at once (a per-cluster lock held through Prefect, flows/locking.py) and
each run reads that cluster's own secrets through the references in the configuration, so the
workers need access to them (files, environment or Prefect Secret blocks). Growing past one
machine is more workers on the same pool: no code change, no configuration change.

The deployments pull the code from --source (a checkout present on every worker host, by
default this one's path) and run `flows/…` from it. With --drill-pool, the drills go to a
Docker work pool instead (`prefect work-pool create jaco-drills --type docker`, a worker
`prefect worker start --pool jaco-drills`): each drill run is its own ephemeral container of
the jaco image (docs/drills.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, cast

from deployments.build import refuse_or_replace, site_deployments
from flows.config import load_config, site_config_path
from flows.errors import PipelineError
from flows.sandbox import IMAGE

CHECKOUT = Path(__file__).resolve().parents[1]
ENTRYPOINTS = {
    "backup-cluster": "flows/backup_flow.py:backup_cluster",
    "drill-restore": "flows/drill_flow.py:drill_restore",
    "prune-backups": "flows/prune_flow.py:prune_backups",
    "watchdog": "flows/watchdog_flow.py:watchdog",
}


def register(
    config_path: Path, pool: str, source: Path, drill_pool: str | None = None,
    drill_network: str | None = None, take: bool = False,
) -> list[str]:  # fmt: skip
    from prefect import Flow

    config = load_config(config_path)
    made = site_deployments(config)
    refuse_or_replace(made, for_pool=True, take=take)
    names = []
    for flow, options in made:
        if drill_pool and flow.name == "drill-restore":
            options = container_drill(options, drill_network)
            flow.deploy(work_pool_name=drill_pool, image=IMAGE, build=False, push=False,
                        print_next_steps=False, **options)  # fmt: skip
            names.append(f"{flow.name}/{options['name']} (on {drill_pool})")
            continue
        remote = cast(
            Flow[..., Any], Flow.from_source(source=str(source), entrypoint=ENTRYPOINTS[flow.name])
        )
        remote.deploy(work_pool_name=pool, print_next_steps=False, **options)
        names.append(f"{flow.name}/{options['name']}")
    return names


def container_drill(options: dict[str, Any], network: str | None) -> dict[str, Any]:
    """A drill deployment whose every run is an ephemeral container of the jaco image: the
    drill runs inside it (driver inline); its secrets must come from Prefect Secret blocks
    (the worker host's files and environment are not in the container)."""
    params = dict(options["parameters"]["params"])
    refs = [r for r in params.get("secrets", {}).values() if r]
    if any(not str(r).startswith("prefect:") for r in refs):
        raise PipelineError(
            f"{params['cluster']}: drills on a Docker work pool read secrets from Prefect "
            "Secret blocks: set its token and verify_identity to prefect:NAME"
        )
    params.update(driver="inline", workdir="/var/lib/jaco/drills")
    env = {"JACO_DRILL_IN_CONTAINER": "1", "JACO_IMAGE": IMAGE}
    job: dict[str, Any] = {"image_pull_policy": "Never", "auto_remove": True, "env": env}
    if network:
        job["networks"] = [network]
    return {**options, "parameters": {"params": params}, "job_variables": job}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.register",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=site_config_path())
    parser.add_argument("--pool", required=True, help="the work pool (type process)")
    parser.add_argument("--source", type=Path, default=CHECKOUT, help="the checkout to run")
    parser.add_argument(
        "--drill-pool", help="a Docker work pool: every drill run is a container of the image"
    )
    parser.add_argument(
        "--drill-network", help="the Docker network drill containers join (S3 and the API only)"
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="take over deployments of the same names served by deployments.serve",
    )
    args = parser.parse_args(argv)
    try:
        names = register(
            args.config, args.pool, args.source, args.drill_pool, args.drill_network, args.replace
        )
    except PipelineError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(2)
    for name in names:
        print(f"registered {name} on work pool {args.pool}")


if __name__ == "__main__":
    main()
