"""The control plane's own calls on a large cluster, beside etcd's tool doing the least part
of the same work.

    python -m bench.control_plane                       # 10⁶ small keys, 6·10⁴ replicas
    python -m bench.control_plane --keys 100000 --replicas 20000 --repeat 3

A real single-node cluster gets `--keys` realistic small records (bench.realistic: 15 % of
them deployments) and then `--replicas` placed replicas (replica, placement and IPAM records
for deployments of four replicas, written straight into etcd), then, alternating:

| jaco (the CLI, its start included) | reference |
|---|---|
| `jaco status --json`: every deployment, paged | `etcdctl get --prefix` deployments, JSON |
| `jaco deploy` of one replica | `etcdctl put` of one key |

(Deploy reads the IPAM keys and the placements table to choose an IP and a node.)

Medians of the runs; results are printed and written to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import ipaddress
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.growth import alternate
from bench.realistic import fill
from bench.run import jaco_cli, measure, save_results
from infra.localcluster import Cluster, Node

SUBNET = "10.42.0.0/16"  # the cluster's default: 65 533 replica addresses


async def place(node: Node, replicas: int) -> None:
    """`replicas` placed replicas, four to a deployment, as Deploy writes them."""
    from jaco.model.etcd import Etcd, op_put
    from jaco.model.keys import P_DEPLOYMENTS, P_IPAM, P_REPLICAS, P_SCHEDULER, encode, replica_id
    from jaco.node.config import DataDir

    etcd = Etcd(DataDir(node.data_dir).etcd_socket, timeout=120)
    hosts = ipaddress.ip_network(SUBNET).hosts()
    next(hosts)  # the gateway
    ops: list[Any] = []
    try:
        for d in range(replicas // 4):
            name = f"placed-{d:06d}"
            at = "2026-12-04T00:00:00.000+00:00"
            record = {"name": name, "image": "x:1", "replicas": 4, "env": {}}
            ops.append(op_put(P_DEPLOYMENTS + name, encode({**record, "created_at": at})))
            for i in range(4):
                ip, rid = str(next(hosts)), replica_id(name, i)
                replica = {"id": rid, "deployment": name, "index": i, "ip": ip}
                ops.append(op_put(f"{P_REPLICAS}{name}/{i:04d}", encode(replica)))
                placement = {"replica": rid, "node": node.name, "placed_at": at}
                ops.append(op_put(P_SCHEDULER + rid, encode(placement)))
                ops.append(op_put(P_IPAM + ip, encode({"ip": ip, "replica": rid})))
            if len(ops) >= 1000:
                await etcd.txn([], ops)
                ops = []
        if ops:
            await etcd.txn([], ops)
    finally:
        await etcd.close()


def run(keys: int, replicas: int, reps: int, root: Path) -> dict[str, Any]:
    cluster = Cluster(root)
    cluster.init("node-1")
    node = cluster.nodes["node-1"]
    work = root / "work"
    work.mkdir()
    try:
        built = asyncio.run(fill(node, keys))
        asyncio.run(place(node, replicas))
        print(f"   built {keys} keys and {replicas} placed replicas: {built}", flush=True)
        env = {"JACO_TOKEN": cluster.token, "JACO_SERVER": node.server}
        etcdctl = node.etcdctl_command()
        listing = alternate(
            reps,
            lambda: jaco_cli(["status", "--json"], env, work),
            lambda: measure([*etcdctl, "get", "--prefix", "/jaco/v1/deployments/", "-w", "json"]),
        )
        names = iter(range(reps))
        deploy = alternate(
            reps,
            lambda: jaco_cli(["deploy", f"bench-{next(names)}", "--image", "x:1"], env, work),
            lambda: measure([*etcdctl, "put", "/jaco/bench/key", "value"]),
        )
        return {"built": built, "replicas": replicas, "listing": listing, "deploy": deploy}
    finally:
        cluster.stop_all()


def table(r: dict[str, Any]) -> list[str]:
    lines = [
        "| call | jaco s | RSS MiB | reference | ref s | jaco/ref | runs |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, ours, ref in (
        ("listing", "`jaco status --json`", "`etcdctl get --prefix` deployments"),
        ("deploy", "`jaco deploy` (1 replica)", "`etcdctl put`"),
    ):
        a, b = r[key]
        lines.append(
            f"| {ours} | {a['seconds']:.2f} | {a['rss_kib'] / 1024:.0f} | {ref} | "
            f"{b['seconds']:.2f} | {a['seconds'] / b['seconds']:.2f} | {a['runs']} vs {b['runs']} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.control_plane", description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--replicas", type=int, default=60_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", default="/var/tmp")
    args = parser.parse_args(argv)
    if not 0 <= args.replicas <= 65_000:
        parser.error(f"--replicas must fit the cluster subnet {SUBNET} (at most 65000)")
    started = dt.datetime.now(dt.UTC)
    root = Path(tempfile.mkdtemp(prefix="jaco-control-plane-", dir=args.workdir))
    try:
        results = run(args.keys, args.replicas, args.repeat, root / "cluster")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for line in table(results):
        print(line)
    save_results("control-plane", started, "results", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
