"""Restore to READY, split in two: `jaco restore`, then jacod's start to READY; beside
`etcdctl snapshot restore`, then a bare etcd's start to healthy. This tree beside another.

    git worktree add --detach /tmp/jaco-before REV
    cp jaco/_native*.so /tmp/jaco-before/jaco/     # the compiled pass is a build product
    python -m bench.node_ready --before /tmp/jaco-before [--before TREE2 ...] [--random-mib 512]
        [--repeat 4]

One node is filled with `--random-mib` MiB of incompressible 48 KiB records (as bench.run's
random data set), backed up once by `jaco backup` and once by `etcdctl snapshot save`. Each
round restores the archive with each tree's `jaco restore` and starts that tree's jacod on it,
and restores etcd's snapshot and starts a bare etcd on it, in an order that turns round by
round; each `--before` tree is named by its commit. Readiness is asked every 20 ms, each time
on a new connection, on both sides (as bench.run does since; it asked every 300 ms, which
added up to that much to either side at random). Medians, and every round. Results go to
bench/results/node-ready-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.run import (
    MIB,
    PY,
    READY_POLL,
    RESULTS,
    bare_etcd,
    fill_random,
    http_ok,
    measure,
    restored_ready,
    stop_pid,
    turning,
)
from infra.localcluster import JACO, cluster_of, wait_for
from infra.ports import free_port

HERE = Path(__file__).resolve().parents[1]
ENTRY = "import sys; from jaco.cli.main import main; sys.argv = ['jaco', *sys.argv[1:]]; main()"


def jaco_side(tree: Path, archive: Path, work: Path, token: str) -> dict[str, float]:
    data = work / "restored"
    api = free_port()
    env = {"PYTHONPATH": str(tree)}
    args = ["restore", "--input", str(archive), "--name", "restored", "--data-dir", str(data)]
    args += ["--advertise-host", "127.0.0.1", "--api-port", str(api)]
    args += ["--etcd-client-port", str(free_port()), "--etcd-peer-port", str(free_port())]
    restore = measure([PY, "-P", "-c", ENTRY, *args], env)["seconds"]
    with open(work / "jacod.log", "ab") as log:
        started, wall = time.monotonic(), time.time()
        jacod = subprocess.Popen(
            [PY, "-P", "-m", "jaco.server.daemon", "--name", "restored"]
            + ["--data-dir", str(data), "--listen", f"127.0.0.1:{api}"],
            env={**os.environ, **env},
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
        )

    ready = functools.partial(restored_ready, api, token)
    return _side(restore, (started, wall), ready, jacod, data, data / "etcd.log")


def etcd_side(snapshot: Path, work: Path) -> dict[str, float]:
    data = work / "bare-etcd"
    client = free_port()
    restore_cmd, etcd_cmd = bare_etcd(snapshot, data, client, free_port())
    restore = measure(restore_cmd, {"ETCDCTL_API": "3"})["seconds"]
    log_file = work / "bare-etcd.log"
    log_file.unlink(missing_ok=True)
    with open(log_file, "ab") as log:
        started, wall = time.monotonic(), time.time()
        etcd = subprocess.Popen(etcd_cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    healthy = functools.partial(http_ok, f"http://127.0.0.1:{client}/health")
    return _side(restore, (started, wall), healthy, etcd, data, log_file)


def _side(
    restore: float,
    spawned_at: tuple[float, float],
    ready: Callable[[], bool],
    process: subprocess.Popen[bytes],
    data: Path,
    etcd_log: Path,
) -> dict[str, float]:
    """Wait until `ready`, then stop `process` and remove its `data`: one side's figures, its
    start split by `etcd_log` (`spawned_at`: the monotonic and the Unix time of its spawn)."""
    started, wall = spawned_at
    try:
        wait_for(ready, 300, str(data.name), every=READY_POLL)
        start = time.monotonic() - started
        spawned, serving = (at - wall for at in _etcd_times(etcd_log))
    finally:
        stop_pid(process)
        shutil.rmtree(data, ignore_errors=True)
    return {
        "restore": restore,
        "start": start,
        "etcd_spawned": spawned,
        "after_etcd": start - serving,
        "total": restore + start,
    }


def _etcd_times(log: Path) -> tuple[float, float]:
    """When etcd logged its first line, and that it serves clients (its JSON log's `ts`, as
    Unix times): it has a leader then. How long a single member waits for its election is
    etcd's own, and random (100 ms to a second here): what follows it is the starter's cost."""
    times = []
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
            at = dt.datetime.fromisoformat(entry["ts"].replace("Z", "+00:00")).timestamp()
        except (ValueError, KeyError, TypeError):
            continue
        times.append(at)
        if str(entry.get("msg", "")).startswith("serving client traffic"):
            return times[0], at
    raise RuntimeError(f"{log} does not say when etcd began to serve clients")


def commit_of(tree: Path) -> str:
    return subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def trees_of(before: list[Path]) -> dict[str, Path]:
    """The `--before` trees by their commits, then this one, named apart from a `--before` of
    the same commit (whose side it would otherwise replace)."""
    trees = {described_commit(tree): tree.resolve() for tree in before}
    trees[f"{described_commit(HERE)} (this tree)"] = HERE
    return trees


def described_commit(tree: Path) -> str:
    """commit_of, saying whether the code a bench runs differs from it (an uncommitted A/B,
    which would otherwise read as its base commit: stop 46's drill A/B did)."""
    code = ["jaco", "flows", "native"]
    dirty = subprocess.run(["git", "-C", str(tree), "diff", "--quiet", "HEAD", "--", *code])
    return commit_of(tree) + (" with uncommitted changes" if dirty.returncode else "")


def run(before: list[Path], random_mib: int, repeat: int) -> dict[str, list[dict[str, float]]]:
    trees = trees_of(before)
    with tempfile.TemporaryDirectory(prefix="jaco-node-ready-") as tmp:
        work = Path(tmp)
        archive, snapshot = work / "jaco.tar.gz", work / "etcdctl.db"
        with cluster_of(work / "c", 1) as cluster:
            node = cluster.nodes["node-1"]
            built = asyncio.run(fill_random(node, random_mib * MIB, 48 * 1024))
            print(f"built: {built} random records of 48 KiB", flush=True)
            env = {"JACO_TOKEN": cluster.token, "JACO_SERVER": node.server}
            measure([str(JACO), "backup", "-o", str(archive)], env)
            measure(node.snapshot_save_command(snapshot), {"ETCDCTL_API": "3"})
            token = cluster.token
        runs: dict[str, Callable[[], dict[str, float]]] = {
            label: functools.partial(jaco_side, tree, archive, work, token)
            for label, tree in trees.items()
        }
        runs["etcd"] = functools.partial(etcd_side, snapshot, work)
        sides: dict[str, list[dict[str, float]]] = {side: [] for side in runs}
        for round_, side in turning(list(runs), repeat):
            sides[side].append(runs[side]())
            got = sides[side][-1]
            print(
                f"round {round_ + 1} {side}: restore {got['restore']:.2f} s, start to "
                f"ready {got['start']:.2f} s (etcd's first log line {got['etcd_spawned']:.2f} "
                f"s, after etcd served {got['after_etcd']:.2f} s), "
                f"total {got['total']:.2f} s",
                flush=True,
            )
    return sides


def summary(sides: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {
        side: {part: statistics.median(r[part] for r in runs) for part in runs[0]}
        for side, runs in sides.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--before", type=Path, action="append", required=True, help="another tree (repeatable)"
    )
    parser.add_argument("--random-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=4)
    args = parser.parse_args(argv)
    sides = run(args.before, args.random_mib, args.repeat)
    medians = summary(sides)
    ref = medians["etcd"]["total"]
    print(
        "\n| side | restore | start to ready | of it: etcd's first log line | after etcd "
        "served | total | / etcd's |"
    )
    print("|---|---|---|---|---|---|---|")
    for side, m in medians.items():
        print(
            f"| {side} | {m['restore']:.2f} s | {m['start']:.2f} s | {m['etcd_spawned']:.2f} s | "
            f"{m['after_etcd']:.2f} s | "
            f"{m['total']:.2f} s | {m['total'] / ref:.2f}× |"
        )
    RESULTS.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"node-ready-{stamp}.json"
    record: dict[str, Any] = {
        "before": [str(tree) for tree in args.before],
        "random_mib": args.random_mib,
        "poll_seconds": READY_POLL,
        "rounds": sides,
        "medians": medians,
    }
    out.write_text(json.dumps(record, indent=1))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
