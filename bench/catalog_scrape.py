"""What one metrics scrape of a fleet's catalogs costs: S3 requests and wall time, beside a bare
listing of the same catalogs (the floor of anything that looks at every record).

    python -m bench.catalog_scrape [--clusters 50] [--backups 30] [--before TREE]

SeaweedFS on this host holds `--clusters` catalogs, each with `--backups` verified backups
and two drills of each, ten failures and one change chain of 20 segments (what a cluster keeps
under a daily/weekly/monthly policy and an hourly drill). A child process per tree (this
checkout, and with `--before` a worktree of another commit) builds the metrics collector
and scrapes it three times, as Prometheus would every 15 s, counting every S3 call its
clients make (botocore's event hooks), with its peak RSS (what it keeps of the records).
Wall time is on loopback: real S3 answers a request in tens of milliseconds, not one, so the
request counts are what carries over. Results: bench/results/catalog-scrape-<time>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.run import save_results
from infra.seaweed import running_seaweed

BUCKET = "scrape"
ROOT = Path(__file__).resolve().parent.parent


def fill(clusters: int, backups: int) -> None:
    """The fleet's catalogs, written with this checkout's catalog (both trees read them)."""
    from flows.catalog import Catalog
    from flows.records import BackupRecord, DrillRecord, Failure, SegmentRecord, Verified
    from flows.storage import open_store

    store = open_store(f"s3://{BUCKET}")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    for c in range(clusters):
        catalog = Catalog(store, "jaco", f"c{c:03d}")
        for b in range(backups):
            at = now - dt.timedelta(hours=b)
            key = f"jaco/{c:016x}/{at:%Y/%m/%d}/cluster-{at:%Y-%m-%d}-{1000 - b}.tar.gz.age"
            record = BackupRecord(
                cluster=catalog.cluster, cluster_id=f"{c:016x}", key=key, taken_at=at,
                snapshot_index=1000 - b, snapshot_term=2, jaco_version="bench", archive_size=1,
                size=1, plaintext_sha256="0" * 64, ciphertext_sha256="1" * 64,
                snapshot_sha256="2" * 64, state_digest="3" * 64, counts={"deployments": 300},
                verified=Verified(at=at),
            )  # fmt: skip
            catalog.record_backup(record)
            store.put_bytes(key, b"x")
            for minutes in (5, 35):
                drill = DrillRecord(at=at + dt.timedelta(minutes=minutes), passed=True)
                catalog.record_drill(key, drill)
        for f in range(10):
            at = now - dt.timedelta(minutes=f)
            catalog.record_failure(Failure(at=at, kind="drill", reason="a failed drill"))
        base = catalog.records()[0]
        for s in range(20):
            first = 1001 + s * 10
            catalog.record_segment(
                SegmentRecord(
                    key=f"segments/{s}", base=base.stem, base_revision=1000,
                    first_revision=first, last_revision=first + 9, first_at=now.isoformat(),
                    last_at=now.isoformat(), revisions=10, changes=10, size=1,
                    ciphertext_sha256="4" * 64, written_at=now,
                )
            )  # fmt: skip


def child(clusters: int) -> None:
    """Scrape three times in this process (run with the tree under test on PYTHONPATH)."""
    import flows.storage
    from flows.metrics import CatalogCollector
    from flows.watchdog_flow import Objective

    made: Counter[str] = Counter()
    real = flows.storage._s3_client

    def counted(*args: Any) -> Any:
        client = real(*args)
        client.meta.events.register("before-call.s3", lambda model, **_: made.update([model.name]))
        return client

    flows.storage._s3_client = counted  # type: ignore[assignment]
    targets = [Objective(cluster=f"c{c:03d}", bucket=BUCKET) for c in range(clusters)]
    collector = CatalogCollector(targets)
    scrapes = []
    for _ in range(3):
        collector._cache.clear()  # as after CACHE_SECONDS
        made.clear()
        started = time.monotonic()
        up = sum(
            s.value for f in collector.collect() if f.name == "jaco_catalog_up" for s in f.samples
        )
        seconds = time.monotonic() - started
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        scrapes.append({"seconds": seconds, "up": up, "calls": dict(made), "peak_rss_mib": peak})
    print(json.dumps(scrapes))


def floor(clusters: int) -> dict[str, Any]:
    """A bare paginated listing of each cluster's catalog, one after the other (boto3)."""
    import boto3

    client = boto3.client("s3")
    calls = 0
    started = time.monotonic()
    for c in range(clusters):
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=f"jaco/catalog/c{c:03d}/"
        )
        for _ in pages:
            calls += 1
    return {"seconds": time.monotonic() - started, "calls": {"ListObjectsV2": calls}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clusters", type=int, default=50)
    parser.add_argument("--backups", type=int, default=30)
    parser.add_argument("--before", type=Path, help="another tree's flows, alternating")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.clusters)
        return 0
    trees = {"after": ROOT, **({"before": args.before.resolve()} if args.before else {})}
    started = dt.datetime.now(dt.UTC)
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="jaco-scrape-") as tmp,
        running_seaweed(Path(tmp) / "s3") as s3,
    ):
        s3.create_bucket(BUCKET)
        os.environ.update(s3.env())
        fill(args.clusters, args.backups)
        for n in range(3):
            for label, tree in list(trees.items())[:: 1 if n % 2 == 0 else -1]:
                env = {**os.environ, "PYTHONPATH": str(tree)}
                # this file, run as a script: the tree's flows, whatever its bench/ holds
                command = [sys.executable, __file__, "--child", "--clusters", str(args.clusters)]
                out = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True)
                if out.returncode != 0:
                    print(out.stderr, file=sys.stderr)
                    return 1
                for i, scrape in enumerate(json.loads(out.stdout.splitlines()[-1])):
                    rows.append({"round": n, "code": label, "scrape": i + 1, **scrape})
                    print(f"  {rows[-1]}", flush=True)
            rows.append({"round": n, "code": "floor", "scrape": 0, **floor(args.clusters)})
            print(f"  {rows[-1]}", flush=True)
    lines = []
    for label in [*trees, "floor"]:
        for i in sorted({r["scrape"] for r in rows if r["code"] == label}):
            mine = [r for r in rows if r["code"] == label and r["scrape"] == i]
            seconds = statistics.median(r["seconds"] for r in mine)
            calls = mine[-1]["calls"]
            lines.append(
                f"{label}, scrape {i or '-'}: {seconds:.3f} s (median of {len(mine)}), "
                f"{sum(calls.values())} requests {calls}"
            )
    print("\n".join(lines))
    save_results(
        "catalog-scrape",
        started,
        "runs",
        {"clusters": args.clusters, "backups": args.backups, "rows": rows, "summary": lines},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
