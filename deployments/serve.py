"""Serve every jaco deployment for the clusters of one site configuration.

    python -m deployments.serve --config /etc/jaco/clusters.toml [--metrics-port 9464]
        [--poll-seconds 10]

For each cluster NAME: `backup-cluster/backup-NAME` (cron), `drill-restore/weekly-drill-NAME`
(cron), `drill-restore/drill-NAME` (on demand: "Custom run" in the UI edits its parameters)
and `prune-backups/retention-NAME` (cron); for the site: `watchdog/jaco-watchdog` (its
`[watchdog] name`; every few minutes: backups and drills within their objectives, no abandoned
runs). Secrets stay where each cluster's configuration points (flows/secrets.py); this process
needs read access to them. With --metrics-port it also serves Prometheus metrics read from the
catalogs.

The same deployments on a work pool, for a fleet of workers: `python -m deployments.register`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from deployments.build import refuse_or_replace, site_deployments, watchdog_params
from flows.config import load_config, site_config_path
from flows.errors import PipelineError


def _seconds(text: str) -> int:
    """A whole number of seconds, 1 or more (0 would have the runner ask without a pause)."""
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds, 1 or more")
    return int(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m deployments.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, default=site_config_path())
    parser.add_argument("--metrics-port", type=int, default=0, help="serve /metrics here")
    parser.add_argument("--metrics-address", default="127.0.0.1")
    parser.add_argument(
        "--poll-seconds",
        type=_seconds,
        help="ask the Prefect server for runs to start about this often: a run asked for (an "
        "on-demand drill, Quick run) starts a little after (default: "
        "PREFECT_RUNNER_POLL_FREQUENCY, Prefect's 10 s)",
    )
    parser.add_argument(
        "--replace",
        action="store_true",
        help="take over deployments of the same names registered on a work pool",
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        made = site_deployments(config)
        refuse_or_replace(made, for_pool=False, take=args.replace)
    except PipelineError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        sys.exit(2)
    if args.metrics_port:
        from flows.metrics import serve_metrics

        serve_metrics(watchdog_params(config).clusters, args.metrics_port, args.metrics_address)
        print(f"metrics on http://{args.metrics_address}:{args.metrics_port}/metrics", flush=True)
    from prefect import serve

    polling = {} if args.poll_seconds is None else {"query_seconds": args.poll_seconds}
    serve(*[flow.to_deployment(**options) for flow, options in made], **polling)


if __name__ == "__main__":
    main()
