"""Cost growth with the number of keys: backup, inspect, restore, verify and a drill on
realistic small records.

    python -m bench.growth                        # 10⁴, 10⁵ and 10⁶ keys, 3 runs each
    python -m bench.growth --keys 10000 --repeat 5

For each key count a real single-node cluster gets that many small JSON records
(bench.realistic: deployments, routes, tokens, certificates, a chained audit log, with
overwrites, deletions and heartbeats). Then, alternating run by run so that the machine's
load falls on both alike, each jaco stage beside its etcd reference:

| jaco | reference |
|---|---|
| `jaco backup` (CLI process; jacod's peak RSS while it serves it) | `etcdctl snapshot save` |
| `jaco backup inspect` of the archive | `etcdctl snapshot status` of the snapshot file |
| `jaco restore` (CLI alone) | `etcdctl snapshot restore` |
| verify (the flow's task: download, decrypt, check) | boto3 download, `age -d` into `tar -tzf -` |
| drill RTO (the drill-restore flow: download, decrypt, restore, READY) | `jaco restore` to READY |

Medians of the runs; peak RSS is the maximum. The last two rows run once per key count: the
whole backup-cluster flow (its stages' own times, verify among them) against a SeaweedFS S3
and a Prefect server, then the drill-restore flow (bubblewrap sandbox, every check) on what
it stored. The per-key cost is the curve across key counts,
not any one point. Results are printed and returned to bench.run, which writes them to
bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.realistic import fill
from bench.run import (
    BUCKET,
    decrypt_and_list,
    in_sequence,
    jaco_cli,
    measure,
    peak_kib,
    reset_peak,
    restore_jaco,
    save_results,
    services,
    stage,
    stage_env,
)
from infra.localcluster import Cluster, free_port

KEYS = (10_000, 100_000, 1_000_000)


def alternate(reps: int, ours: Callable[[], dict], ref: Callable[[], dict]) -> tuple[dict, dict]:
    """Run the pair `reps` times, reference first then jaco, and summarise each."""
    a: list[dict] = []
    b: list[dict] = []
    for _ in range(reps):
        b.append(ref())
        a.append(ours())
    return _summary(a), _summary(b)


def _summary(runs: list[dict]) -> dict:
    out = dict(runs[-1])
    out.pop("stdout", None)
    out["seconds"] = statistics.median(r["seconds"] for r in runs)
    out["rss_kib"] = max(r["rss_kib"] for r in runs)
    out["runs"] = [round(r["seconds"], 3) for r in runs]
    if "jacod_rss_kib" in runs[0]:
        out["jacod_rss_kib"] = max(r["jacod_rss_kib"] for r in runs)
    return out


def run_keys(keys: int, root: Path, reps: int, ctx: dict[str, Any]) -> dict[str, Any]:
    root.mkdir(parents=True)
    cluster = Cluster(root)
    cluster.init("node-1")
    node = cluster.nodes["node-1"]
    work = root / "work"
    work.mkdir()
    try:
        started = time.monotonic()
        built = asyncio.run(fill(node, keys))
        built["fill_seconds"] = round(time.monotonic() - started, 1)
        print(f"   built {keys} keys: {built}", flush=True)
        env = {"JACO_TOKEN": cluster.token, "JACO_SERVER": node.server}
        jacod = node.process.pid if node.process else 0
        snap, archive = work / "etcdctl.db", work / "cluster.tar.gz"

        def save() -> dict:
            snap.unlink(missing_ok=True)
            return measure(node.snapshot_save_command(snap))

        def backup() -> dict:
            archive.unlink(missing_ok=True)
            reset_peak(jacod)
            result = jaco_cli(["backup", "--output", str(archive)], env, work)
            return {**result, "jacod_rss_kib": peak_kib(jacod)}

        rows: dict[str, Any] = {"built": built}
        rows["backup"] = dict(zip(("jaco", "ref"), alternate(reps, backup, save), strict=True))
        rows["backup"]["snapshot_bytes"] = snap.stat().st_size
        rows["backup"]["archive_bytes"] = archive.stat().st_size
        rows["inspect"] = dict(
            zip(
                ("jaco", "ref"),
                alternate(
                    reps,
                    lambda: jaco_cli(["backup", "inspect", str(archive)], {}, work),
                    lambda: measure(["etcdctl", "snapshot", "status", str(snap), "-w", "json"]),
                ),
                strict=True,
            )
        )
        rows["restore"] = dict(
            zip(
                ("jaco", "ref"),
                alternate(reps, lambda: _restore(archive, work), lambda: _etcd_restore(snap, work)),
                strict=True,
            )
        )
        rows.update(
            _pipeline(keys, ctx, cluster.token, node.server, archive, work, cluster.stop_all)
        )
        print(f"   {keys} keys: " + "; ".join(_summary_line(k, rows[k]) for k in STAGES))
        return rows
    finally:
        cluster.stop_all()
        shutil.rmtree(root, ignore_errors=True)


def _pipeline(
    keys: int,
    ctx: dict[str, Any],
    token: str,
    server: str,
    archive: Path,
    work: Path,
    stop_cluster: Callable[[], None],
) -> dict[str, Any]:
    """The backup-cluster flow once (its verify task against download + `age -d` + `tar -tzf`
    of what it stored), then the drill-restore flow on that backup (its RTO against `jaco
    restore` of the same cluster to READY).

    The cluster is stopped once backed up: nothing after reads it, and at 10⁷ keys its etcd
    holds 11 GiB while the drill restores the same store into memory (the sandbox's data dir
    is a tmpfs) beside `etcdutl`'s 7 GiB: on a 24 GiB machine the kernel reclaimed, then killed
    that etcd, and the drill's restore took 589 s (50 s on its own)."""
    env = stage_env(ctx, token, server)
    flow = stage(
        "flow",
        {
            "params": {
                "cluster": f"growth-{keys}",
                "servers": [server],
                "bucket": BUCKET,
                "prefix": f"growth{keys}",
                "recipients": [ctx["recipient"]],
                "local_dir": str(work / "local"),
                "timeout_seconds": 3600,
            }
        },
        env,
        work,
    )
    shutil.rmtree(work / "local", ignore_errors=True)
    print(f"   backup-cluster flow: {flow['seconds']:.2f}s", flush=True)
    stop_cluster()
    checked = next(st for st in flow["stages"] if st["stage"] == "verify")
    verify = {"seconds": float(checked["seconds"]), "rss_kib": flow["rss_kib"]}
    drill = stage(
        "drill",
        {
            "params": {
                "cluster": f"growth-{keys}",
                "bucket": BUCKET,
                "prefix": f"growth{keys}",
                "key": flow["key"],
                "workdir": str(work / "drills"),
                "driver": "bwrap",
                "timeout_seconds": 3600,
            }
        },
        env,
        work,
    )
    drill["rto"] = {"seconds": drill["rto_seconds"], "rss_kib": drill["rss_kib"]}
    print(f"   drill: RTO {drill['rto_seconds']:.2f}s, flow {drill['seconds']:.2f}s", flush=True)
    return {
        "flow": flow,
        "verify": {"jaco": verify, "ref": _verify_reference(ctx, flow["key"], work, env)},
        "drill": {"jaco": drill["rto"], "ref": restore_jaco(archive, work, token), "flow": drill},
    }


def _verify_reference(ctx: dict[str, Any], key: str, work: Path, env: dict[str, str]) -> dict:
    """What verify does, by the tools: download the object, then `age -d | tar -tzf -` (until
    stop 30: decrypt to a file, then list it, one after the other)."""
    cipher = work / "ref.tar.gz.age"
    try:
        steps = [
            stage("boto3-download", {"bucket": BUCKET, "key": key, "path": str(cipher)}, env, work),
            decrypt_and_list(ctx["key_file"], cipher),
        ]
    finally:
        cipher.unlink(missing_ok=True)
    return in_sequence(*steps)


def _restore(archive: Path, work: Path) -> dict:
    data = work / "restored"
    ports = [str(free_port()) for _ in range(3)]
    try:
        return jaco_cli(
            ["restore", "--input", str(archive), "--name", "restored", "--data-dir", str(data)]
            + ["--advertise-host", "127.0.0.1", "--api-port", ports[0]]
            + ["--etcd-client-port", ports[1], "--etcd-peer-port", ports[2]],
            {},
            work,
        )
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _etcd_restore(snapshot: Path, work: Path) -> dict:
    data = work / "bare-etcd"
    peer = f"http://127.0.0.1:{free_port()}"
    try:
        return measure(
            ["etcdctl", "snapshot", "restore", str(snapshot), "--name", "bare"]
            + [f"--data-dir={data}", f"--initial-cluster=bare={peer}"]
            + [f"--initial-advertise-peer-urls={peer}"],
        )
    finally:
        shutil.rmtree(data, ignore_errors=True)


STAGES = {
    "backup": "`jaco backup` | `etcdctl snapshot save`",
    "inspect": "`jaco backup inspect` | `etcdctl snapshot status`",
    "restore": "`jaco restore` (CLI) | `etcdctl snapshot restore`",
    "verify": "verify (flow task) | download + `age -d` + `tar -tzf`",
    "drill": "drill RTO | `jaco restore` to READY",
}


def _summary_line(name: str, row: dict) -> str:
    ours, ref = row["jaco"], row["ref"]
    return f"{name} {ours['seconds']:.2f}s vs {ref['seconds']:.2f}s"


def table(results: dict[int, dict[str, Any]]) -> list[str]:
    lines = [
        "\n### Cost growth with the number of keys (realistic small records)",
        "",
        "| keys (live) | snapshot MiB | archive MiB | stage | jaco s | RSS MiB | reference | "
        "ref s | RSS MiB | jaco/ref | jacod peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for keys, r in results.items():
        snap = r["backup"]["snapshot_bytes"] / 2**20
        arch = r["backup"]["archive_bytes"] / 2**20
        for name, names in STAGES.items():
            ours, ref = r[name]["jaco"], r[name]["ref"]
            ours_name, ref_name = names.split(" | ")
            jacod = f"{ours['jacod_rss_kib'] / 1024:.0f}" if "jacod_rss_kib" in ours else "–"
            lines.append(
                f"| {keys:,} ({r['built']['small_keys']:,}) | {snap:.0f} | {arch:.1f} | "
                f"{ours_name} | {ours['seconds']:.2f} | {ours['rss_kib'] / 1024:.0f} | "
                f"{ref_name} | {ref['seconds']:.2f} | {ref['rss_kib'] / 1024:.0f} | "
                f"{ours['seconds'] / ref['seconds']:.2f} | {jacod} |"
            )
    for keys, r in results.items():
        flow, drill = r["flow"], r["drill"]["flow"]
        lines.append(
            f"\n{keys:,} keys: backup-cluster flow {flow['seconds']:.1f} s in all ("
            + ", ".join(f"{st['stage']} {st['seconds']} s" for st in flow["stages"])
            + f"); drill-restore flow {drill['seconds']:.1f} s in all, {drill['checks']} checks ("
            + ", ".join(f"{k} {v:.1f} s" for k, v in drill.get("check_seconds", {}).items())
            + ")"
        )
    return lines


def run(
    keys: list[int], workdir: Path, reps: int, ctx: dict[str, Any]
) -> dict[int, dict[str, Any]]:
    root = Path(tempfile.mkdtemp(prefix="jaco-growth-", dir=workdir))
    results: dict[int, dict[str, Any]] = {}
    try:
        for n in keys:
            print(f"\n== {n} small keys: building the cluster …", flush=True)
            results[n] = run_keys(n, root / f"keys-{n}", reps, ctx)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.growth", description=__doc__)
    parser.add_argument("--keys", type=int, action="append")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default="/var/tmp")
    args = parser.parse_args(argv)
    started = dt.datetime.now(dt.UTC)
    root = Path(tempfile.mkdtemp(prefix="jaco-growth-services-", dir=args.workdir))
    try:
        with services(root) as ctx:
            results = run(args.keys or list(KEYS), root, args.repeat, ctx)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for line in table(results):
        print(line)
    save_results("growth", started, "growth", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
