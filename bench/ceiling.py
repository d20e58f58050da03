"""How much of a backup's cost is jacod's meta work: `jaco backup` served by this tree's jacod,
and by a copy of it without its stream SHA-256 and meta pass (bench/ceiling.patch),
each beside `etcdctl snapshot save`, alternating round by round.

    python -m bench.ceiling --random-mib 512 [--repeat 3]   # random 48 KiB records
    python -m bench.ceiling --keys 1000000                  # small records (bench.realistic)

The patched jacod relays etcd's stream and nothing else: its meta is a stand-in, the meta.json
of a backup of the same store taken before (true only because nothing writes to it), and the
patched client does not compare the snapshot's SHA-256 with it. What the patched backup
costs is what any meta design that keeps jacod as the relay could reach at best. Not a
product. Results: bench/results/ceiling-<time>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from bench.cpu_split import cpu_seconds, restart
from bench.run import fill_store, measure, save_results
from infra.localcluster import JACO, cluster_of

ROOT = Path(__file__).resolve().parent.parent


def patched_tree(where: Path) -> Path:
    """This checkout's HEAD, patched, with its compiled reader copied in."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(where)],
                   check=True)  # fmt: skip
    subprocess.run(
        ["git", "-C", str(where), "apply", str(ROOT / "bench/ceiling.patch")], check=True
    )
    for native in (ROOT / "jaco").glob("_native*.so"):
        shutil.copy(native, where / "jaco")
    return where


def run(keys: int, random_mib: int, repeat: int, work: Path) -> list[dict[str, float | str]]:
    trees = {"as is": None, "relay only": patched_tree(work / "tree")}
    rows: list[dict[str, float | str]] = []
    with cluster_of(work / "c", 1) as cluster:
        node = cluster.nodes["node-1"]
        print(f"built: {fill_store(node, keys, random_mib)}", flush=True)
        env = {"JACO_TOKEN": cluster.token, "JACO_SERVER": node.server}
        measure([str(JACO), "backup", "-o", str(work / "stand-in.tar.gz")], env)
        with tarfile.open(work / "stand-in.tar.gz") as taken:
            meta = taken.extractfile("meta.json")
            assert meta is not None
            (work / "stand-in.json").write_bytes(meta.read())
        os.environ["JACO_CEILING_META"] = str(work / "stand-in.json")
        snap, archive = work / "etcdctl.db", work / "jaco.tar.gz"
        for n in range(repeat):
            for label, tree in list(trees.items())[:: 1 if n % 2 == 0 else -1]:
                restart(cluster, node, tree)
                assert node.process is not None
                jacod = node.process.pid
                for stage in ("etcdctl", "jaco")[:: 1 if n % 2 == 0 else -1]:
                    snap.unlink(missing_ok=True)
                    archive.unlink(missing_ok=True)
                    subprocess.run(["sync"], check=True)
                    before = cpu_seconds(jacod)
                    if stage == "etcdctl":
                        result = measure(node.snapshot_save_command(snap), env)
                    else:
                        own = {"PYTHONPATH": str(tree)} if tree else {}
                        result = measure([str(JACO), "backup", "-o", str(archive)], {**env, **own})
                    row: dict[str, float | str] = {
                        "round": n, "jacod": label, "stage": stage, "wall": result["seconds"],
                        "client_cpu": result["cpu_seconds"],
                        "jacod_cpu": cpu_seconds(jacod) - before,
                    }  # fmt: skip
                    if tree is not None and stage == "jaco":  # the patched jacod served it
                        with tarfile.open(archive) as served:
                            meta = served.extractfile("meta.json")
                            assert meta is not None
                            stand_in = json.loads((work / "stand-in.json").read_bytes())
                            assert json.loads(meta.read())["taken_at"] == stand_in["taken_at"]
                    rows.append(row)
                    print("  " + ", ".join(f"{k} {v}" for k, v in row.items()), flush=True)
    return rows


def summary(rows: list[dict[str, float | str]]) -> list[str]:
    lines = []
    for label in ("as is", "relay only"):

        def median(stage: str, field: str, label: str = label) -> float:
            return statistics.median(
                float(r[field]) for r in rows if r["jacod"] == label and r["stage"] == stage
            )

        jaco, ref = median("jaco", "wall"), median("etcdctl", "wall")
        lines.append(
            f"jacod {label}: jaco backup {jaco:.2f} s, etcdctl snapshot save {ref:.2f} s, "
            f"{jaco / ref:.2f}x; jacod CPU {median('jaco', 'jacod_cpu'):.2f} s, "
            f"client CPU {median('jaco', 'client_cpu'):.2f} s "
            f"(etcdctl's {median('etcdctl', 'client_cpu'):.2f} s)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--random-mib", type=int, default=0, help="random records, not --keys")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    changed = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "jaco"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if changed:  # the patched copy is made from HEAD: both must be the same code
        print(f"commit the changes under jaco/ first:\n{changed}", file=sys.stderr)
        return 2
    started = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="jaco-ceiling-", dir="/var/tmp") as tmp:
        try:
            rows = run(args.keys, args.random_mib, args.repeat, Path(tmp))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(Path(tmp) / "tree")], check=False)  # fmt: skip
    lines = summary(rows)
    print("\n".join(lines))
    data = {"random_mib": args.random_mib} if args.random_mib else {"keys": args.keys}
    save_results("ceiling", started, "runs", {**data, "rows": rows, "summary": lines})
    return 0


if __name__ == "__main__":
    sys.exit(main())
