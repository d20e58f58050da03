"""What a backup run costs beyond its stages: the backup-cluster flow on a small cluster,
through a real Prefect server on SQLite (as `prefect server start` makes it), from this tree
and from others, alternating run by run.

    python -m bench.flow_end --before TREE [--before TREE] [--repeat 10] [--keys 10000]
                             [--others 2]   # other flows running on the same server meanwhile

Each run is bench.stage's `flow` stage (imports done before its clock) in a process of its
own, with Prefect's client logging at DEBUG. Per run: the flow's seconds; its stages'
seconds (take-backup, encrypt, upload, local-copy, verify, prune, as its report gives them),
the work, beside which the rest is the flow's own cost (Prefect's task bookkeeping, the lock,
the catalog, the artifacts); and how often Prefect's client paused on a 503 from the server
(its "Another attempt will be made in …" lines), and for how long, beside how often
flows.api_writes asked again instead. With `--others K`, K processes run a small flow of three
tasks over and over on the same server meanwhile, as the runs of a fleet's other clusters
would. A TREE is a worktree of another commit with jaco/_native*.so copied in (as for
bench.node_ready). Results: bench/results/flow-end-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.node_ready import trees_of
from bench.realistic import fill
from bench.run import BUCKET, PY, save_results, services, stage, stage_env, turning
from infra.localcluster import cluster_of

PAUSE = re.compile(r"Another attempt will be made in ([0-9.]+)s")
# httpx's line for each request (this tree's bench.stage shows them; older ones do not)
BUSY = re.compile(r'HTTP Request: (\w+ \S+) "HTTP/1.1 503')
ASKED_AGAIN = re.compile(r"the Prefect API (?:answered|broke).*; asking again in")


def one_run(tree: Path, args: dict[str, Any], env: dict[str, str], work: Path) -> dict[str, Any]:
    debug = {"PREFECT_LOGGING_LEVEL": "DEBUG", "BENCH_DEBUG_LOGGERS": "flows.api_writes,httpx"}
    got = stage("flow", args, {**env, **debug}, work, output=True, tree=tree)
    pauses = [float(s) for s in PAUSE.findall(got["output"])]
    stages = sum(row["seconds"] for row in got["stages"])
    return {
        "flow": got["seconds"],
        "stages": stages,
        "rest": got["seconds"] - stages,
        "pauses": len(pauses),
        "paused": sum(pauses),
        "asked_again": len(ASKED_AGAIN.findall(got["output"])),
        "busy": BUSY.findall(got["output"]),
        "process": got["wall_seconds"],
    }


def other_runs() -> None:
    """A flow of three small tasks, run until killed: another cluster's runs on the server."""
    from prefect import flow, task

    @task
    def step(n: int) -> int:
        return n + 1

    @flow(name="flow-end-other")
    def other() -> int:
        return step(step(step(0)))

    while True:
        other()


def run(before: list[Path], keys: int, repeat: int, others: int) -> dict[str, list[dict[str, Any]]]:
    trees = trees_of(before)
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}
    with tempfile.TemporaryDirectory(prefix="jaco-flow-end-") as tmp:
        work = Path(tmp)
        with services(work / "services") as ctx, cluster_of(work / "c", 1) as cluster:
            node = cluster.nodes["node-1"]
            print(f"built: {asyncio.run(fill(node, keys))}", flush=True)
            env = stage_env(ctx, cluster.token, node.server)
            busy = [
                subprocess.Popen(
                    [PY, "-m", "bench.flow_end", "--other"],
                    env={**os.environ, **env},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for _ in range(others)
            ]
            try:
                _rounds(trees, runs, repeat, node.server, ctx, env, work)
            finally:
                for proc in busy:
                    proc.kill()
                    proc.wait()
    return runs


def _rounds(
    trees: dict[str, Path],
    runs: dict[str, list[dict[str, Any]]],
    repeat: int,
    server: str,
    ctx: dict[str, Any],
    env: dict[str, str],
    work: Path,
) -> None:
    args = {
        "params": {
            "cluster": "flow-end",
            "servers": [server],
            "bucket": BUCKET,
            "prefix": "flow-end",
            "recipients": [ctx["recipient"]],
            "local_dir": str(work / "local"),
        }
    }
    for round_, label in turning(list(trees), repeat):
        got = one_run(trees[label], args, env, work)
        runs[label].append(got)
        print(
            f"round {round_ + 1} {label}: flow {got['flow']:.2f} s, stages "
            f"{got['stages']:.2f} s, the rest {got['rest']:.2f} s; Prefect's client "
            f"paused {got['pauses']} times ({got['paused']:.1f} s); flows.api_writes asked "
            f"again {got['asked_again']} times; answered 503: {got['busy']}",
            flush=True,
        )


def summary(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = []
    for label, rows in runs.items():
        med = {
            part: statistics.median(r[part] for r in rows) for part in ("flow", "stages", "rest")
        }
        pauses = sum(r["pauses"] for r in rows)
        paused = sum(r["paused"] for r in rows)
        again = sum(r["asked_again"] for r in rows)
        lines.append(
            f"{label}: flow {med['flow']:.2f} s (median of {len(rows)}; mean "
            f"{statistics.mean(r['flow'] for r in rows):.2f} s), its stages {med['stages']:.2f} s,"
            f" the rest {med['rest']:.2f} s; Prefect's client paused {pauses} times in "
            f"{len(rows)} runs, {paused:.1f} s in all; flows.api_writes asked again {again} times"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, action="append")
    parser.add_argument("--others", type=int, default=0, help="other flows running meanwhile")
    parser.add_argument("--other", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args(argv)
    if args.other:
        other_runs()
    if not args.before:
        parser.error("--before TREE is needed")
    started = dt.datetime.now(dt.UTC)
    runs = run(args.before, args.keys, args.repeat, args.others)
    lines = summary(runs)
    print("\n".join(["", *lines]))
    save_results("flow-end", started, "runs", {"runs": runs, "summary": lines})
    return 0


if __name__ == "__main__":
    sys.exit(main())
