"""The drill's RTO beside restore to READY of the same backup, round by round, and where the
drill's time and CPU go:

    python -m bench.drill_rto --random-mib 2048 [--repeat 3] [--before TREE]

One single-node cluster of random 48 KiB records (bench.run.build; `--value-kib 0`: the
realistic data set's small records; `--random-mib` is the store's size either way), SeaweedFS
and a Prefect server (bench.run.services). Its backup is taken twice: `jaco backup` to a plain
archive (what restore to READY restores, as in `make bench`) and the backup-cluster flow (what
the drill restores, from S3). Then each round runs, for each tree, restore to READY (its `jaco
restore` of the archive, then its jacod to READY: bench.node_ready's) and the drill-restore
flow (bench.stage's `drill`, bwrap), in an order that turns round by round, each side
starting SETTLE seconds after the one before it ended, on cold memory (bench.run.cold). Per
drill: its RTO and the checks that make it up, the CPU seconds of the flow's stage process as
GNU time reports them (the bwrap sandbox's processes are not among them), the sandbox's (its
agent's report: the agent and all it started; trees before stop 41 report none: nan), and
SeaweedFS's. The goal (issue 16): RTO ≤ 1.3× restore to READY of its tree. A TREE is a
worktree of another commit with jaco/_native*.so copied in (as for bench.node_ready). Results:
bench/results/drill-rto-<time>.json. With four sides (`--before`), use a multiple of four
rounds: each side then takes each place once (round 1 is the slowest on this VM).
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.cpu_split import cpu_seconds
from bench.node_ready import HERE, jaco_side, trees_of
from bench.run import (
    BUCKET,
    build,
    jaco_cli,
    save_results,
    services,
    settled,
    stage,
    stage_env,
    turning,
)

RTO_PARTS = ("backup is the one recorded", "restore", "ready")


def one_drill(tree: Path, args: dict[str, Any], env: dict[str, str], work: Path, s3_pid: int
              ) -> dict[str, Any]:  # fmt: skip
    s3_before = cpu_seconds(s3_pid)
    got = stage("drill", args, env, work, tree=None if tree == HERE else tree)
    parts = {name: got["check_seconds"][name] for name in RTO_PARTS}
    return {
        "rto": got["rto_seconds"],
        **parts,
        "flow": got["seconds"],
        "flow_cpu": got["cpu_seconds"],
        "sandbox_cpu": got.get("sandbox_cpu_seconds") or float("nan"),  # none before stop 41
        "s3_cpu": cpu_seconds(s3_pid) - s3_before,
        "rss_kib": got["rss_kib"],
    }


def run(before: list[Path], random_mib: int, repeat: int, value_kib: int = 48) -> dict[str, Any]:
    trees = trees_of(before)
    with tempfile.TemporaryDirectory(prefix="jaco-drill-rto-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        with services(work / "services") as ctx:
            cluster, built = build(work / "c", random_mib, value_kib)
            try:
                print(f"built: {built}", flush=True)
                node = cluster.nodes["node-1"]
                env = stage_env(ctx, cluster.token, node.server)
                archive = work / "cluster.tar.gz"
                jaco_cli(["backup", "--output", str(archive)], env, work)
                flow = stage("flow", _flow_args(ctx, node.server, work), env, work)
                drill = {
                    "params": {
                        "cluster": "drill-rto", "bucket": BUCKET, "prefix": "drill-rto",
                        "key": flow["key"], "workdir": str(work / "drills"), "driver": "bwrap",
                        "timeout_seconds": 1800,
                    }
                }  # fmt: skip
                s3_pid = ctx["s3"].process.pid
                sides: dict[str, Callable[[], dict[str, Any]]] = {}
                for label, tree in trees.items():
                    sides[f"{label}: drill"] = functools.partial(
                        one_drill, tree, drill, env, work, s3_pid
                    )
                    sides[f"{label}: restore to READY"] = functools.partial(
                        _restore_side, tree, archive, work, cluster.token
                    )
                runs: dict[str, list[dict[str, Any]]] = {label: [] for label in sides}
                _rounds(sides, runs, repeat)
            finally:
                cluster.stop_all()
    return {"built": built, "runs": runs}


def _flow_args(ctx: dict[str, Any], server: str, work: Path) -> dict[str, Any]:
    return {
        "params": {
            "cluster": "drill-rto", "servers": [server], "bucket": BUCKET, "prefix": "drill-rto",
            "recipients": [ctx["recipient"]], "local_dir": str(work / "local"),
            "timeout_seconds": 1800,
        }
    }  # fmt: skip


def _restore_side(tree: Path, archive: Path, work: Path, token: str) -> dict[str, Any]:
    got = jaco_side(tree, archive, work, token)
    return {"ready": got["total"], "restore": got["restore"]}


def _rounds(sides: dict[str, Any], runs: dict[str, list[dict[str, Any]]], repeat: int) -> None:
    for round_, label in turning(list(sides), repeat):
        settled()  # every side cold, as in bench.run's restore to READY and drill
        got = sides[label]()
        runs[label].append(got)
        shown = ", ".join(f"{k} {v:.2f}" for k, v in got.items() if isinstance(v, float))
        print(f"round {round_ + 1} {label}: {shown}", flush=True)


def summary(runs: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = []
    for label, rows in runs.items():
        if not label.endswith(": drill"):
            continue
        tree = label.removesuffix(": drill")
        ready = statistics.median(r["ready"] for r in runs[f"{tree}: restore to READY"])
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "rss_kib"}
        lines.append(
            f"{tree}: drill RTO {med['rto']:.2f} s = {med['rto'] / ready:.2f}x its restore to "
            f"READY, {ready:.2f} s (medians of {len(rows)}; the drill's decrypt "
            f"{med[RTO_PARTS[0]]:.2f} s, restore {med['restore']:.2f} s, READY "
            f"{med['ready']:.2f} s; its flow {med['flow']:.2f} s, the flow's CPU "
            f"{med['flow_cpu']:.2f} s, the sandbox's {med['sandbox_cpu']:.2f} s, SeaweedFS's "
            f"{med['s3_cpu']:.2f} s)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, action="append", default=[])
    parser.add_argument("--random-mib", type=int, default=2048, help="the store's size")
    parser.add_argument(
        "--value-kib", type=int, default=48, help="0: small JSON records (bench.realistic)"
    )
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    got = run(args.before, args.random_mib, args.repeat, args.value_kib)
    lines = summary(got["runs"])
    print("\n".join(["", *lines]))
    save_results("drill-rto", started, "result", {**got, "summary": lines})
    return 0


if __name__ == "__main__":
    sys.exit(main())
