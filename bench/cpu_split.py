"""Where a backup's time goes: wall and CPU seconds of the client, jacod and etcd for `jaco
backup`, beside etcdctl's and etcd's for `etcdctl snapshot save`, alternating.

    python -m bench.cpu_split --keys 1000000 [--repeat 3]

On 2 cores, the sum of the CPU columns over the wall time says how close to CPU-bound a
stage is, and which process to make cheaper. The node holds `--keys` small records
(bench.realistic). Results go to bench/results/cpu-split-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.realistic import fill
from bench.run import RESULTS
from infra.localcluster import JACO, Cluster

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def timed(cmd: list[str], env: dict[str, str], work: Path) -> tuple[float, float]:
    """Wall seconds, and the command's own CPU seconds (GNU time)."""
    report = work / "time.out"
    os.sync()
    started = time.monotonic()
    subprocess.run(
        ["/usr/bin/time", "-f", "%U %S", "-o", str(report), *cmd],
        env={**os.environ, **env}, check=True, capture_output=True,
    )  # fmt: skip
    wall = time.monotonic() - started
    user, system = map(float, report.read_text().split()[-2:])
    return wall, user + system


def run(keys: int, repeat: int) -> list[dict[str, float | str]]:
    rows: list[dict[str, float | str]] = []
    with tempfile.TemporaryDirectory(prefix="jaco-cpu-split-") as tmp:
        work = Path(tmp)
        (work / "c").mkdir()
        cluster = Cluster(work / "c")
        cluster.init("node-1")
        node = cluster.nodes["node-1"]
        try:
            print(f"built: {asyncio.run(fill(node, keys))}", flush=True)
            env = {"JACO_TOKEN": cluster.token, "JACO_SERVER": node.server}
            assert node.process is not None
            jacod = node.process.pid
            etcd = node.etcd_pid()
            assert etcd is not None
            for _ in range(repeat):
                etcd0 = cpu_seconds(etcd)
                snap = work / "etcdctl.db"
                snap.unlink(missing_ok=True)
                wall, client = timed(
                    [*node.etcdctl_command(), "snapshot", "save", str(snap)], {}, work
                )
                rows.append({"stage": "etcdctl snapshot save", "wall": wall, "client_cpu": client,
                             "etcd_cpu": cpu_seconds(etcd) - etcd0})  # fmt: skip
                etcd0, jacod0 = cpu_seconds(etcd), cpu_seconds(jacod)
                archive = work / "jaco.tar.gz"
                archive.unlink(missing_ok=True)
                wall, client = timed([str(JACO), "backup", "-o", str(archive)], env, work)
                rows.append({"stage": "jaco backup", "wall": wall, "client_cpu": client,
                             "etcd_cpu": cpu_seconds(etcd) - etcd0,
                             "jacod_cpu": cpu_seconds(jacod) - jacod0})  # fmt: skip
                for row in rows[-2:]:
                    print("  " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else str(v)
                                           for k, v in row.items()), flush=True)  # fmt: skip
        finally:
            cluster.stop_all()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    rows = run(args.keys, args.repeat)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"cpu-split-{stamp}.json"
    out.write_text(json.dumps({"keys": args.keys, "runs": rows}, indent=1) + "\n")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
