"""Restoring the pipeline's encrypted backup (`.tar.gz.age`), three ways, alternating:

    python -m bench.restore_encrypted --random-mib 512 [--repeat 3]
    python -m bench.restore_encrypted --keys 1000000   # small records (bench.realistic)

- `jaco restore --identity`: decrypted as it is read, straight into the new data dir;
- the runbook before stop 31: `age -d -o cluster.tar.gz`, then `jaco restore` of that file
  (which holds the CA key, on disk);
- the reference: `age -d | tar -xzf -` (snapshot.bin only), then `etcdctl snapshot restore`.

Wall seconds, and the largest peak RSS of each way's processes. One single-node cluster,
its backup encrypted with the age CLI to a fresh key. Results go to
bench/results/restore-encrypted-<time>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from bench.realistic import fill
from bench.run import MIB, RESULTS, fill_random, in_sequence, measure
from infra.localcluster import JACO, cluster_of, free_port


def _restore(archive: Path, data: Path, *extra: str) -> list[str]:
    ports = [str(free_port()) for _ in range(3)]
    return [
        str(JACO), "restore", "--input", str(archive), "--name", "r", "--data-dir", str(data),
        "--advertise-host", "127.0.0.1", "--api-port", ports[0], "--etcd-client-port",
        ports[1], "--etcd-peer-port", ports[2], *extra,
    ]  # fmt: skip


def ways(work: Path, sealed: Path, key: Path) -> dict[str, object]:
    data, plain, snap_dir = work / "data", work / "plain.tar.gz", work / "extracted"
    peer = f"http://127.0.0.1:{free_port()}"

    def streamed() -> dict:
        return measure(_restore(sealed, data, "--identity", str(key)))

    def runbook() -> dict:
        decrypt = measure(["age", "-d", "-i", str(key), "-o", str(plain), str(sealed)])
        return in_sequence(decrypt, measure(_restore(plain, data)))

    def reference() -> dict:
        snap_dir.mkdir()
        extract = measure(
            ["sh", "-c", 'age -d -i "$0" "$1" | tar -xzf - -C "$2" snapshot.bin',
             str(key), str(sealed), str(snap_dir)]
        )  # fmt: skip
        restore = measure(
            ["etcdctl", "snapshot", "restore", str(snap_dir / "snapshot.bin"), "--name", "r",
             f"--data-dir={data}", f"--initial-cluster=r={peer}",
             f"--initial-advertise-peer-urls={peer}"],
            {"ETCDCTL_API": "3"},
        )  # fmt: skip
        return in_sequence(extract, restore)

    return {"jaco restore --identity": streamed, "age -d -o, then jaco restore": runbook,
            "age -d | tar -xzf -, then etcdctl snapshot restore": reference}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--random-mib", type=int, default=0)
    parser.add_argument("--keys", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="jaco-restore-age-") as tmp:
        work = Path(tmp)
        with cluster_of(work / "c", 1) as cluster:
            node = cluster.nodes["node-1"]
            if args.random_mib:
                built = asyncio.run(fill_random(node, args.random_mib * MIB, 48 * 1024))
            else:
                built = asyncio.run(fill(node, args.keys))
            print(f"built: {built}", flush=True)
            plain = work / "backup.tar.gz"
            cluster.ok("backup", "--output", str(plain), timeout=1800)
        key, sealed = work / "ops.key", work / "backup.tar.gz.age"
        recipient = (
            subprocess.run(
                ["age-keygen", "-o", str(key)], capture_output=True, text=True, check=True
            )
            .stderr.split("Public key: ")[1]
            .strip()
        )
        subprocess.run(["age", "-r", recipient, "-o", str(sealed), str(plain)], check=True)
        plain.unlink()
        for _ in range(args.repeat):
            for label, way in ways(work, sealed, key).items():
                result = way()  # type: ignore[operator]
                runs.setdefault(label, []).append(result)
                print(f"{label}: {result['seconds']:.2f} s", flush=True)
                for left in ("data", "plain.tar.gz", "extracted"):
                    shutil.rmtree(work / left, ignore_errors=True)
                    (work / left).unlink(missing_ok=True)
        archive_bytes = sealed.stat().st_size
    rows = {
        label: {
            "seconds": statistics.median(r["seconds"] for r in results),
            "runs": [round(r["seconds"], 2) for r in results],
            "rss_kib": max(r["rss_kib"] for r in results),
        }
        for label, results in runs.items()
    }
    reference = rows["age -d | tar -xzf -, then etcdctl snapshot restore"]["seconds"]
    print(f"\n{archive_bytes / MIB:.0f} MiB encrypted; medians of {args.repeat}:")
    print("| way | seconds | / reference | peak RSS MiB |\n|---|---|---|---|")
    for label, row in rows.items():
        print(
            f"| {label} | {row['seconds']:.2f} | {row['seconds'] / reference:.2f}× | "
            f"{row['rss_kib'] / 1024:.0f} |"
        )
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"restore-encrypted-{stamp}.json"
    out.write_text(json.dumps({"args": vars(args), "archive_bytes": archive_bytes,
                               "rows": rows}, indent=1))  # fmt: skip
    print(f"results: {out}")


if __name__ == "__main__":
    main()
