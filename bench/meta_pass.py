"""jacod's meta pass alone, beside etcd's own pass over a snapshot and a plain SHA-256 of it.

Up to format 2, once etcd's stream had ended, jacod read the snapshot's revision, per-table
counts, state digest, CA and audit head out of a scratch copy (jaco.archive.snapshot_file.
read_snapshot_state, digest v1) before the client got its meta.json; from format 3 it reads
them from the bytes as they stream (digest v2, the same pass a restore runs over the file).
Both are timed here over the file, on the snapshot of a real store, alternating round by round
with two references on the same file: `etcdctl snapshot status` (etcd's own pass over a
snapshot file: a CRC-32 of every bucket, the revision, the key count) and `openssl dgst
-sha256` (every byte read and hashed once with SHA-256, on one core, as fast as this CPU's SHA
extensions go: what the state digest, a SHA-256 over the records in key order, costs at
least; coreutils' `sha256sum` does not use them and runs at a fifth of that).

    python -m bench.meta_pass --random-mib 512 [--repeat 3]   # random 48 KiB records
    python -m bench.meta_pass --keys 1000000                  # small records (bench.realistic)

The pass runs in this process (wall and CPU of all its threads); the references through
bench.run.measure. Results: bench/results/meta-pass-<time>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

from bench.run import MIB, fill_store, measure, save_results
from infra.localcluster import JACO, cluster_of


def snapshot_of(work: Path, keys: int, random_mib: int) -> Path:
    """A store of `keys` small records or `random_mib` MiB of random ones; its snapshot.bin,
    as `jaco backup` took it."""
    with cluster_of(work / "c", 1) as cluster:
        node = cluster.nodes["node-1"]
        print(f"built: {fill_store(node, keys, random_mib)}", flush=True)
        env = {**os.environ, "JACO_TOKEN": cluster.token, "JACO_SERVER": node.server}
        archive = work / "backup.tar.gz"
        subprocess.run([str(JACO), "backup", "-o", str(archive)], env=env, check=True,
                       capture_output=True)  # fmt: skip
    with tarfile.open(archive) as tar:
        tar.extract("snapshot.bin", work, filter="data")
    archive.unlink()
    return work / "snapshot.bin"


def the_pass(snapshot: Path, version: int) -> dict[str, float]:
    from jaco.archive.snapshot_file import read_snapshot_state

    os.sync()
    wall, cpu = time.monotonic(), time.process_time()
    read_snapshot_state(snapshot, version=version)
    return {"wall_s": time.monotonic() - wall, "cpu_s": time.process_time() - cpu}


def run(snapshot: Path, repeat: int) -> list[dict[str, float | str]]:
    references = {
        "etcdctl snapshot status": ["etcdctl", "snapshot", "status", str(snapshot)],
        "openssl dgst -sha256": ["openssl", "dgst", "-sha256", str(snapshot)],
    }
    rows: list[dict[str, float | str]] = []
    for round_ in range(1, repeat + 1):
        for version in (1, 2):
            what = f"meta pass, digest v{version}"
            rows.append({"round": round_, "what": what, **the_pass(snapshot, version)})
        for name, cmd in references.items():
            measured = measure(cmd, {"ETCDCTL_API": "3"})
            rows.append({"round": round_, "what": name, "wall_s": measured["seconds"],
                         "cpu_s": measured["cpu_seconds"]})  # fmt: skip
        print(*(f"{r['what']}: {r['wall_s']:.3f} s" for r in rows[-4:]), sep="  ", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--random-mib", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    started = dt.datetime.now(dt.UTC)
    with tempfile.TemporaryDirectory(prefix="jaco-meta-pass-", dir="/var/tmp") as tmp:
        snapshot = snapshot_of(Path(tmp), args.keys, args.random_mib)
        size = snapshot.stat().st_size
        rows = run(snapshot, args.repeat)
    medians = {
        what: statistics.median(float(r["wall_s"]) for r in rows if r["what"] == what)
        for what in dict.fromkeys(str(r["what"]) for r in rows)
    }
    for what, median in medians.items():
        print(f"{what}: median {median:.3f} s ({size / MIB / median:.0f} MiB/s)")
    store = f"{args.random_mib} MiB random" if args.random_mib else f"{args.keys} small keys"
    found = {"store": store, "snapshot_bytes": size, "rows": rows, "medians": medians}
    save_results("meta-pass", started, "rounds", found)


if __name__ == "__main__":
    main()
