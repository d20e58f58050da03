"""Write latency during a backup, with enough samples for its p99: Scale calls timed one after
another (bench.run.WriteProbe) while `etcdctl snapshot save` or `jaco backup` runs, alternating
round by round on one store, all samples of a variant pooled.

    python -m bench.write_p99 [--random-mib 512] [--repeat 5] [--nice 10] [--before TREE]...

`make bench` times one backup of each (about a hundred samples: its p99 is close to their
maximum); this pools `--repeat` of them. With `--nice N` a variant runs `jaco backup` under
`nice -n N`, as a worker that yields its CPU would; each `--before` (a worktree of another
commit, its jaco/_native*.so copied in) is a variant that runs jacod and `jaco backup` from that
tree, labelled by the tree's directory name, jacod restarted before each backup of any tree.
Quiet samples (no backup) come first.
Results go to bench/results/write-p99-<time>.json.
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

from bench.cpu_split import restart
from bench.node_ready import described_commit
from bench.run import MIB, RESULTS, WriteProbe, fill_random, pct, settled
from infra.localcluster import JACO, cluster_of


def run(
    random_mib: int, repeat: int, nice: int | None, before: list[Path]
) -> tuple[dict[str, list[float]], list[dict[str, object]]]:
    """The samples of each variant, pooled, and each backup's own figures (round by round)."""
    from jaco.client.connection import open_client

    samples: dict[str, list[float]] = {"quiet": []}
    rounds: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="jaco-write-p99-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        with cluster_of(work / "c", 1) as cluster:
            node = cluster.nodes["node-1"]
            built = asyncio.run(fill_random(node, random_mib * MIB, 48 * 1024))
            print(f"built: {built} random records of 48 KiB", flush=True)
            env = {**os.environ, "JACO_TOKEN": cluster.token, "JACO_SERVER": node.server}
            out, snap = work / "during.tar.gz", work / "during.db"
            variants = {
                "etcdctl snapshot save": node.snapshot_save_command(snap),
                "jaco backup": [str(JACO), "backup", "--output", str(out)],
            }
            trees: dict[str, Path] = {}
            for other in before:  # resolved trees, labelled by their directory name
                variants[f"jaco backup, {other.name}"] = variants["jaco backup"]
                trees[f"jaco backup, {other.name}"] = other
            if nice is not None:
                variants[f"nice -n {nice} jaco backup"] = ["nice", "-n", str(nice)] + variants[
                    "jaco backup"
                ]
            with open_client(node.server, cluster.token) as client:
                probe = WriteProbe(client)
                samples["quiet"] = probe.latencies(200)
                for round_ in range(repeat):
                    order = list(variants.items())  # every other round backwards
                    for label, cmd in order[:: -1 if round_ % 2 else 1]:
                        tree = trees.get(label)
                        if before and label != "etcdctl snapshot save":
                            restart(cluster, node, tree)  # jacod from the tree of the client
                        run_env = {**env, "PYTHONPATH": str(tree)} if tree else env
                        seen = probe.during(cmd, run_env)
                        if seen.returncode != 0:
                            raise SystemExit(f"{label} failed")
                        lat = seen.latencies
                        settled(out, snap)  # the next one starts on pages not just freed
                        samples.setdefault(label, []).extend(lat)
                        one = {"round": round_ + 1, "variant": label, "n": len(lat),
                               "p50": pct(lat, 0.5), "p99": pct(lat, 0.99),
                               "seconds": round(seen.seconds, 3),
                               "started_at": [round(t, 3) for t in seen.started_at],
                               "latencies": lat}  # fmt: skip
                        rounds.append(one)
                        print(
                            f"  round {one['round']} {label}: n={one['n']} p50 "
                            f"{one['p50'] * 1000:.1f} ms p99 {one['p99'] * 1000:.1f} ms",
                            flush=True,
                        )
    return samples, rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--random-mib", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--nice", type=int, help="a variant: jaco backup under nice -n N")
    parser.add_argument(
        "--before",
        type=Path,
        action="append",
        default=[],
        help="a variant: jacod and jaco from another tree (repeatable; labelled by its name)",
    )
    args = parser.parse_args(argv)
    before = [tree.resolve() for tree in args.before]
    if len({tree.name for tree in before}) != len(before):
        names = [tree.name for tree in before]
        parser.error(f"--before trees need names of their own (a variant each): {names}")
    samples, rounds = run(args.random_mib, args.repeat, args.nice, before)
    ref = pct(samples["etcdctl snapshot save"], 0.99)
    print(f"\n{'variant':<28} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'p99 / etcdctl':>14}")
    for label, lat in samples.items():
        p99 = pct(lat, 0.99)
        print(
            f"{label:<28} {len(lat):>5} {pct(lat, 0.5) * 1000:>8.1f} {p99 * 1000:>8.1f} "
            f"{p99 / ref:>13.2f}x"
        )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"write-p99-{stamp}.json"
    out.write_text(
        json.dumps(
            {
                "random_mib": args.random_mib,
                "repeat": args.repeat,
                "before": [str(tree) for tree in args.before],
                "commit": described_commit(Path(__file__).resolve().parent.parent),
                "before_commit": [described_commit(tree) for tree in args.before],
                "rounds": rounds,
                "samples": samples,
            }
        )
        + "\n"
    )
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
