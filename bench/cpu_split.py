"""Where a backup's time goes: wall and CPU seconds of the client, jacod and etcd for `jaco
backup`, beside etcdctl's and etcd's for `etcdctl snapshot save`, alternating.

    python -m bench.cpu_split --keys 1000000 [--repeat 3] [--before TREE]
    python -m bench.cpu_split --random-mib 512     # random 48 KiB records instead

On 2 cores, the sum of the CPU columns over the wall time says how close to CPU-bound a
stage is, and which process to make cheaper. The node holds `--keys` small records
(bench.realistic), or with `--random-mib` that many MiB of incompressible 48 KiB records (as
bench.run's random data set). With `--before` (a worktree of another commit, its
jaco/_native*.so copied in, as for bench.cli_start), jacod is restarted from one tree then the
other, alternating round by round, on the same store, and `jaco backup` runs from the same
tree as its jacod. jacod's peak
RSS while it serves the backup is recorded too. Results go to
bench/results/cpu-split-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path

from bench.node_ready import described_commit
from bench.realistic import fill
from bench.run import MIB, RESULTS, fill_random, measure, peak_kib, reset_peak, settled
from infra.localcluster import JACO, Cluster, Node, cluster_of

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def restart(cluster: Cluster, node: Node, tree: Path | None) -> None:
    """Restart the node's jacod importing jaco from `tree` (None: this checkout)."""
    node.stop()
    saved = os.environ.pop("PYTHONPATH", None)
    if tree is not None:
        os.environ["PYTHONPATH"] = str(tree)
    try:
        node.start()
    finally:
        os.environ.pop("PYTHONPATH", None)
        if saved is not None:
            os.environ["PYTHONPATH"] = saved
    cluster.wait_ready([node.name])


def run(
    keys: int, repeat: int, before: Path | None = None, random_mib: int = 0
) -> list[dict[str, float | str]]:
    trees: dict[str, Path | None] = {"after": None}
    if before is not None:
        trees = {"before": before.resolve(), "after": None}
    rows: list[dict[str, float | str]] = []
    with tempfile.TemporaryDirectory(prefix="jaco-cpu-split-") as tmp:
        work = Path(tmp)
        with cluster_of(work / "c", 1) as cluster:
            node = cluster.nodes["node-1"]
            if random_mib:
                built = asyncio.run(fill_random(node, random_mib * MIB, 48 * 1024))
                print(f"built: {built} random records of 48 KiB", flush=True)
            else:
                print(f"built: {asyncio.run(fill(node, keys))}", flush=True)
            env = {"JACO_TOKEN": cluster.token, "JACO_SERVER": node.server}
            snap, archive = work / "etcdctl.db", work / "jaco.tar.gz"
            stages = {
                "etcdctl snapshot save": node.snapshot_save_command(snap),
                "jaco backup": [str(JACO), "backup", "-o", str(archive)],
            }
            for _ in range(repeat):
                for label, tree in trees.items():
                    if before is not None:
                        restart(cluster, node, tree)
                    assert node.process is not None
                    jacod, etcd = node.process.pid, node.etcd_pid()
                    assert etcd is not None
                    for stage, cmd in stages.items():
                        settled(snap, archive)
                        reset_peak(jacod)
                        etcd0, jacod0 = cpu_seconds(etcd), cpu_seconds(jacod)
                        own = tree is not None and stage == "jaco backup"
                        result = measure(cmd, {**env, **({"PYTHONPATH": str(tree)} if own else {})})
                        row: dict[str, float | str] = {
                            "tree": label,
                            "stage": stage,
                            "wall": result["seconds"],
                            "client_cpu": result["cpu_seconds"],
                            "etcd_cpu": cpu_seconds(etcd) - etcd0,
                        }
                        if stage == "jaco backup":
                            row["jacod_cpu"] = cpu_seconds(jacod) - jacod0
                            row["jacod_peak_mib"] = peak_kib(jacod) / 1024
                        rows.append(row)
                        print("  " + ", ".join(
                            f"{k} {v:.2f}" if isinstance(v, float) else v for k, v in row.items()
                        ), flush=True)  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", type=Path, help="another tree's jacod, alternating")
    parser.add_argument("--random-mib", type=int, default=0, help="random records, not --keys")
    args = parser.parse_args(argv)
    rows = run(args.keys, args.repeat, args.before, args.random_mib)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"cpu-split-{stamp}.json"
    data = {"random_mib": args.random_mib} if args.random_mib else {"keys": args.keys}
    data["commit"] = described_commit(Path(__file__).resolve().parent.parent)
    data["before_commit"] = described_commit(args.before) if args.before else ""
    out.write_text(json.dumps({**data, "runs": rows}, indent=1) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
